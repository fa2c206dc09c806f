"""`python -m anomaly_backbones report`: every finished run, compared in tables and plots.

Modules, one concern each:
  runs      which runs: HEAD's committed run (the baseline), the base branch's, the experiments and the
            workspace, each once (dvc_client reads `dvc exp show` and `dvc status`)
  tables    runs.csv and one table per backbone family (the seed's shape), trunk parameter counts
  pareto    the Pareto front and its plot (per dataset and device)
  appendix  per-category metrics and the deployment-latency table
  overlays  anomaly maps over test images (the workspace run)
  index_html the self-contained reports/index.html
  build     writes everything; the CLI
  show      `python -m anomaly_backbones show`: the same runs as a compact terminal table

Writes into --out (default reports/):
  README.md, index.html            index (Markdown), and the whole report as one offline page
  runs.csv                         one row per run x method (long format: every metric, host, parameters)
  tables/<family>.md|.csv          per backbone family and dataset: rows = backbone and init
  per_category.md|.csv             appendix: every metric per category, where the run's file is readable
  pareto.csv, pareto_<dataset>.png image ROC-AUC vs ms/image with the Pareto front (a file per device), one
    panel per init kind x method, each panel's front labelled
  pareto_<dataset>.svg             the same figure; every point has a hover <title> (inlined in index.html)
  latency.csv                      batch-1 deployment latency per run (metrics/latency.json)
  overlays/<method>_<category>.png image | ground truth | heat map, a few test images per category

The package's __init__ imports nothing (import report.build for build_report): line/ reads
report.runs, report.fmt and report.tables, and report.build reads line.recommend, so an __init__
that imported build would make that a cycle.
"""

"""`python -m anomaly_backbones pr-comment --base main`: a pull-request comment from DVC's diffs.

Runs `dvc metrics diff <base> --md` and `dvc params diff <base> --md` (the workspace, i.e. the PR's
`make repro` result, against the base branch's committed metrics/metrics.json and params.yaml) and
prints Markdown: a header, the quality changes at a glance (ROC-AUC, AP, F1-max, AUPRO), both tables, and a note where nothing
changed. `build_comment(metrics_md, params_md)` does the formatting and runs nothing.

Significance: where both revisions' per-image test scores are readable (the workspace's outputs/ and
the base's through the DVC cache), each method's image ROC-AUC change gets DeLong's paired test on the
same test images (line.recommend.paired_test, pooled over categories). Then only a significant change
(p < 0.05) is coloured; the others say "not significant" with p and the difference's 95 % interval,
and metrics without a paired test are listed uncoloured.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .dvc_client import require_project
from .errors import UserError

MARKER = "<!-- anomaly-backbones:pr-metrics -->"
QUALITY = re.compile(r"(image|pixel)_(auroc|ap|f1max|aupro)$")   # not the interval bounds *_lo/_hi


def parse_md_table(md: str) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table in md -> (header, data rows); ([], []) when there is none."""
    lines = [ln.strip() for ln in (md or "").splitlines()]
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].replace(" ", "")):
            header = _cells(lines[i])
            rows = []
            for ln in lines[i + 2:]:
                if not ln.startswith("|"):
                    break
                rows.append(_cells(ln))
            return header, rows
    return [], []


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _float(s: str):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def quality_summary(metrics_md: str, paired: dict | None = None) -> list[str]:
    """Bullets for the quality rows (QUALITY): `padim.image_auroc: 0.978 -> 0.750 (-0.228)`.
    paired: {method: pooled paired-test dict (diff, lo, hi, p, significant)} or None (no tests: every
    change coloured by its sign, as before)."""
    header, rows = parse_md_table(metrics_md)
    if not rows or "Metric" not in header:
        return []
    im = header.index("Metric")
    old_i, new_i = im + 1, im + 2           # | Path | Metric | <base> | <rev> | Change |
    ch_i = header.index("Change") if "Change" in header else None
    out = []
    for r in rows:
        if len(r) <= new_i or not QUALITY.search(r[im]):
            continue
        old, new = _float(r[old_i]), _float(r[new_i])
        change = _float(r[ch_i]) if ch_i is not None and ch_i < len(r) else None
        if change is None and old is not None and new is not None:
            change = new - old
        if change is None:
            out.append(f"- `{r[im]}`: {r[old_i] or '—'} → {r[new_i] or '—'}")
            continue
        arrow = "🟢" if change > 0 else ("🔴" if change < 0 else "⚪")
        note = ""
        if paired is not None:
            method, _, key = r[im].rpartition(".")
            t = paired.get(method) if key == "image_auroc" else None
            if t is None or t.get("p") is None:
                arrow, note = "⚪", " (no paired test)"
            elif not t["significant"]:
                arrow, note = "⚪", (f" — not significant: paired DeLong p = {t['p']:.3g}, difference 95 % CI "
                                     f"[{-t['hi']:+.4f}, {-t['lo']:+.4f}]")
            else:
                note = f" — significant: paired DeLong p = {t['p']:.3g}"
        out.append(f"- {arrow} `{r[im]}`: {r[old_i]} → {r[new_i]} ({change:+.4f}){note}")
    return out


def build_comment(metrics_md: str, params_md: str, base: str = "main", head: str = "this PR",
                  paired: dict | None = None) -> str:
    """Markdown comment body from the outputs of `dvc metrics diff <base> --md` and
    `dvc params diff <base> --md`. An empty output or a table without rows means no change.
    paired: see quality_summary."""
    _, m_rows = parse_md_table(metrics_md)
    _, p_rows = parse_md_table(params_md)
    parts = [MARKER, f"## DVC pipeline: {head} vs `{base}`", ""]
    if not m_rows and not p_rows:
        parts += [f"No changes: metrics (`metrics/metrics.json`) and params (`params.yaml`) are the same as on "
                  f"`{base}`.", ""]
    else:
        summary = quality_summary(metrics_md, paired)
        if summary:
            parts += ["**Quality** (means over categories):", ""] + summary + [""]
    parts += ["### Metrics", ""]
    parts += [_table_text(metrics_md), ""] if m_rows else [f"_No metric changes relative to `{base}`._", ""]
    parts += ["### Params", ""]
    parts += [_table_text(params_md), ""] if p_rows else [f"_No param changes relative to `{base}`._", ""]
    parts += ["<sub>`dvc metrics diff` / `dvc params diff` after `make repro` on the CI runner; "
              "timings (`ms_per_image`, `fit_s`) and `peak_mb` depend on the runner's CPU. "
              "Generated by `python -m anomaly_backbones pr-comment`.</sub>", ""]
    return "\n".join(parts)


def _table_text(md: str) -> str:
    lines = [ln.rstrip() for ln in md.strip().splitlines()]
    return "\n".join(ln for ln in lines if ln.strip())


def dvc_diffs(base: str, cwd: str | Path = ".") -> tuple[str, str]:
    """(`dvc metrics diff <base> --md`, `dvc params diff <base> --md`) in cwd."""
    from .dvc_client import diff_md

    return diff_md("metrics", base, cwd), diff_md("params", base, cwd)


def paired_tests(base: str, cwd: str | Path = ".") -> dict | None:
    """{method: pooled paired DeLong test, base -> workspace} for every method whose per-image scores
    are readable at both; None where nothing could be tested (the comment then colours every change).
    The test is of base - workspace (paired_test(base, workspace)): lo/hi are negated by the caller."""
    from .dvc_client import git_rev
    from .line.recommend import paired_test
    from .line.scores import run_categories, run_scores

    root = Path(cwd).resolve()
    sha = git_rev(root, base)
    cats_ws, cats_base = run_categories(root, "workspace"), (run_categories(root, sha) if sha else None)
    if not cats_ws or cats_ws != cats_base:
        return None
    out = {}
    for d in sorted(p.name for p in (root / "outputs").iterdir() if p.is_dir()) if (root / "outputs").is_dir() else []:
        a, b = run_scores(root, sha, d, cats_base), run_scores(root, "workspace", d, cats_ws)
        if a is None or b is None:
            continue
        try:
            out[d] = paired_test(a, b)["pooled"]
        except UserError:
            continue
    return out or None


def parser_pr_comment() -> argparse.ArgumentParser:
    """The command's argparse parser (its --help, and the usage `python -m anomaly_backbones` prints)."""
    ap = argparse.ArgumentParser(prog="python -m anomaly_backbones pr-comment",
                                 description="Print a PR comment from `dvc metrics diff` and `dvc params diff`.")
    ap.add_argument("--base", default="main", help="git revision to compare against (default main; in "
                                                   "GitHub Actions origin/<base branch>)")
    ap.add_argument("--title", default="this PR", help="what the workspace is called in the header")
    ap.add_argument("--out", help="also write the body to this file")
    return ap


def main_pr_comment(argv: list[str] | None = None) -> None:
    a = parser_pr_comment().parse_args(argv or [])
    require_project(Path("."), flag=None)
    metrics_md, params_md = dvc_diffs(a.base)
    body = build_comment(metrics_md, params_md, base=a.base, head=a.title, paired=paired_tests(a.base))
    if a.out:
        Path(a.out).write_text(body)
    sys.stdout.write(body)

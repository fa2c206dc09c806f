"""The stages' bodies: what each DVC stage does, as functions the thin stage scripts (stages/)
and bench/gpu.py call. The layer between the stages and the library (docs/architecture.md):

    config     load_params, validate, resolve: params.yaml joined with every method's schema
    extract    extract_split (one split through the backbone into the cache), extract_all
    fit        fit_predict (one method, one category), fit_category, fit_all
    train      train_category, train_all (the methods that train the backbone)
    aggregate  mean_of, summarize, aggregate (metrics/metrics.json, speed.json, CSVs)
"""

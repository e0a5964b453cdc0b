"""Anomaly detectors (pure Python, no Dagster): built in the detection issue.

Each detector will follow one contract, as PyOD and scikit-learn do: configure in
`__init__`, `fit(history)`, then `score(...)` returning expected value, bounds, score and
direction.
"""

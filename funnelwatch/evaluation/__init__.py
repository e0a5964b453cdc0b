"""Evaluation against ground truth: simulator scenarios (as YAML suites) run through the real
pipeline, alerts matched to the labelled incidents, and the report in docs/evaluation.md."""

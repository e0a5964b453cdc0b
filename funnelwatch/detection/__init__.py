"""Detection plumbing (no Dagster): cohort-metric series in, anomalies table out. The
detectors themselves live in the top-level `detectors` package."""

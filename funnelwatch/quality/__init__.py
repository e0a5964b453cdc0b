"""Data quality: Great Expectations suites per loaded hour and the data-quality incidents they
raise (a distinct kind from business anomalies)."""

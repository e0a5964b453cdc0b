"""Maintenance: privacy retention of raw events (docs/privacy.md)."""

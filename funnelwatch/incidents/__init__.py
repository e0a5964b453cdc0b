"""Incidents: anomalies grouped into one problem each, with root cause, impact, state,
timeline, report and feedback. See docs/incidents.md."""

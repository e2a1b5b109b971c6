"""Grafana dashboards for the exporter, generated from code (python -m grafana.generate)."""

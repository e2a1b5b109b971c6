"""Alert and recording rules for the Celery exporter, rendered from alerts/config.yml."""

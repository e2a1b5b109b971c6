"""Kubernetes deployment: the generator feeding the Helm chart its rules and dashboards."""

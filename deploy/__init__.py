"""Kubernetes deployment of the exporter: kustomize bases and overlays, and their generator."""

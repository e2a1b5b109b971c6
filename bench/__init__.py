"""Benchmark of the exporter against real Celery event traffic: ``python -m bench``.

A private redis-server, recordings made with Celery's own EventDispatcher (cached under
``bench/.cache/``), the real exporter as a subprocess, and figures compared with targets.
"""

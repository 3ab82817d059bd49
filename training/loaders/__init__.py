"""Loaders that read metric series from files, generators and the Prometheus HTTP API."""

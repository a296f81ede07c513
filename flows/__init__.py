"""Prefect flows (wiring only)."""

"""Prefect task wrappers (thin)."""

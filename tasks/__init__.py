"""Prefect tasks (installed as ``im_pipeline_tasks``): thin wrappers that call ``im_pipeline.runs.units``."""

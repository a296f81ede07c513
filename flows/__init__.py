"""Prefect flows and the command line (installed as ``im_pipeline_flows``): wiring only."""

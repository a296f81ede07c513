"""The ``im-pipeline`` command line: the parser (``parser.py``), ``main`` (``main.py``) and the handlers
(``commands.py`` for the library's tools, ``run.py`` for the flows: run, serve, deploy).

The CLI lives here, above the library: ``im_pipeline`` imports neither argparse nor Prefect (tests/test_layers.py).
"""

from im_pipeline_flows.cli.main import main

__all__ = ["main"]

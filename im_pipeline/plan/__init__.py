"""Know before you run: an experiment's units, parameters, memory per GPU, benchmark work, judge calls and cost, and
wall time, offline and without weights (``im-pipeline plan``).

``arch`` and ``memory`` import only the standard library (torch / transformers inside functions), so
``bench/gpu_verify.py`` uses them on a machine without the config layer; ``build`` needs the experiment config.
"""

from typing import Any

__all__ = ["format_plan", "make_plan", "summary_line"]


def __getattr__(name: str) -> Any:  # lazy: importing im_pipeline.plan.memory must not import the config layer
    if name == "make_plan":
        from im_pipeline.plan.build import make_plan

        return make_plan
    if name in ("summary_line", "format_plan"):
        from im_pipeline.plan import show

        return getattr(show, name)
    raise AttributeError(name)

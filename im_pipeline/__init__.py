"""im-pipeline: Instruction Tuning (IT) vs Instruction Modelling (IM), side by side.

The library is plain Python: no Prefect imports here (Prefect lives in ``tasks/`` and ``flows/``).
"""

__version__ = "0.1.0"

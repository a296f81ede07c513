"""The run directory ``runs/<experiment>/``: where every file of a run lives (:mod:`.layout`) and when a unit's
files are still valid (:mod:`.staleness`: one key per unit, used by Prefect's cache, the stamps and the trainer).

Nothing is imported here: ``layout`` needs nothing of the library (the config imports it), ``staleness`` needs the
config."""

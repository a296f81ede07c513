"""The run directory ``runs/<experiment>/``: where every file of a run lives (:mod:`.layout`), when a unit's
files are still valid (:mod:`.staleness`: one key per unit, stamped beside its outputs, given to the trainer), what
a unit does (:mod:`.units`) and when a unit on a work pool is submitted again (:mod:`.resubmit`).

Nothing is imported here: ``layout`` needs nothing of the library (the config imports it), ``staleness`` needs the
config."""

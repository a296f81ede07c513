"""Every path under ``runs/<experiment>/``, in one place.

```
runs/<experiment>/                (with strata: runs/<experiment>/config.yaml, and this tree under <stratum>/)
  config.yaml                     resolved config              timings.json   wall time per stage, per flow run
  data/  train.jsonl held_out.jsonl data_stats.json [unavailable.json]
  base/eval/<benchmark>.json      the base model's results
  <arm>/seed-<s>/                 one unit (UnitLayout)
    train_summary.json  train_log.jsonl  checkpoint/  tensorboard/  trainer_checkpoints/ (while training)
    config.yaml  launch.json      (with training.launcher: what the launched processes read)
    eval/<benchmark>.json  eval/lm_eval/  eval/alpaca_eval/
    .keys/<stage>.key             the key each output was made under (staleness.py)
  .<arm dir>.lock, .seed-<s>.lock, eval/.<benchmark>.lock   unit locks (beside, not inside: a stale dir is removed)
  .seed-<s>.unit.json / .unit.lock                        a unit flow run's record and liveness lock (flows/pool.py)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_ARM = "base"
"""The untouched base model's "arm": ``runs/<experiment>/base``."""
DATA_DIR = "data"
RESERVED_NAMES = (BASE_ARM, DATA_DIR)
"""Directory names under the run root that no arm may take."""
KEYS_DIR = ".keys"


def lock_beside(path: Path) -> Path:
    """The lock file of the unit of work at ``path``: ``<parent>/.<name>.lock``.

    Beside, not inside: a unit's directory may be removed and recreated (a stale run), and the lock must stay the
    same file while it is held (:func:`im_pipeline.locking.unit_lock`).
    """
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def stamp_path(out_dir: Path, stage: str) -> Path:
    """Where the key of ``stage``'s output in ``out_dir`` is recorded."""
    return Path(out_dir) / KEYS_DIR / f"{stage}.key"


@dataclass(frozen=True)
class UnitLayout:
    """One unit's directory: an arm × seed (``<arm>/seed-<s>``) or the base model (``base``)."""

    dir: Path
    arm: str
    seed: int | None

    @classmethod
    def at(cls, directory: Path) -> UnitLayout:
        """The layout of a unit directory given by path (a training run outside an experiment, e.g. in tests)."""
        directory = Path(directory)
        seed = seed_of(directory.name)
        return cls(directory, directory.parent.name if seed is not None else directory.name, seed)

    @property
    def is_base(self) -> bool:
        return self.arm == BASE_ARM

    # training outputs
    @property
    def checkpoint(self) -> Path:
        """The final model (``save_pretrained``), loadable by plain transformers."""
        return self.dir / "checkpoint"

    @property
    def trainer_checkpoints(self) -> Path:
        """The Trainer's intermediate checkpoints (resumed after a crash, removed at the end)."""
        return self.dir / "trainer_checkpoints"

    @property
    def fingerprint_file(self) -> Path:
        """What the Trainer checkpoints were made under (``trainer_checkpoints/fingerprint.json``)."""
        return self.trainer_checkpoints / "fingerprint.json"

    @property
    def train_summary(self) -> Path:
        return self.dir / "train_summary.json"

    @property
    def train_log(self) -> Path:
        return self.dir / "train_log.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.dir / "tensorboard"

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def launch_job(self) -> Path:
        """What a launched training unit's processes read (``training.launcher``)."""
        return self.dir / "launch.json"

    @property
    def lock(self) -> Path:
        """Held while this unit trains."""
        return lock_beside(self.dir)

    # evaluation outputs
    @property
    def eval_dir(self) -> Path:
        return self.dir / "eval"

    def eval_result(self, benchmark: str) -> Path:
        return self.eval_dir / f"{benchmark}.json"

    def eval_lock(self, benchmark: str) -> Path:
        """Held while ``benchmark`` runs on this unit's model."""
        return lock_beside(self.eval_dir / benchmark)

    # a unit run as its own flow run (work pools)
    @property
    def flow_record(self) -> Path:
        """``<parent>/.<unit>.unit.json``: the unit flow run's flow run id, host, pid, times and task records."""
        return self.dir.parent / f".{self.dir.name}.unit.json"

    @property
    def flow_lock(self) -> Path:
        """``<parent>/.<unit>.unit.lock``: held by the unit flow run for as long as it runs."""
        return self.dir.parent / f".{self.dir.name}.unit.lock"


@dataclass(frozen=True)
class RunLayout:
    """``runs/<experiment>/``: the run root and every file under it."""

    root: Path

    @classmethod
    def of(cls, cfg: Any) -> RunLayout:
        """The layout of an experiment config: ``<output_dir>/<name>`` (a stratum's: ``…/<name>/<stratum>``)."""
        root = Path(cfg.output_dir) / cfg.name
        return cls(root / cfg.stratum if getattr(cfg, "stratum", None) else root)

    @property
    def config(self) -> Path:
        """The resolved config of the run."""
        return self.root / "config.yaml"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def timings_lock(self) -> Path:
        return self.root / ".timings.lock"

    # prepared data
    @property
    def data(self) -> Path:
        return self.root / DATA_DIR

    @property
    def train_data(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def held_out_data(self) -> Path:
        return self.data / "held_out.jsonl"

    @property
    def data_stats(self) -> Path:
        return self.data / "data_stats.json"

    @property
    def data_unavailable(self) -> Path:
        """Written instead of the data when a registered training set has no local copy and no Hub."""
        return self.data / "unavailable.json"

    @property
    def data_lock(self) -> Path:
        return lock_beside(self.data)

    # units
    def unit(self, arm: str, seed: int | None = None) -> UnitLayout:
        """``<arm>/seed-<s>``, or ``base`` for the base model (no seed)."""
        if arm == BASE_ARM:
            return UnitLayout(self.root / BASE_ARM, BASE_ARM, None)
        return UnitLayout(self.root / arm / f"seed-{int(seed or 0)}", arm, int(seed or 0))

    def trained_units(self) -> list[UnitLayout]:
        """Every ``<arm>/seed-<s>`` directory present, arms and seeds in sorted order."""
        units: list[UnitLayout] = []
        if not self.root.is_dir():
            return units
        for arm_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name not in RESERVED_NAMES):
            for d in sorted(arm_dir.glob("seed-*")):  # name order, as the report has always read them
                if d.is_dir() and (seed := seed_of(d.name)) is not None:
                    units.append(self.unit(arm_dir.name, seed))
        return units


def seed_of(name: str) -> int | None:
    """``seed-3`` → 3; anything else → None."""
    if name.startswith("seed-"):
        try:
            return int(name.removeprefix("seed-"))
        except ValueError:
            return None
    return None

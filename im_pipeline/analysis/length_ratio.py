"""The length-ratio analysis (paper Figure 2): one point per experiment with IT and IM results, the relative gain
against ln(instruction/output length ratio) and ln(size), and least-squares fits."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from im_pipeline.analysis.aggregate import arm_summary, is_run_root, it_im_arms, load_run, position_bias, relative_gain

log = logging.getLogger(__name__)


def fit_line(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares line y = slope·x + intercept (+ r²); None with fewer than 2 distinct x."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    from scipy import stats as sps

    res = sps.linregress(xs, ys)
    return {"slope": float(res.slope), "intercept": float(res.intercept), "r2": float(res.rvalue**2), "n": len(xs)}


def length_ratio_points(runs_root: Path, benchmark: str = "alpaca_eval") -> list[dict[str, Any]]:
    """One point per experiment under ``runs_root``: training-set ratio and size vs relative IM gain.

    An experiment contributes when its data stats exist and both IT and IM have a usable
    ``benchmark`` result. Gains use the seed-mean of each arm.
    """
    points = []
    for root in sorted(p for p in Path(runs_root).iterdir() if p.is_dir()):
        if not is_run_root(root):
            continue
        try:
            run = load_run(root)
        except (ValueError, OSError) as exc:
            log.warning("skipping %s in the length-ratio analysis: %s", root, exc)
            continue
        train = run.data_stats.train if run.data_stats else None
        it, im = it_im_arms(run)
        s_it = arm_summary(run.by_seed(benchmark, it), benchmark) if it else None
        s_im = arm_summary(run.by_seed(benchmark, im), benchmark) if im else None
        if not train or not train.ratio or not train.n or not s_it or not s_im:
            continue
        gain = relative_gain(s_im.mean, s_it.mean)
        if gain is None:
            continue
        points.append(
            {
                "experiment": run.experiment,
                "train_source": run.data_stats.train_source if run.data_stats else None,
                "ratio": float(train.ratio),
                "n": int(train.n),
                "benchmark": benchmark,
                "it": s_it.mean,
                "im": s_im.mean,
                "gain": gain,
                "judge_position_biased": bool(position_bias({k: run.by_seed(benchmark, k) for k in (it, im) if k})),
                "log_ratio": math.log(float(train.ratio)),
                "log_n": math.log(int(train.n)),
            }
        )
    return points

"""The overfitting section (paper Additional Experiments 1 and 2): output-token train / held-out losses, loss
curves, BLEU-4 memorisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import stats as pstats
from im_pipeline.report.cells import (
    _delta_cell,
    _f,
    _md_table,
    _p_cell,
)
from im_pipeline.report.figures import (
    _ensure_span,
    _figure,
    _integer_steps,
    _plt,
    _savefig,
)
from im_pipeline.runs.layout import BASE_ARM


def overfitting_section(run: agg.RunResults, fig_dir: Path) -> str:
    arms = run.arms
    header = [
        "arm",
        "seed",
        "final train loss",
        "final held-out loss (output tokens, token mean)",
        "(per-example mean)",
        "steps",
        "tokens/s",
        "train wall (s)",
    ]
    rows = []
    for arm in arms:
        for seed, s in sorted(run.train_summaries.get(arm, {}).items()):
            rows.append(
                [
                    arm,
                    seed,
                    _f(s.get("final_train_loss"), 3),
                    _f(s.get("final_held_out_loss"), 3),
                    _f(s.get("final_held_out_loss_per_example"), 3),
                    s.get("steps", "–"),
                    _f(s.get("tokens_per_s"), 0),
                    _f(s.get("wall_time_s"), 1),
                ]
            )
    parts = [
        "Training losses (from `train_summary.json`; the train loss follows the arm's own mask, so IT and IM "
        "train losses are not comparable; the held-out loss is on output tokens for every arm, and the "
        "figure's train curves use the output-token loss under the IT mask, logged per step for every arm):",
        _md_table(header, rows) if rows else "No training summaries.",
    ]
    ov = run.results.get("overfitting", {})
    ov_rows, kinds = [], set()
    deltas: dict[str, dict[str, Any] | None] = {}
    for arm in [BASE_ARM, *arms]:
        for seed, r in sorted(ov.get(arm, {}).items(), key=lambda kv: kv[0] or 0):
            if agg.ok(r):
                if r.get("held_out_kind"):
                    kinds.add(str(r["held_out_kind"]))
                n = r.get("n") or 0
                bleu = (
                    f"{_f(r['value'], 2)} ({pstats.TOO_FEW}: {n})"
                    if n < pstats.MIN_ITEMS or r.get("stderr") is None
                    else f"{_f(r['value'], 2)} ± {_f(r.get('stderr'), 2)}"
                )
                ov_rows.append(
                    [
                        arm,
                        "–" if seed is None else seed,
                        _f(r.get("train_loss"), 3),
                        _f(r.get("test_loss"), 3),
                        _f(r.get("loss_gap"), 3),
                        _f(r.get("train_loss_token_mean"), 3),
                        _f(r.get("test_loss_token_mean"), 3),
                        bleu,
                        _f(r.get("bleu4_corpus"), 2),
                    ]
                )
    if ov_rows:
        kind = "; ".join(sorted(kinds)) or "not recorded (older result files)"
        parts.append(
            f"Overfitting benchmark. **Test set: {kind}.** Loss on output tokens (IT mask, the same measure for "
            "every arm) of training and test conversations, as the per-example mean (each example's token mean, "
            "then the mean over examples: the released compute_loss.py) and as the token mean over all output "
            "tokens; and BLEU-4 of greedy generations for training prompts against their whole training outputs "
            "(paper Table 2: the mean of sentence BLEU per generation, ± its standard error over items; corpus "
            "BLEU over the same pairs beside it; lower = less memorisation):"
        )
        parts.append(
            _md_table(
                [
                    "arm",
                    "seed",
                    "train loss (per-example)",
                    "test loss (per-example)",
                    "gap",
                    "train loss (token mean)",
                    "test loss (token mean)",
                    "BLEU-4 (mean sentence)",
                    "BLEU-4 (corpus)",
                ],
                ov_rows,
            )
        )
        it, im = agg.it_im_arms(run)
        paired = []
        for key, label in (("test_loss", "test loss"), ("train_loss", "train loss"), ("bleu4", "BLEU-4")):
            d = deltas[key] = (
                agg.delta_stats(ov.get(im, {}), ov.get(it, {}), "overfitting", key=key) if it and im else None
            )
            if d:
                paired.append([label, d.get("n_items", "–"), _delta_cell(d, 1.0, 3), _p_cell(d)])
        if paired:
            parts.append(
                f"{im} − {it} on the same examples (per-item paired differences; per-example losses, sentence "
                "BLEU):\n\n" + _md_table(["measure", "items", f"{im} − {it} [95% CI]", "p (test)"], paired)
            )
    fig = _figure(fig_dir, "loss_curves.png", _loss_figure, run, fig_dir, deltas.get("test_loss"))
    if fig:
        parts.append(f"![loss curves](figures/{fig.name})")
    return "\n\n".join(parts)


def held_out_difference_ci(
    run: agg.RunResults, test_loss_delta: dict[str, Any] | None = None
) -> tuple[float | None, str]:
    """Width of the 95% CI of IM − IT on the per-example test loss (overfitting benchmark), and how it was got.
    ``test_loss_delta``: that difference's :func:`~im_pipeline.analysis.aggregate.delta_stats` when the caller
    has it (the section's table), so its bootstraps do not run twice."""
    it, im = agg.it_im_arms(run)
    ov = run.results.get("overfitting", {})
    d = test_loss_delta
    if d is None and it and im:
        d = agg.delta_stats(ov.get(im, {}), ov.get(it, {}), "overfitting", key="test_loss")
    if d and d.get("ci_low") is not None:
        return d["ci_high"] - d["ci_low"], f"the 95% CI of {im} − {it} test loss ({d.get('n_items')} examples)"
    return None, ""


MIN_LOSS_SPAN = 0.5
"""Least y-span (nats) of the loss curves; wider when the CI of the IM − IT held-out difference is wider."""


def _loss_figure(run: agg.RunResults, fig_dir: Path, test_loss_delta: dict[str, Any] | None = None) -> Path | None:
    if not any(run.train_logs.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    own_mask = False
    for i, arm in enumerate(run.arms):
        for seed, rows in sorted(run.train_logs.get(arm, {}).items()):
            label = arm if len(run.seeds) == 1 else f"{arm} s{seed}"
            tr = [(r["step"], r["it_mask_loss"]) for r in rows if r.get("it_mask_loss") is not None]
            if not tr:  # logs written before it_mask_loss existed: the arm's own loss
                own_mask = True
                tr = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
            ho = [(r["step"], r["held_out_loss"]) for r in rows if r.get("held_out_loss") is not None]
            if tr:
                axes[0].plot(*zip(*tr, strict=True), color=f"C{i}", label=label)
            if ho:
                axes[1].plot(*zip(*ho, strict=True), "o-", color=f"C{i}", label=label)
    axes[0].set_title("train loss (each arm's own mask)" if own_mask else "train loss on output tokens (IT mask)")
    axes[1].set_title("held-out loss on output tokens")
    width, why = held_out_difference_ci(run, test_loss_delta)
    span = max(width or 0.0, MIN_LOSS_SPAN)
    why = (
        f"the larger of {MIN_LOSS_SPAN} nats and {why} ({width:.3f})"
        if why
        else f"{MIN_LOSS_SPAN} nats (no CI of the IM − IT difference available)"
    )
    last = max((r["step"] for logs in run.train_logs.values() for rows in logs.values() for r in rows), default=1)
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.set_xlim(0.5, last + 0.5)  # the whole run on both panels (one held-out point stays at its step)
        _integer_steps(ax)
        _ensure_span(ax, span)
        ax.legend(fontsize=8)
    fig.text(
        0.5,
        0.01,
        f"y-axes span at least {span:.2f} nats: {why}",
        ha="center",
        fontsize=7,
        color="grey",
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = fig_dir / "loss_curves.png"
    _savefig(fig, out)
    plt.close(fig)
    return out

"""The overfitting section (paper Additional Experiments 1 and 2): output-token train / held-out losses, loss
curves, BLEU-4 memorisation."""

from __future__ import annotations

from pathlib import Path

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import stats as pstats
from im_pipeline.report.cells import delta_cell, fmt, md_table, p_cell
from im_pipeline.report.figures import cached_figure, ensure_span, integer_steps, pyplot, savefig
from im_pipeline.results import EvalResult, OverfittingResult
from im_pipeline.runs.layout import BASE_ARM

BENCHMARK = "overfitting"


def overfitting_section(run: agg.RunResults, fig_dir: Path) -> str:
    """Training losses, the overfitting benchmark's losses and BLEU per arm and seed, IM − IT on the same examples,
    and the loss curves."""
    parts = [
        "Training losses (from `train_summary.json`; the train loss follows the arm's own mask, so IT and IM "
        "train losses are not comparable; the held-out loss is on output tokens for every arm, and the "
        "figure's train curves use the output-token loss under the IT mask, logged per step for every arm):",
        training_table(run),
    ]
    test_loss_delta = None
    rows = [(arm, seed, r) for arm, seed, r in _overfitting_results(run)]
    if rows:
        kinds = {r.held_out_kind for _, _, r in rows if r.held_out_kind}
        kind = "; ".join(sorted(kinds)) or "not recorded (older result files)"
        parts += [overfitting_intro(kind), overfitting_table(rows)]
        deltas = paired_deltas(run)
        test_loss_delta = deltas["test_loss"]
        parts.append(paired_table(run, deltas))
    fig = cached_figure(fig_dir, "loss_curves.png", _loss_figure, run, fig_dir, test_loss_delta)
    if fig:
        parts.append(f"![loss curves](figures/{fig.name})")
    return "\n\n".join(p for p in parts if p)


def training_table(run: agg.RunResults) -> str:
    """Final train / held-out loss, steps, throughput and wall time of every training unit."""
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
    rows = [
        [
            arm,
            seed,
            fmt(s.final_train_loss, 3),
            fmt(s.final_held_out_loss, 3),
            fmt(s.final_held_out_loss_per_example, 3),
            "–" if s.steps is None else s.steps,
            fmt(s.tokens_per_s, 0),
            fmt(s.wall_time_s, 1),
        ]
        for arm in run.arms
        for seed, s in sorted(run.summaries(arm).items())
    ]
    return md_table(header, rows) if rows else "No training summaries."


def _overfitting_results(run: agg.RunResults) -> list[tuple[str, int | None, OverfittingResult]]:
    """(arm, seed, result) of every usable overfitting result, base model first."""
    out = []
    for arm in [BASE_ARM, *run.arms]:
        for seed, r in sorted(run.by_seed(BENCHMARK, arm).items(), key=lambda kv: kv[0] or 0):
            if agg.ok(r) and isinstance(r, OverfittingResult):
                out.append((arm, seed, r))
    return out


def overfitting_intro(kind: str) -> str:
    return (
        f"Overfitting benchmark. **Test set: {kind}.** Loss on output tokens (IT mask, the same measure for "
        "every arm) of training and test conversations, as the per-example mean (each example's token mean, "
        "then the mean over examples: the released compute_loss.py) and as the token mean over all output "
        "tokens; and BLEU-4 of greedy generations for training prompts against their whole training outputs "
        "(paper Table 2: the mean of sentence BLEU per generation, ± its standard error over items; corpus "
        "BLEU over the same pairs beside it; lower = less memorisation):"
    )


def _bleu_cell(r: EvalResult) -> str:
    if r.metric != "bleu4":  # options.bleu false: no generations, the result's value is a loss
        return "– (BLEU off)"
    if r.n < pstats.MIN_ITEMS or r.stderr is None:
        return f"{fmt(r.value, 2)} ({pstats.TOO_FEW}: {r.n})"
    return f"{fmt(r.value, 2)} ± {fmt(r.stderr, 2)}"


def overfitting_table(rows: list[tuple[str, int | None, OverfittingResult]]) -> str:
    """Per arm and seed: train / test loss (per-example and token mean), their gap, BLEU-4."""
    header = [
        "arm",
        "seed",
        "train loss (per-example)",
        "test loss (per-example)",
        "gap",
        "train loss (token mean)",
        "test loss (token mean)",
        "BLEU-4 (mean sentence)",
        "BLEU-4 (corpus)",
    ]
    cells = [
        [
            arm,
            "–" if seed is None else seed,
            fmt(r.train_loss, 3),
            fmt(r.test_loss, 3),
            fmt(r.loss_gap, 3),
            fmt(r.train_loss_token_mean, 3),
            fmt(r.test_loss_token_mean, 3),
            _bleu_cell(r),
            fmt(r.bleu4_corpus, 2),
        ]
        for arm, seed, r in rows
    ]
    return md_table(header, cells)


PAIRED = (("test_loss", "test loss"), ("train_loss", "train loss"), ("bleu4", "BLEU-4"))
"""The overfitting benchmark's per-item scores compared IM − IT, with their labels."""


def paired_deltas(run: agg.RunResults) -> dict[str, agg.DeltaStats | None]:
    """IM − IT on each per-item score of :data:`PAIRED` (None without both arms)."""
    it, im = agg.it_im_arms(run)
    return {
        key: agg.delta_stats(run.by_seed(BENCHMARK, im), run.by_seed(BENCHMARK, it), BENCHMARK, key=key)
        if it and im
        else None
        for key, _ in PAIRED
    }


def paired_table(run: agg.RunResults, deltas: dict[str, agg.DeltaStats | None]) -> str:
    """The paired IM − IT differences on the same examples ("" when there are none)."""
    it, im = agg.it_im_arms(run)
    paired = [
        [label, "–" if d.n_items is None else d.n_items, delta_cell(d, 1.0, 3), p_cell(d)]
        for key, label in PAIRED
        if (d := deltas[key])
    ]
    if not paired:
        return ""
    varies = "seeds (t on the seed deltas)" if len(run.seeds) >= 2 else "items (paired bootstrap)"
    return (
        f"{im} − {it} on the same examples (per-item paired differences; per-example losses, sentence "
        "BLEU):\n\n" + md_table(["measure", "items", f"{im} − {it} [95% CI; varies: {varies}]", "p (test)"], paired)
    )


def held_out_difference_ci(
    run: agg.RunResults, test_loss_delta: agg.DeltaStats | None = None
) -> tuple[float | None, str]:
    """Width of the 95% CI of IM − IT on the per-example test loss (overfitting benchmark), and how it was got.
    ``test_loss_delta``: that difference's :func:`~im_pipeline.analysis.aggregate.delta_stats` when the caller
    has it (the section's table), so its bootstraps do not run twice."""
    it, im = agg.it_im_arms(run)
    d = test_loss_delta
    if d is None and it and im:
        d = agg.delta_stats(run.by_seed(BENCHMARK, im), run.by_seed(BENCHMARK, it), BENCHMARK, key="test_loss")
    if d and d.ci_low is not None and d.ci_high is not None:
        return d.ci_high - d.ci_low, f"the 95% CI of {im} − {it} test loss ({d.n_items} examples)"
    return None, ""


MIN_LOSS_SPAN = 0.5
"""Least y-span (nats) of the loss curves; wider when the CI of the IM − IT held-out difference is wider."""


def _loss_figure(run: agg.RunResults, fig_dir: Path, test_loss_delta: agg.DeltaStats | None = None) -> Path | None:
    if not any(run.train_logs.values()):
        return None
    plt = pyplot()
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
        integer_steps(ax)
        ensure_span(ax, span)
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
    savefig(fig, out)
    plt.close(fig)
    return out

"""Overfitting analyses (paper, Additional Experiments 1 and 2), as one benchmark.

* **Train vs test loss on output tokens.** Mean cross-entropy over the assistant tokens (IT mask) of
  training and held-out conversations, the same measure for every arm (``output_token_loss`` from
  the training package), so IT and IM are comparable. IM's claim: a smaller train/test gap.
* **Memorisation, BLEU-4.** Greedy generations for ``limit`` training prompts, scored with
  sacrebleu's corpus BLEU against their training outputs. Lower = less copying of the training
  outputs (paper Table 2, LIMA: IT 18.15 vs IM 17.30). The references are cut to the generation
  budget (their first ``max_new_tokens`` tokens): with capped generation and long outputs (LIMA:
  ~440 words) the brevity penalty would otherwise drive every score to ~0 whatever the overlap.
  With a budget that covers the outputs this is the plain BLEU; the BLEU against the full
  references is recorded too (``bleu4_full_reference``).

Records come from ``ctx.extra`` (``train_records``/``held_out_records``, or ``train``/``held_out`` as
the pipeline's evaluate task passes them), or, for a standalone ``im-pipeline eval``, from the
options ``train=SOURCE`` / ``held_out=SOURCE`` (any source ``load_records`` accepts).

Options: ``loss_examples`` (default 128: train and held-out loss on at most this many records each,
a seeded sample, identical across arms), ``max_new_tokens`` (default 256), ``max_length`` (512),
``sample_seed`` (0), ``train``, ``held_out``.
"""

from __future__ import annotations

import logging
import random
import statistics
from typing import Any

from im_pipeline.config import BenchmarkConfig
from im_pipeline.evaluation.common import BenchmarkSkipped, EvalContext

log = logging.getLogger(__name__)

OPTIONS = {"loss_examples", "max_new_tokens", "max_length", "sample_seed", "train", "held_out", "bootstrap"}
STOP_TULU = ("<|user|>", "<|system|>")  # the next turn of the Tulu template: the answer is over


def _records(ctx: EvalContext, opts: dict[str, Any], which: str) -> list[dict] | None:
    """Records for ``which`` ("train" | "held_out") from the context, else from the option's source."""
    for key in (f"{which}_records", which):
        if ctx.extra.get(key) is not None:
            return list(ctx.extra[key])
    source = opts.get(which)
    if source is None:
        return None
    from im_pipeline.data import load_records

    return load_records(str(source), ctx.data_dir)


def _sample(records: list[dict], k: int, seed: int) -> list[dict]:
    """A seeded sample of ``k`` records in a fixed order (same items for every arm)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in order[:k]]


def split_prompt(record: dict) -> tuple[list[dict], str]:
    """(conversation before the last assistant turn, that turn's content)."""
    messages = record["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        raise ValueError(f"record {record.get('id')!r}: needs a non-assistant message followed by an assistant answer")
    return messages[:last], messages[last]["content"]


def truncate_to_tokens(text: str, tokenizer: Any, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (the generation budget)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).strip()


def bleu4(hypotheses: list[str], references: list[str], *, bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """sacrebleu corpus BLEU-4 (default 13a tokenisation), with a bootstrap standard error over items.

    sacrebleu has no standard error for a single system (its bootstrap is for paired system
    comparison), so the items are resampled here: stderr = std of corpus BLEU over resamples.
    """
    import sacrebleu

    metric = sacrebleu.BLEU()
    score = metric.corpus_score(hypotheses, [references])
    stderr = None
    if bootstrap > 0 and len(hypotheses) > 1:
        rng = random.Random(seed)
        n = len(hypotheses)
        samples = []
        for _ in range(bootstrap):
            idx = [rng.randrange(n) for _ in range(n)]
            samples.append(sacrebleu.corpus_bleu([hypotheses[i] for i in idx], [[references[i] for i in idx]]).score)
        stderr = statistics.stdev(samples)
    return {
        "score": score.score,
        "stderr": stderr,
        "precisions": [round(p, 3) for p in score.precisions],
        "brevity_penalty": round(score.bp, 4),
        "hyp_len": score.sys_len,
        "ref_len": score.ref_len,
        "signature": str(metric.get_signature()),
    }


def run_overfitting(ctx: EvalContext, cfg: BenchmarkConfig) -> dict[str, Any]:
    """Train/test loss on output tokens and BLEU-4 memorisation of ``cfg.limit`` training prompts."""
    opts = dict(cfg.options)
    unknown = sorted(set(opts) - OPTIONS)
    if unknown:
        raise ValueError(f"overfitting: unknown option(s) {unknown}; allowed: {sorted(OPTIONS)}")
    train = _records(ctx, opts, "train")
    held_out = _records(ctx, opts, "held_out")
    if not train:
        raise BenchmarkSkipped(
            "overfitting: no training records; the pipeline passes the run's train/held-out data, "
            "standalone use needs --option train=SOURCE [--option held_out=SOURCE]"
        )
    loss_examples = int(opts.get("loss_examples", 128))
    max_length = int(opts.get("max_length", 512))
    seed = int(opts.get("sample_seed", 0))
    n_bleu = min(cfg.limit or 16, len(train))

    from im_pipeline.data.templates import render_prompt
    from im_pipeline.evaluation.generation import GenerationConfig, generate
    from im_pipeline.training import output_token_loss

    model, tokenizer = ctx.model_and_tokenizer()
    train_sample = _sample(train, max(loss_examples, n_bleu), seed)
    loss_train = train_sample[:loss_examples]
    loss_held = _sample(held_out, loss_examples, seed) if held_out else []
    log.info("overfitting: output-token loss on %d train / %d held-out records", len(loss_train), len(loss_held))
    kw = {"template": ctx.template, "max_length": max_length, "batch_size": ctx.batch_size}
    train_loss = output_token_loss(model, tokenizer, loss_train, **kw)
    test_loss = output_token_loss(model, tokenizer, loss_held, **kw) if loss_held else None

    bleu_items = train_sample[:n_bleu]
    prompts, references = [], []
    for record in bleu_items:
        messages, reference = split_prompt(record)
        prompts.append(render_prompt(messages, ctx.template, tokenizer))
        references.append(reference)
    gen_cfg = GenerationConfig(
        max_new_tokens=int(opts.get("max_new_tokens", 256)),
        stop=STOP_TULU if ctx.template == "tulu" else (),
        batch_size=ctx.batch_size,
        seed=seed,
    )
    log.info(
        "overfitting: greedy generation for %d training prompts (max %d new tokens)", n_bleu, gen_cfg.max_new_tokens
    )
    hypotheses = [c[0].strip() for c in generate(model, tokenizer, prompts, gen_cfg)]
    budget_refs = [truncate_to_tokens(r, tokenizer, gen_cfg.max_new_tokens) for r in references]
    bootstrap = int(opts.get("bootstrap", 200))
    bleu = bleu4(hypotheses, budget_refs, bootstrap=bootstrap, seed=seed)
    bleu_full = bleu4(hypotheses, references, bootstrap=0)
    return {
        "metric": "bleu4",
        "value": bleu["score"],
        "stderr": bleu["stderr"],
        "n": n_bleu,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "loss_gap": None if test_loss is None else test_loss - train_loss,
        "n_train_loss": len(loss_train),
        "n_test_loss": len(loss_held),
        "bleu": {k: v for k, v in bleu.items() if k not in ("score", "stderr")},
        "bleu4_full_reference": bleu_full["score"],
        "n_references_truncated": sum(b != r for b, r in zip(budget_refs, references, strict=True)),
        "max_new_tokens": gen_cfg.max_new_tokens,
        "template": ctx.template,
        "examples": [
            {"id": r.get("id"), "generation": h[:300], "reference": ref[:300]}
            for r, h, ref in zip(bleu_items[:3], hypotheses[:3], references[:3], strict=True)
        ],
    }

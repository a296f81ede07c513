"""Overfitting analyses (paper, Additional Experiments 1 and 2), as one benchmark.

* **Train vs test loss on output tokens.** Cross-entropy over the assistant tokens (IT mask) of training
  and held-out conversations, the same measure for every arm, so IT and IM are comparable. Two
  reductions, both reported: the **per-example mean** (each example's token mean, then the mean over
  examples: the released ``compute_loss.py`` with batch size 1; the headline ``train_loss`` /
  ``test_loss``) and the **token mean** over all output tokens (``*_token_mean``). The test set is
  ``data.held_out`` (another data set, as the paper, or an in-distribution split: the pipeline passes
  ``held_out_kind`` and the result records it). IM's claim: a smaller train/test gap.
* **In-domain loss.** With ``data.in_domain_size`` the pipeline also passes in-domain test records
  (``OverfittingInputs.in_domain``: the seed's sample of the training source, disjoint from its training sample;
  for the base model the union of every seed's): ``in_domain_loss`` (per-example mean),
  ``in_domain_loss_token_mean``, ``n_in_domain_loss`` and ``items["in_domain_loss"]``, over all of them (not capped
  by ``loss_examples``, so that a seed's items pair with the base model's by id). Without them none of these fields
  is written.
* **Memorisation, BLEU-4.** Greedy generations for ``limit`` training prompts, each scored with
  sacrebleu's *sentence* BLEU against its whole training output; the headline value is the mean of
  these (paper Table 2: "average BLEU of each generation against its training output"; LIMA: IT 18.15
  vs IM 17.30). sacrebleu's corpus BLEU over the same pairs is recorded too (``bleu4_corpus``).
  References are never cut: a generation budget shorter than the outputs lowers BLEU through the
  brevity penalty, and that is part of the measure (``max_new_tokens`` is recorded).

Per-item records (``items``: per-example train/test losses and sentence BLEU, by example id) let the
report pair arms item by item (:mod:`im_pipeline.analysis.stats`).

Records come from ``ctx.overfitting`` (:class:`~im_pipeline.evaluation.common.OverfittingInputs`, as the
pipeline's evaluate unit passes them), or, for a standalone ``im-pipeline eval``, from the options
``train=SOURCE`` / ``held_out=SOURCE`` (any source ``load_records`` accepts).

Options: ``loss_examples`` (default 128: train and held-out loss on at most this many records each,
a seeded sample, identical across arms), ``max_new_tokens`` (default 256), ``max_length`` (512),
``sample_seed`` (0), ``train``, ``held_out``, ``held_out_kind`` (a label for standalone use).
"""

from __future__ import annotations

import logging
import math
import random
import statistics
from typing import Any, cast

import torch

from im_pipeline.analysis.stats import MIN_ITEMS
from im_pipeline.config import BenchmarkConfig
from im_pipeline.evaluation.common import BenchmarkSkipped, EvalContext
from im_pipeline.evaluation.specs import get_spec
from im_pipeline.evaluation.specs.overfitting import OverfittingOptions

log = logging.getLogger(__name__)

STOP_TULU = ("<|user|>", "<|system|>")  # the next turn of the Tulu template: the answer is over


def _records(ctx: EvalContext, source: str | None, which: str) -> list[dict] | None:
    """Records for ``which`` ("train" | "held_out") from the context, else from ``source`` (the option)."""
    if ctx.overfitting is not None:
        return list(getattr(ctx.overfitting, which))
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


def bleu4(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """Mean sentence BLEU-4 (sacrebleu defaults: 13a tokenisation, exp smoothing) of each hypothesis against
    its own whole reference, plus sacrebleu's corpus BLEU over the same pairs."""
    import sacrebleu

    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"need as many hypotheses as references (>= 1), got {len(hypotheses)} and {len(references)}")
    sentence = [sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hypotheses, references, strict=True)]
    metric = sacrebleu.BLEU()
    corpus = metric.corpus_score(hypotheses, [references])
    n = len(sentence)
    return {
        "mean_sentence_bleu": statistics.fmean(sentence),
        "stderr": statistics.stdev(sentence) / math.sqrt(n) if n >= MIN_ITEMS else None,
        "sentence": sentence,
        "corpus": corpus.score,
        "corpus_precisions": [round(p, 3) for p in corpus.precisions],
        "corpus_brevity_penalty": round(corpus.bp, 4),
        "hyp_len": corpus.sys_len,
        "ref_len": corpus.ref_len,
        "signature": str(metric.get_signature()),
    }


@torch.no_grad()
def output_token_losses(
    model: Any, tokenizer: Any, records: list[dict], *, template: str, max_length: int, batch_size: int
) -> list[dict[str, Any]]:
    """Per-example output-token loss (IT mask): ``{"id", "loss" (token mean), "tokens"}`` per record that has output
    tokens left after truncation to ``max_length``. Eval mode (no dropout, no NEFTune noise), mode restored."""
    from im_pipeline.loss_modes import OUTPUT_ONLY
    from im_pipeline.training.loss import shifted_weights, token_ce
    from im_pipeline.training.masking import WeightedCollator, encode_example

    items: list[tuple[str, dict]] = []
    for i, rec in enumerate(records):
        enc = encode_example(rec, tokenizer, loss=OUTPUT_ONLY, template=template, max_length=max_length)
        if any(w > 0 for w in enc["it_weights"][1:]):
            feats = {k: [float(x) for x in enc[k]] for k in ("loss_weights", "it_weights")}
            items.append((str(rec.get("id", i)), {"input_ids": list(enc["input_ids"]), **feats}))
    collate = WeightedCollator(tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(items)), key=lambda j: len(items[j][1]["input_ids"]))
    out: dict[int, dict[str, Any]] = {}
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([items[j][1] for j in chunk]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = torch.where(batch["it_weights"] > 0, batch["input_ids"], torch.full_like(batch["input_ids"], -100))
            w = shifted_weights(labels, batch["it_weights"])
            sums = (token_ce(logits, labels) * w).sum(dim=1)
            counts = w.sum(dim=1)
            for j, s, c in zip(chunk, sums.tolist(), counts.tolist(), strict=True):
                out[j] = {"id": items[j][0], "loss": s / c, "tokens": int(c)}
    finally:
        model.train(was_training)
    return [out[j] for j in range(len(items))]


def loss_summary(per_example: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-example mean (released code) and token mean of per-example output-token losses."""
    if not per_example:
        return {"per_example_mean": None, "token_mean": None, "n": 0, "tokens": 0}
    tokens = sum(e["tokens"] for e in per_example)
    return {
        "per_example_mean": statistics.fmean(e["loss"] for e in per_example),
        "token_mean": sum(e["loss"] * e["tokens"] for e in per_example) / tokens,
        "n": len(per_example),
        "tokens": tokens,
    }


def run_overfitting(ctx: EvalContext, cfg: BenchmarkConfig) -> dict[str, Any]:
    """Train/test loss on output tokens and BLEU-4 memorisation of ``cfg.limit`` training prompts."""
    opts = cast(OverfittingOptions, get_spec("overfitting").validate_options(cfg.options))
    train, held_out, held_out_kind = _inputs(ctx, opts)
    n_bleu = min(cfg.limit or 16, len(train))
    model, tokenizer = ctx.model_and_tokenizer()
    train_sample = _sample(train, max(opts.loss_examples, n_bleu), opts.sample_seed)
    loss_train = train_sample[: opts.loss_examples]
    loss_held = _sample(held_out, opts.loss_examples, opts.sample_seed) if held_out else []
    # Every in-domain record, not capped by loss_examples: a seed's items pair by id with the base model's union.
    in_domain = list(ctx.overfitting.in_domain) if ctx.overfitting else []
    log.info(
        "overfitting: output-token loss on %d train / %d held-out / %d in-domain records",
        *(len(x) for x in (loss_train, loss_held, in_domain)),
    )
    kw = {"template": ctx.template, "max_length": opts.max_length, "batch_size": ctx.batch_size}
    train_items = output_token_losses(model, tokenizer, loss_train, **kw)
    test_items = output_token_losses(model, tokenizer, loss_held, **kw) if loss_held else []
    in_items = output_token_losses(model, tokenizer, in_domain, **kw) if in_domain else None
    common = {
        **_loss_fields(loss_summary(train_items), loss_summary(test_items)),
        **_in_domain_fields(in_items),
        "held_out_kind": held_out_kind or ("in-distribution split" if held_out else None),
        "template": ctx.template,
    }
    items = _loss_items(train_items, test_items, in_items)
    if not opts.bleu:
        return _losses_only(common, items, test_items or train_items)
    bleu_items = train_sample[:n_bleu]
    hypotheses, references = _memorised(ctx, opts, model, tokenizer, bleu_items)
    bleu = bleu4(hypotheses, references)
    ids = [str(r.get("id", i)) for i, r in enumerate(bleu_items)]
    return {
        "metric": "bleu4",
        "value": bleu["mean_sentence_bleu"],
        "stderr": bleu["stderr"],
        "n": n_bleu,
        "bleu4_definition": "mean over generations of sacrebleu sentence BLEU-4 against the whole training output",
        "bleu4_corpus": bleu["corpus"],
        **common,
        "bleu": {k: v for k, v in bleu.items() if k not in ("mean_sentence_bleu", "stderr", "sentence", "corpus")},
        "max_new_tokens": opts.max_new_tokens,
        "items": {**items, "bleu4": dict(zip(ids, bleu["sentence"], strict=True))},
        "examples": [
            {"id": r.get("id"), "generation": h[:300], "reference": ref[:300]}
            for r, h, ref in zip(bleu_items[:3], hypotheses[:3], references[:3], strict=True)
        ],
    }


def _loss_items(train: list[dict], test: list[dict], in_domain: list[dict] | None) -> dict[str, dict[str, float]]:
    """The per-example losses by example id: ``train_loss``, ``test_loss`` and, with in-domain records,
    ``in_domain_loss``."""
    items = {"train_loss": {e["id"]: e["loss"] for e in train}, "test_loss": {e["id"]: e["loss"] for e in test}}
    if in_domain is not None:
        items["in_domain_loss"] = {e["id"]: e["loss"] for e in in_domain}
    return items


def _in_domain_fields(in_domain: list[dict] | None) -> dict[str, Any]:
    """The result's in-domain loss fields (both reductions and n); none without in-domain records."""
    if in_domain is None:
        return {}
    summary = loss_summary(in_domain)
    return {
        "in_domain_loss": summary["per_example_mean"],
        "in_domain_loss_token_mean": summary["token_mean"],
        "n_in_domain_loss": summary["n"],
    }


def _losses_only(common: dict[str, Any], items: dict[str, dict[str, float]], headline: list[dict]) -> dict[str, Any]:
    """``bleu: false``: the losses only; the headline is the per-example test loss (the train loss without a test
    set), ± its standard error over the examples."""
    which = "test_loss" if items["test_loss"] else "train_loss"
    losses = [float(e["loss"]) for e in headline]
    stderr = statistics.stdev(losses) / len(losses) ** 0.5 if len(losses) > 1 else None
    return {
        "metric": which,
        "value": statistics.fmean(losses) if losses else None,
        "stderr": stderr,
        "n": len(losses),
        **common,
        "items": items,
    }


def _inputs(ctx: EvalContext, opts: OverfittingOptions) -> tuple[list[dict], list[dict] | None, str | None]:
    """(train, held-out records, what the held-out set is): the run's own, else the options' sources."""
    train = _records(ctx, opts.train, "train")
    held_out = _records(ctx, opts.held_out, "held_out")
    if not train:
        raise BenchmarkSkipped(
            "overfitting: no training records; the pipeline passes the run's train/held-out data, "
            "standalone use needs --option train=SOURCE [--option held_out=SOURCE]"
        )
    held_out_kind = (ctx.overfitting.held_out_kind if ctx.overfitting else None) or opts.held_out_kind
    if held_out_kind is None and opts.held_out is not None:
        held_out_kind = f"another data set ({opts.held_out})"
    return train, held_out, held_out_kind


def _memorised(
    ctx: EvalContext, opts: OverfittingOptions, model: Any, tokenizer: Any, records: list[dict]
) -> tuple[list[str], list[str]]:
    """(greedy generation, training output) for each record's prompt: what BLEU-4 compares."""
    from im_pipeline.data.templates import render_prompt
    from im_pipeline.evaluation.generation import GenerationConfig, generate

    prompts, references = [], []
    for record in records:
        messages, reference = split_prompt(record)
        prompts.append(render_prompt(messages, ctx.template, tokenizer))
        references.append(reference)
    gen_cfg = GenerationConfig(
        max_new_tokens=opts.max_new_tokens,
        stop=STOP_TULU if ctx.template == "tulu" else (),
        batch_size=ctx.batch_size,
        seed=opts.sample_seed,
        kv_cache_bytes=ctx.kv_cache_bytes,
    )
    log.info(
        "overfitting: greedy generation for %d training prompts (max %d new tokens)", len(records), opts.max_new_tokens
    )
    return [c[0].strip() for c in generate(model, tokenizer, prompts, gen_cfg)], references


def _loss_fields(tr: dict[str, Any], te: dict[str, Any]) -> dict[str, Any]:
    """The result's loss fields: train / test loss, both reductions, and their gaps."""

    def gap(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    return {
        "train_loss": tr["per_example_mean"],
        "test_loss": te["per_example_mean"],
        "loss_gap": gap(tr["per_example_mean"], te["per_example_mean"]),
        "train_loss_token_mean": tr["token_mean"],
        "test_loss_token_mean": te["token_mean"],
        "loss_gap_token_mean": gap(tr["token_mean"], te["token_mean"]),
        "loss_reduction": "train_loss/test_loss: per-example mean of output-token means (released compute_loss.py); "
        "*_token_mean: mean over all output tokens",
        "n_train_loss": tr["n"],
        "n_test_loss": te["n"],
    }

"""Evaluation loads the model with the attention kernel the config names (``model.attn_implementation``), the same as
training: what reaches ``from_pretrained`` and the model lm-eval's HFLM wraps; the keys of configs without it stay."""

from __future__ import annotations

import pytest
from test_trainer import make_cfg
from transformers import AutoModelForCausalLM

from im_pipeline.evaluation import common
from im_pipeline.evaluation.common import ModelCache
from im_pipeline.runs import units
from im_pipeline.runs.units import EvalJob


def _with_attention(cfg, attn):
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"attn_implementation": attn})})


@pytest.mark.parametrize(("attn", "kernel"), [(None, "sdpa"), ("eager", "eager")])
def test_evaluation_loads_with_the_configs_attention_kernel(tiny_model_dir, tmp_path, monkeypatch, attn, kernel):
    from lm_eval.models.huggingface import HFLM

    cfg = _with_attention(make_cfg(tiny_model_dir), attn)
    real = AutoModelForCausalLM.from_pretrained
    calls: list[dict] = []

    def recording(cls, *args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    wrapped: list[str] = []

    def benchmark(name, ctx, bcfg):  # stands in for run_benchmark: load as every evaluator does, wrap as lm-eval does
        model, tok = ctx.model_and_tokenizer()
        wrapped.append(HFLM(pretrained=model, tokenizer=tok, batch_size=2).model.config._attn_implementation)

    monkeypatch.setattr(common, "run_benchmark", benchmark)
    job = EvalJob("base", None, "mmlu", "key", str(tiny_model_dir), "model-key")
    units._evaluate(cfg, job, tmp_path, ModelCache(), None, "cpu")
    assert len(calls) == 1
    assert calls[0].get("attn_implementation") == attn  # None: not passed at all, transformers' default
    assert ("attn_implementation" in calls[0]) == (attn is not None)
    assert wrapped == [kernel]  # eager reaches the evaluated model, not the default sdpa


def test_eval_keys_change_with_the_kernel_only_when_it_is_set(tiny_model_dir):
    from im_pipeline.runs.staleness import model_identity

    cfg = make_cfg(tiny_model_dir)
    assert "attn_implementation" not in model_identity(cfg)  # unset: the keys of existing configs stay as they were
    default = [j.key for j in units.jobs_of(cfg, "base", None, "h")[1]]
    eager = [j.key for j in units.jobs_of(_with_attention(cfg, "eager"), "base", None, "h")[1]]
    assert default and all(a != b for a, b in zip(default, eager, strict=True))  # another kernel: evaluated again

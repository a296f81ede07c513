"""Trained checkpoints people can use: the training chat template, a model card, TensorBoard curves,
loadable by plain transformers in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from im_pipeline.config import ArmConfig, DataConfig, ExperimentConfig, ModelConfig, TrainingConfig
from im_pipeline.data.templates import TULU_CHAT_TEMPLATE, render, render_prompt
from im_pipeline.training import train_arm

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [
        {"role": "system", "content": "  Be brief.\n"},
        {"role": "user", "content": "\nName a fox.  "},
        {"role": "assistant", "content": " The quick brown fox. "},
        {"role": "user", "content": "And a dog?"},
        {"role": "assistant", "content": "The lazy dog.\n\n"},
    ],
]


def _records(n: int) -> list[dict]:
    return [
        {"id": f"c-{i}", "source": "test", "messages": CONVERSATIONS[i % 2]}
        | {"messages": [dict(m, content=m["content"] + f" {i}") for m in CONVERSATIONS[i % 2]]}
        for i in range(n)
    ]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_tulu_chat_template_renders_exactly_the_training_text(tiny_model_dir: Path, messages: list[dict]) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = TULU_CHAT_TEMPLATE
    assert tok.apply_chat_template(messages, tokenize=False) == render(messages, "tulu", tok).text
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt == render_prompt(messages, "tulu", tok)
    assert prompt.endswith("<|assistant|>\n") and render(messages, "tulu", tok).text.startswith(prompt)


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny IM run from a base model whose tokenizer has a ChatML chat template (as SmolLM2's has)."""
    base = tmp_path_factory.mktemp("chatml-base")
    for f in tiny_model_dir.iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = CHATML
    tok.save_pretrained(base)
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = ExperimentConfig(
        name="card-test",
        model=ModelConfig(source=str(base)),
        data=DataConfig(train="my_data.jsonl", max_length=64, n=6),
        training=TrainingConfig(epochs=1, batch_size=2, learning_rate=1e-3, threads=1, save_steps=10),
        report_dir=str(tmp / "reports"),
    )
    arm = ArmConfig(name="IM", loss_mode="im")
    run = tmp / "runs" / "card-test" / "IM" / "seed-3"
    summary = train_arm(cfg, arm, 3, _records(6), _records(8)[6:], run, key="k")
    return {"cfg": cfg, "run": run, "summary": summary, "tmp": tmp, "base": base}


def test_checkpoint_has_the_training_template_and_a_model_card(trained: dict) -> None:
    ckpt = trained["run"] / "checkpoint"
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.chat_template == TULU_CHAT_TEMPLATE  # not the base model's ChatML
    assert AutoTokenizer.from_pretrained(trained["base"]).chat_template == CHATML  # the base is untouched
    card = (ckpt / "README.md").read_text()
    s = trained["summary"]
    assert card.startswith("---\n") and "library_name: transformers" in card and "loss-mode-im" in card
    assert f"| base model | `{trained['base']}` |" in card
    assert "| training data | `my_data.jsonl`, 6 examples (subsample n=6), 2 held out |" in card
    assert "| loss mode | `im` (arm `IM`) |" in card
    assert "| learning rate | 0.001 (linear, warm-up 0.03) |" in card
    assert "| batch | 2 × 1 accumulation |" in card
    assert f"| final train loss | {s['final_train_loss']:.4f} |" in card
    assert f"| held-out loss (output tokens) | {s['final_held_out_loss']:.4f} |" in card
    link = card.split("[the experiment's report](", 1)[1].split(")", 1)[0]
    assert (ckpt / link).resolve() == (trained["tmp"] / "reports" / "card-test" / "REPORT.md").resolve()


def test_training_curves_go_to_tensorboard(trained: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((trained["run"] / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, trained["summary"]["steps"] + 1))
    assert not (trained["run"] / "trainer_checkpoints").exists()


@pytest.mark.integration
def test_checkpoint_round_trip_in_plain_transformers(trained: dict) -> None:
    """A fresh Python that imports only transformers loads the checkpoint, rebuilds the training prompt, generates."""
    messages = _records(1)[0]["messages"]
    tok = AutoTokenizer.from_pretrained(trained["run"] / "checkpoint")
    expected = {
        "prompt": render_prompt(messages, "tulu", tok),
        "full": render(messages, "tulu", tok).text,
    }
    code = f"""
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path, messages = {str(trained["run"] / "checkpoint")!r}, {messages!r}
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
full = tok.apply_chat_template(messages, tokenize=False)
ids = tok(prompt, return_tensors="pt")
out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
print(json.dumps({{"prompt": prompt, "full": full, "new_tokens": out.shape[1] - ids["input_ids"].shape[1],
                  "im_pipeline_loaded": "im_pipeline" in sys.modules}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["prompt"] == expected["prompt"] and got["full"] == expected["full"]
    assert got["new_tokens"] == 3 and got["im_pipeline_loaded"] is False

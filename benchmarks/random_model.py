"""The benchmarks' one model-building helper: a randomly initialised model of a config, saved with a tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Shapes that several benchmarks share; each adds its own depth, context length and tying.
GPT2_SMALL = dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257)
LLAMA_1B_WIDTH = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8)


def save_random_model(config: Any, folder: Path, dtype: str | None = None, tokenizer: Any = None, device: str = "cpu") -> Path:
    """Initialise `config`'s model at seed 0 (in `dtype` if given, on `device`: a GPU inits a 1B model in
    seconds, a CPU in a minute) and save it in `folder` with `tokenizer` (default: the demo model's, whose
    ids cover any vocabulary of at least its size)."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from normprobe.adapter import DEMO_DIR

    torch.manual_seed(0)
    extra = {"dtype": getattr(torch, dtype)} if dtype else {}
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, **extra)
    model.save_pretrained(folder)
    del model
    (tokenizer if tokenizer is not None else PreTrainedTokenizerFast.from_pretrained(DEMO_DIR)).save_pretrained(folder)
    return Path(folder)

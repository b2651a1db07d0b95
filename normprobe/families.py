"""Supported model families and short names: plain data, importable without torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # Hugging Face config.model_type values
    final_norm: str  # dotted path of the final norm inside the HF causal-LM module
    examples: tuple[str, ...]


FAMILIES: tuple[Family, ...] = (
    Family("GPT-2", ("gpt2",), "transformer.ln_f", ("gpt2", "stanford-crfm/alias-gpt2-small-x21")),
    Family("GPT-NeoX / Pythia", ("gpt_neox",), "gpt_neox.final_layer_norm", ("EleutherAI/pythia-160m",)),
    Family("GPT-J", ("gptj",), "transformer.ln_f", ("EleutherAI/gpt-j-6b",)),
    Family("OPT", ("opt",), "model.decoder.final_layer_norm", ("facebook/opt-125m",)),
    Family("Llama", ("llama",), "model.norm", ("meta-llama/Llama-2-7b-hf",)),
    Family("Mistral", ("mistral",), "model.norm", ("mistralai/Mistral-7B-v0.1",)),
    Family("Qwen2", ("qwen2",), "model.norm", ("Qwen/Qwen2-0.5B",)),
    Family("Gemma", ("gemma",), "model.norm", ("google/gemma-2b",)),
    Family("Phi", ("phi",), "model.final_layernorm", ("microsoft/phi-2",)),
)

SHORT_NAMES: dict[str, str] = {
    "gpt2-small": "gpt2",
    "gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl",
    **{f"pythia-{s}": f"EleutherAI/pythia-{s}" for s in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")},
    **{f"pythia-{s}-deduped": f"EleutherAI/pythia-{s}-deduped" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")},
    "gpt-j-6b": "EleutherAI/gpt-j-6b",
    **{f"opt-{s}": f"facebook/opt-{s}" for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b")},
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "qwen2-0.5b": "Qwen/Qwen2-0.5B",
    "qwen2-1.5b": "Qwen/Qwen2-1.5B",
    "gemma-2b": "google/gemma-2b",
    "gemma-7b": "google/gemma-7b",
    "phi-1": "microsoft/phi-1",
    "phi-1_5": "microsoft/phi-1_5",
    "phi-2": "microsoft/phi-2",
    "stanford-gpt2-small-a": "stanford-crfm/alias-gpt2-small-x21",
}

_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def family_for(model_type: str) -> Family | None:
    return _BY_MODEL_TYPE.get(model_type)


def supported_family_names() -> str:
    return ", ".join(f.name for f in FAMILIES)

"""Fixtures: tiny models of every family built from Hugging Face config classes, no network.

Building is cheap and loading is not, so models and adapters are session-scoped.
"""

from __future__ import annotations

import os

import pytest

from .require_all import pytest_configure, pytest_runtest_makereport  # noqa: F401 - hooks: a skip fails under CI

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB = 384
# benchmarks/gpu_check.sh runs the device-relevant tests with the test models on cuda
TEST_DEVICE = os.environ.get("NORMPROBE_TEST_DEVICE", "cpu")
DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Assignment statements are used to bind names to values.",
    "A short one.",
    "Every layer of a transformer adds an update to the residual stream of each token in the window.",
    "Norms grow with depth in many models, and the first token is often an outlier.",
    "x",
]


def _train_tokenizer(bos: str | None, eos: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from normprobe.corpus import pydoc_topic_documents

    specials = [t for t in (bos, eos) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(dict.fromkeys(specials)),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(pydoc_topic_documents()[:300] + DOCS, trainer)
    kwargs = {"eos_token": eos, "unk_token": eos, "pad_token": eos}
    if bos:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def family_configs():
    """name -> (config factory, tokenizer kind). Sizes are tiny; hidden sizes are not multiples of 64."""
    from transformers import (
        GemmaConfig,
        GPT2Config,
        GPTJConfig,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        PhiConfig,
        Qwen2Config,
    )

    def ids(kind):
        return {
            "shared": dict(bos_token_id=0, eos_token_id=0),
            "split": dict(bos_token_id=0, eos_token_id=1),
            "nobos": dict(bos_token_id=None, eos_token_id=0),
        }[kind]

    return {
        "gpt2": (lambda k: GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=3, n_head=4, **ids(k)), "shared"),
        "gpt_neox": (
            lambda k: GPTNeoXConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
                use_parallel_residual=True,
                tie_word_embeddings=False,
                **ids(k),
            ),
            "shared",
        ),
        "gpt_neox_sequential": (
            lambda k: GPTNeoXConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
                use_parallel_residual=False,
                **ids(k),
            ),
            "shared",
        ),
        "gptj": (
            lambda k: GPTJConfig(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, **ids(k)),
            "shared",
        ),
        "opt": (
            lambda k: OPTConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                ffn_dim=64,
                max_position_embeddings=64,
                word_embed_proj_dim=32,
                pad_token_id=1,
                **ids(k),
            ),
            "split",
        ),
        "llama": (
            lambda k: LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=40,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
                tie_word_embeddings=False,
                **ids(k),
            ),
            "split",
        ),
        "mistral": (
            lambda k: MistralConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
                **ids(k),
            ),
            "nobos",
        ),
        "qwen2": (
            lambda k: Qwen2Config(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
                **ids(k),
            ),
            "shared",
        ),
        "gemma": (
            lambda k: GemmaConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=8,
                intermediate_size=64,
                max_position_embeddings=64,
                pad_token_id=2,
                **ids(k),
            ),
            "split",
        ),
        "phi": (
            lambda k: PhiConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
                **ids(k),
            ),
            "shared",
        ),
    }


FAMILY_NAMES = list(family_configs())


@pytest.fixture(scope="session")
def tokenizers_by_kind():
    return {
        "shared": _train_tokenizer("<|endoftext|>", "<|endoftext|>"),
        "split": _train_tokenizer("<s>", "</s>"),
        "nobos": _train_tokenizer(None, "<|endoftext|>"),
    }


def build_model_dir(path, name, tokenizers_by_kind, seed=0):
    """Save a random tiny model of family `name`, with norm weights perturbed off their init of 1 (or 0)."""
    import torch
    from transformers import AutoModelForCausalLM

    factory, kind = family_configs()[name]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(factory(kind))
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "norm" in pname or "ln" in pname.split(".")[-2:][0]:
                param.add_(0.2 * torch.randn_like(param))
    model.save_pretrained(path)
    tokenizers_by_kind[kind].save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory, tokenizers_by_kind):
    made = {}

    def get(name):
        if name not in made:
            made[name] = build_model_dir(tmp_path_factory.mktemp(name), name, tokenizers_by_kind)
        return made[name]

    return get


@pytest.fixture(scope="session")
def family_adapter(family_dir):
    from normprobe import load_model

    loaded = {}

    def get(name, dtype="float32"):
        key = (name, dtype)
        if key not in loaded:
            loaded[key] = load_model(str(family_dir(name)), device=TEST_DEVICE, dtype=dtype)
        return loaded[key]

    return get


@pytest.fixture(scope="session")
def demo_adapter():
    from normprobe import load_model

    return load_model("demo", device=TEST_DEVICE)


@pytest.fixture(scope="session")
def hf_model():
    from transformers import AutoModelForCausalLM

    loaded = {}

    def get(path, attention="eager"):
        key = (str(path), attention)
        if key not in loaded:
            loaded[key] = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention).eval()
        return loaded[key]

    return get


# NORMPROBE_CPU_REPORT=1 prints the tests that cost the most CPU (this process and its children):
# the suite's budget is CPU seconds, which a loaded machine inflates far less than wall time.
_CPU_COSTS: list[tuple[float, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not os.environ.get("NORMPROBE_CPU_REPORT"):
        yield
        return
    import resource

    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    started = cpu()
    yield
    _CPU_COSTS.append((cpu() - started, item.nodeid))


def pytest_terminal_summary(terminalreporter):
    if _CPU_COSTS:
        terminalreporter.write_line(f"CPU seconds, all tests: {sum(c for c, _ in _CPU_COSTS):.0f}; the costliest 25:")
        for seconds, nodeid in sorted(_CPU_COSTS, reverse=True)[:25]:
            terminalreporter.write_line(f"{seconds:8.1f}  {nodeid}")

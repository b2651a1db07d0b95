"""Every supported model type, on a tiny random model built from its Hugging Face config class, against HF.

For each type: resid_pre of every layer and the last block's output equal Hugging Face's hidden
states; the readout's loss equals the cross-entropy of HF's own logits; the readout's descent
gradient equals autograd through HF's own final norm, head and logit post-processing; the block
outputs add up to the block's update; and the facts `normprobe models` prints are what the model
shows. Also: every causal LM both libraries build is either supported or refused with a reason.
"""

from __future__ import annotations

import copy

import pytest
import torch

from normprobe.families import MODEL_FACTS, MODEL_TYPES, REFUSED

from .conftest import TEST_DEVICE
from .tiny_configs import VOCAB, tiny_config

REL = 1e-5  # float32 rounding of O(1) values, summed over a few thousand terms


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm().clamp_min(1e-30))


FACT_KEYS = ("block", "norm_type", "logit_postprocessing_kind", "tied_unembedding")


def word_tokenizer_in(folder):
    """A word-level tokenizer over the tiny vocabulary, saved and reloaded: the bridge wants a name_or_path."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tok.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    return word_tokenizer_in(tmp_path_factory.mktemp("word_tokenizer"))


def tiny_pair(model_type: str, tokenizer):
    """(adapter on a tiny random model, an untouched copy of the same HF model to compare with)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from normprobe.adapter import ModelAdapter

    config = tiny_config(model_type)
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # move norm weights off their init (1 or 0) so that the final norm matters
        for name, param in hf.named_parameters():
            if "norm" in name or "ln" in name.split(".")[-2]:
                param.add_(0.2 * torch.randn_like(param))
    reference = copy.deepcopy(hf)  # the reference stays on the CPU; the adapter runs on the test device
    adapter = ModelAdapter.from_hf_model(hf.to(TEST_DEVICE), tokenizer, name=f"tiny {model_type}", device=TEST_DEVICE)
    return adapter, reference


def hf_readout_input(reference, adapter):
    """The module of the reference whose input is the last residual stream: its final norm, else its head."""
    import operator

    mapping = adapter.bridge.adapter.component_mapping
    name = mapping["ln_final"].name if "ln_final" in mapping else mapping["unembed"].name
    return operator.attrgetter(name)(reference)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_model_type_matches_hugging_face(model_type, word_tokenizer):
    adapter, reference = tiny_pair(model_type, word_tokenizer)
    L = adapter.n_layers
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (2, 11), generator=generator)
    inputs, targets = ids[:, :-1], ids[:, 1:].reshape(-1)

    seen = {}
    names = [adapter.hook_name(site, l) for l in range(L) for site in adapter.sites]
    hooks = [(n, lambda act, hook, n=n: seen.__setitem__(n, act.detach().to("cpu", copy=True))) for n in names]
    on_device = inputs.to(adapter.device)
    with torch.no_grad():
        adapter.forward(on_device, torch.ones_like(on_device), hooks)

    captured = {}

    def take_input(module, args):  # the reference's own last residual stream, made a leaf to differentiate
        captured["h"] = args[0].detach().requires_grad_(True)
        return (captured["h"], *args[1:])

    handle = hf_readout_input(reference, adapter).register_forward_pre_hook(take_input)
    try:
        out = reference(inputs, output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    hidden = [out.hidden_states[l] for l in range(L)] + [captured["h"].detach()]

    # (a) the residual stream, every layer and the last block's output
    for l in range(L):
        assert _rel(seen[f"blocks.{l}.hook_resid_pre"], hidden[l]) <= REL, (model_type, "resid_pre", l)
    h_last = seen[f"blocks.{L - 1}.hook_resid_post"]
    assert _rel(h_last, hidden[L]) <= REL, (model_type, "output")

    # (b) lens loss at the output equals the loss of HF's own logits
    hf_loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]).float(), targets, reduction="none")
    flat = h_last.reshape(-1, adapter.d_model)
    torch.testing.assert_close(adapter.readout.loss(flat, targets).cpu(), hf_loss.detach(), rtol=REL, atol=REL)

    # (c) the descent gradient equals autograd through HF's own final norm, head and post-processing
    (want,) = torch.autograd.grad(hf_loss.sum(), captured["h"])
    loss, grad = (t.cpu() for t in adapter.readout.loss_and_grad(flat.to(adapter.device), targets.to(adapter.device)))
    torch.testing.assert_close(loss, hf_loss.detach(), rtol=REL, atol=REL)
    assert _rel(grad, want.reshape(-1, adapter.d_model)) <= 10 * REL, model_type

    # (d) the block outputs add up to the block's update (sequential or parallel, sandwich norms, experts),
    # or the family says in run.json that they do not
    if "attn_out" not in adapter.sites:  # a hybrid whose layers are single mixers: only the residual stream
        assert not adapter.family.outputs_add_up and "only resid_pre and resid_post" in adapter.facts()["block_outputs"]
        assert adapter.sites == ("resid_pre", "resid_post")
    for l in range(L if "attn_out" in adapter.sites else 0):
        post = seen[f"blocks.{l}.hook_resid_post"]
        parts = seen[f"blocks.{l}.hook_resid_pre"] + seen[f"blocks.{l}.hook_attn_out"] + seen[f"blocks.{l}.hook_mlp_out"]
        if adapter.family.outputs_add_up:
            assert _rel(parts, post) <= REL, (model_type, "block sum", l)
        else:
            assert _rel(parts, post) > 1e-3 and "not attn + mlp" in adapter.facts()["block_outputs"], model_type

    # (e) the facts `normprobe models` and the README print
    facts = adapter.facts()
    got = {k: facts[k] for k in FACT_KEYS}
    assert got == MODEL_FACTS[model_type], (model_type, got)

    # (f) the fast path runs take when no probe reads patterns (sdpa, HF's own norms) against HF with sdpa
    running, reason = adapter.select_attention(False)
    offers_sdpa = bool(getattr(type(reference), "_supports_sdpa", False))  # Hugging Face's own word (falcon: from 5.25)
    expected = ("sdpa", "Hugging Face's default") if offers_sdpa else ("eager", "the model offers no sdpa")
    assert (running, reason) == expected, model_type
    with torch.no_grad():
        adapter.forward(on_device, torch.ones_like(on_device), hooks)
    reference.set_attn_implementation(running)
    with torch.no_grad():
        fast = reference(inputs, output_hidden_states=True, use_cache=False).hidden_states
    for l in range(L):
        assert _rel(seen[f"blocks.{l}.hook_resid_pre"], fast[l]) <= REL, (model_type, "fast resid_pre", l)


def test_every_causal_lm_of_both_libraries_is_supported_or_refused():
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    both = {t for t, cls in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items() if cls in SUPPORTED_ARCHITECTURES}
    assert not set(MODEL_TYPES) & set(REFUSED)
    assert both - set(MODEL_TYPES) - set(REFUSED) == set(), "new in the registries: support or refuse these"
    assert set(MODEL_TYPES) <= both
    assert set(MODEL_FACTS) == set(MODEL_TYPES)


def test_docs_model_table_is_rendered_from_the_family_data():
    """The supported-models page gets its table from normprobe.families when the site is built."""
    import importlib.util
    from pathlib import Path

    from normprobe.families import REFUSED, markdown_tables

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("docs_hooks", root / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (root / "docs" / "models.md").read_text()
    rendered = hooks.on_page_markdown(page, None, None, None)
    assert markdown_tables() in rendered and hooks.MODEL_TYPES_MARKER not in rendered
    assert f"| {sorted(REFUSED)[0]} |" in rendered


@pytest.mark.parametrize("family, norm_type", [("gemma", "RMSNorm (1 + w)"), ("gpt2", "LayerNorm")])
def test_run_json_names_the_real_final_norm(family, norm_type, family_adapter, tmp_path):
    """run.json's norm_type says what the final norm computes, not the bridge's wrapper class."""
    import json

    import normprobe

    adapter = family_adapter(family)  # loaded from a folder, as a user loads a model
    hf_norm = adapter.final_norm()
    assert "Bridge" not in type(hf_norm).__name__
    result = normprobe.run(adapter, texts=["A short one."], probes=["norms"], progress=False)
    result.save(tmp_path / "run", report=False)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["norm_type"] == norm_type
    assert meta["logit_postprocessing"] == "none" and "sublayer outputs" in meta["block_outputs"]


@pytest.mark.parametrize("model_type", ["mamba", "rwkv", "openai-gpt"])
def test_refused_for_disagreeing_with_hugging_face_still_disagrees(model_type, word_tokenizer):
    """These types are refused because the bridge's resid_pre differs from HF; when a release fixes it, this fails."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    assert "differs" in REFUSED[model_type] or "disagrees" in REFUSED[model_type]
    config = tiny_config(model_type)
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config).eval()
    reference = copy.deepcopy(hf)
    bridge = TransformerBridge.boot_transformers(
        word_tokenizer.name_or_path, hf_model=hf.to(TEST_DEVICE), device=TEST_DEVICE, tokenizer=word_tokenizer
    )
    ids = torch.randint(2, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    seen = {}
    names = [f"blocks.{l}.hook_resid_pre" for l in range(bridge.cfg.n_layers)]
    hooks = [(n, lambda act, hook, n=n: seen.__setitem__(n, act.to("cpu", copy=True))) for n in names]
    on_device = ids.to(TEST_DEVICE)
    with torch.no_grad(), bridge.hooks(fwd_hooks=hooks):
        bridge(on_device, attention_mask=torch.ones_like(on_device), return_type=None)  # normprobe always passes a mask
        hidden = reference(ids, output_hidden_states=True, use_cache=False).hidden_states
    worst = max(_rel(seen[f"blocks.{l}.hook_resid_pre"], hidden[l]) for l in range(bridge.cfg.n_layers))
    assert worst > 1e-3, (model_type, worst)


@pytest.mark.parametrize(
    "model_type, reason",
    [
        ("t5", "encoder-decoder"),
        ("llava", "vision-language wrapper: load its text model"),
        ("ctrl", "TransformerLens 4 has no adapter for CTRLLMHeadModel"),
        ("gemma3", "load its text model (model_type gemma3_text)"),
        ("mamba", "state-space model"),
        ("no-such-type", "unknown to Hugging Face transformers"),
    ],
)
def test_refusal_names_its_reason(model_type, reason):
    from normprobe.adapter import check_architecture
    from normprobe.errors import NormprobeError

    with pytest.raises(NormprobeError, match="is not supported: ") as error:
        check_architecture(model_type, "model x")
    assert reason in str(error.value)


@pytest.mark.parametrize("model_type", ["gemma2", "mixtral", "cohere"])
def test_a_run_reads_out_the_model_loss(model_type, word_tokenizer):
    """End to end through the runner (BOS, windows, padding): the output row's lens loss is HF's own loss."""
    import normprobe

    adapter, reference = tiny_pair(model_type, word_tokenizer)
    generator = torch.Generator().manual_seed(2)
    docs = [[int(i) for i in torch.randint(2, VOCAB, (n,), generator=generator)] for n in (9, 4, 13)]
    updates = normprobe.run(
        adapter, texts=[" ".join(f"w{i}" for i in doc) for doc in docs], probes=["updates"], progress=False, batch_size=2
    )["updates"]
    total, count = 0.0, 0
    for doc in docs:
        ids = torch.tensor([[word_tokenizer.bos_token_id, *doc]])
        with torch.no_grad():
            logits = reference(ids, use_cache=False).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += len(doc)
    output = updates[updates.component == "output"].iloc[0]
    assert int(output["count"]) == count
    assert output["lens_loss_mean"] == pytest.approx(total / count, rel=REL)

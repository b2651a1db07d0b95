"""The tanh GELU runs in torch's fused kernel where a model writes it out op by op, checked once per model."""

from __future__ import annotations

import pytest
import torch

import normprobe
from normprobe.activation_kernel import FUSED

from .conftest import DOCS, TEST_DEVICE
from .reference import EPS32, hf_residuals, token_ids


@pytest.mark.parametrize("family", ["gpt2", "phi"])
def test_the_fused_gelu_runs_and_every_residual_matches_the_models_own(family, family_adapter, hf_model, family_dir):
    from transformers.activations import NewGELUActivation

    adapter = family_adapter(family)
    assert adapter.activation[0] == FUSED
    assert not [m for m in adapter.hf_model.modules() if isinstance(m, NewGELUActivation)]
    result = normprobe.run(adapter, texts=DOCS[:1], probes=["norms"], batch_size=1, progress=False)
    assert (result.meta["activation"], result.meta["activation_reason"]) == adapter.activation

    own = hf_model(family_dir(family))  # loaded apart: its NewGELUActivation, op by op
    assert any(isinstance(m, NewGELUActivation) for m in own.modules())
    ids = token_ids(adapter.tokenizer, DOCS[0])
    want = hf_residuals(own, ids)
    got: dict[int, torch.Tensor] = {}
    hooks = [
        (adapter.hook_name("resid_pre", l), lambda a, hook, l=l: got.__setitem__(l, a[0].detach().cpu()))
        for l in range(adapter.n_layers)
    ]
    tokens = torch.tensor([ids], device=adapter.device)
    with torch.inference_mode():
        adapter.forward(tokens, torch.ones_like(tokens), hooks)
    for layer in range(adapter.n_layers):
        # each residual is a sum of terms no larger than its norm: a few eps of it per layer of depth
        gap = (got[layer].double() - want[layer]).norm(dim=-1) / want[layer].norm(dim=-1)
        assert float(gap.max()) <= 16 * EPS32 * (layer + 1), (family, layer, float(gap.max()))


def test_the_fused_kernel_agrees_with_the_module_it_replaces_to_a_few_eps():
    from transformers.activations import FastGELUActivation, NewGELUActivation

    from normprobe.activation_kernel import ULPS, disagreement

    for module in (NewGELUActivation(), FastGELUActivation()):
        assert disagreement(module, torch.float32, "cpu") <= ULPS
    # the exact (erf) GELU is another function: up to ~5e-4 away, thousands of eps
    assert disagreement(torch.nn.GELU(), torch.float32, "cpu") > 100 * ULPS


def test_a_model_whose_gelu_disagrees_keeps_its_own(monkeypatch, family_dir):
    from transformers import activations

    monkeypatch.setattr(activations.NewGELUActivation, "forward", lambda self, x: torch.nn.functional.gelu(x))
    adapter = normprobe.load_model(str(family_dir("gpt2")), device=TEST_DEVICE)  # a fresh model: the check runs once
    kept, why = adapter.activation
    assert kept == "the model's own (NewGELUActivation)"
    assert why.startswith(f"{FUSED} differed from its NewGELUActivation by ")
    assert any(isinstance(m, activations.NewGELUActivation) for m in adapter.hf_model.modules())


def test_a_model_without_an_elementwise_gelu_is_left_alone(family_adapter):
    adapter = family_adapter("llama")
    assert adapter.activation == ("the model's own", "no elementwise tanh GELU in the model")

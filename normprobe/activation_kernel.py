"""The MLP's tanh GELU in torch's one fused kernel, where a model writes it out elementwise.

GPT-2 and its kin compute 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) in Hugging Face's
NewGELUActivation (or FastGELUActivation) as seven elementwise operations, each reading and
writing the MLP's whole width: about a tenth of a GPT-2 forward on a CPU. torch's
`gelu(approximate="tanh")` computes the same formula in one pass. The swap is checked once per
model against the module it replaces, on a grid of inputs in the model's dtype and device; where
they differ by more than float rounding, the model keeps its own module.
"""

from __future__ import annotations

from typing import Any

import torch

FUSED = "torch gelu(approximate='tanh')"
ELEMENTWISE = ("NewGELUActivation", "FastGELUActivation")  # transformers.activations: the same formula, op by op
ULPS = 8  # each side rounds a handful of operations; NewGELU's 1 + tanh cancels near x ≈ -3 to ~|x|·eps


class FusedTanhGELU(torch.nn.Module):
    """gelu(x, approximate="tanh"): the formula NewGELUActivation writes out, in one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


def elementwise_gelus(model: Any) -> list[tuple[Any, str, Any]]:
    """(parent, attribute, module) for each elementwise tanh GELU among the model's modules."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child).__name__ in ELEMENTWISE and type(child).__module__ == "transformers.activations":
                found.append((parent, name, child))
    return found


def disagreement(module: Any, dtype: Any, device: Any) -> float:
    """The largest gap between `module` and the fused kernel on [-12, 12], in units of eps·max(1, |x|)."""
    x = torch.linspace(-12.0, 12.0, 4801, dtype=torch.float32).to(device=device, dtype=dtype)
    with torch.no_grad():
        ours, theirs = module(x).float(), torch.nn.functional.gelu(x, approximate="tanh").float()
    scale = torch.finfo(dtype).eps * x.float().abs().clamp(min=1.0)
    return float(((ours - theirs).abs() / scale).max())


def fuse_tanh_gelu(model: Any) -> tuple[str, str]:
    """Swap each elementwise tanh GELU in `model` for the fused kernel; (what runs, why)."""
    found = elementwise_gelus(model)
    if not found:
        return "the model's own", "no elementwise tanh GELU in the model"
    reference = next((p for p in model.parameters() if p.device.type != "meta"), None)
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    device = reference.device if reference is not None else torch.device("cpu")
    first_of_each = {type(module).__name__: module for _, _, module in reversed(found)}
    gaps = {kind: disagreement(module, dtype, device) for kind, module in first_of_each.items()}
    kinds = ", ".join(sorted(gaps))
    kind, gap = max(gaps.items(), key=lambda item: item[1])
    if gap > ULPS:
        return f"the model's own ({kinds})", f"{FUSED} differed from its {kind} by {gap:.3g} eps on this model"
    fused = FusedTanhGELU()  # stateless: one module serves every layer
    for parent, name, _ in found:
        setattr(parent, name, fused)
    return FUSED, f"the formula of the model's {kinds}, in one kernel (within {gap:.2g} eps of it)"

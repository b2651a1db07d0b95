"""The logit readout: final norm -> (pre-head modules) -> unembedding -> the family's logit post-processing.

Float32 copies of the model's own Hugging Face modules, so lens loss and the descent gradient read
out exactly the logits the model itself produces. Post-processing comes from config fields that
Hugging Face's own forward reads (`LOGIT_FIELDS`); the model-type matrix test checks each family.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# config field -> operation, as each family's ForCausalLM.forward applies it after lm_head
LOGIT_FIELDS = {
    "final_logit_softcapping": "softcap",  # Gemma 2/3/4, VaultGemma, nanochat: c * tanh(z / c)
    "logits_soft_cap": "softcap",  # RecurrentGemma
    "logit_scale": "scale",  # Cohere: z * s
    "logits_scaling": "divide",  # Granite: z / s
}
ROW_CHUNK = 1024  # rows of the logits buffer handled at once when a temporary of their size is needed


@dataclass(frozen=True)
class LogitOp:
    kind: str  # "softcap", "scale" or "divide"
    value: float
    field: str  # the config field it comes from

    def apply_(self, z: "torch.Tensor") -> "torch.Tensor":
        if self.kind == "softcap":
            return z.div_(self.value).tanh_().mul_(self.value)
        if self.kind == "scale":
            return z.mul_(self.value)
        return z.div_(self.value)

    def slope(self, out: "torch.Tensor") -> "torch.Tensor | float":
        """d out / d z, written in terms of the output: for c·tanh(z/c) it is 1 - (out/c)²."""
        if self.kind == "softcap":
            return 1.0 - (out / self.value) ** 2
        return self.value if self.kind == "scale" else 1.0 / self.value

    def describe(self) -> str:
        """What it does, with its value: `soft-cap 30·tanh(z/30)`, `logits × 0.0625`, `logits / 4`."""
        return {"softcap": f"soft-cap {self.value:g}·tanh(z/{self.value:g})", "scale": f"logits × {self.value:g}",
                "divide": f"logits / {self.value:g}"}[self.kind]

    def kind_text(self) -> str:
        """What it does, naming the config field instead of a value: the same for every model of a type."""
        return {"softcap": "soft-cap c·tanh(z/c)", "scale": "logits × s", "divide": "logits / s"}[self.kind] + \
            f" ({self.field})"


def logit_op_from_config(config: Any, fields: "tuple[str, ...] | None" = None) -> LogitOp | None:
    """The post-processing named by the first of `fields` (default: every known field) set in the config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for field, kind in LOGIT_FIELDS.items():
        if fields is not None and field not in fields:
            continue
        value = getattr(text, field, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not (kind != "softcap" and value == 1):
            return LogitOp(kind, float(value), field)
    return None


class Readout:
    """h [N, d] -> logits, per-token loss and dloss/dh, all in float32 through the model's own modules."""

    def __init__(self, modules: list[Any], logit_op: LogitOp | None = None):
        import torch

        self.modules = [copy.deepcopy(m).float().eval().requires_grad_(False) for m in modules]
        self.logit_op = logit_op
        self._torch = torch

    def logits(self, h: "torch.Tensor") -> "torch.Tensor":
        x = h.float()
        for module in self.modules:
            x = module(x)
        return self.logit_op.apply_(x) if self.logit_op else x

    def loss_and_grad(self, h: "torch.Tensor", targets: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """Per-token cross-entropy of `targets` read out from h [N, d], and dCE/dh [N, d], in float32.

        Autograd carries the gradient through the norm and any pre-head module; the unembedding's
        and the post-processing's part, ((softmax - onehot) · f'(z)) @ W_U, is written out so that
        only one [tokens x vocab] buffer exists, reused in place.
        """
        torch = self._torch
        head, op = self.modules[-1], self.logit_op
        with torch.inference_mode(False), torch.enable_grad():
            x = h.detach().float().clone().requires_grad_(True)
            y = x
            for module in self.modules[:-1]:
                y = module(y)
        with torch.inference_mode(False), torch.no_grad():
            targets = targets.clone()
            logits = torch.nn.functional.linear(y.detach(), head.weight, getattr(head, "bias", None))
            if op:
                op.apply_(logits)
            lse = torch.logsumexp(logits, dim=-1)
            loss = lse - logits.gather(1, targets[:, None]).squeeze(1)
            for start in range(0, len(targets), ROW_CHUNK):  # logits become dCE/dz row block by row block
                rows = logits[start : start + ROW_CHUNK]
                slope = op.slope(rows) if op else None
                rows.sub_(lse[start : start + ROW_CHUNK, None]).exp_()
                rows[torch.arange(len(rows), device=rows.device), targets[start : start + ROW_CHUNK]] -= 1.0
                if slope is not None:
                    rows.mul_(slope)
            grad_y = logits @ head.weight
            del logits
        if x is y:  # no norm before the unembedding
            return loss, grad_y
        with torch.inference_mode(False):
            (grad,) = torch.autograd.grad(y, x, grad_outputs=grad_y)
        return loss, grad.detach()

    def loss(self, h: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        return self._torch.nn.functional.cross_entropy(self.logits(h), targets, reduction="none")


def describe_norm(norm: Any, d_model: int) -> str:
    """Name a final norm by what it computes, not by its class: LayerNorm, RMSNorm, (1 + w) variants, none."""
    import torch

    if norm is None:
        return "none"
    module = copy.deepcopy(norm).double().eval()
    generator = torch.Generator().manual_seed(0)
    x = 10 * torch.randn(3, d_model, generator=generator, dtype=torch.float64)  # eps is negligible at this scale
    with torch.no_grad():
        out = module(x)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    centred = x - x.mean(-1, keepdim=True)
    shapes = {"LayerNorm": centred / centred.pow(2).mean(-1, keepdim=True).sqrt(),
              "RMSNorm": x / x.pow(2).mean(-1, keepdim=True).sqrt()}
    scales = {"": weight, " (1 + w)": None if weight is None else 1 + weight} if weight is not None else {" without weight": 1}
    for shape_name, normed in shapes.items():
        for scale_name, scale in scales.items():
            want = normed * scale + (bias if bias is not None else 0)
            if want.shape == out.shape and torch.allclose(out, want, rtol=1e-6, atol=1e-6):
                return shape_name + scale_name
    return type(norm).__name__

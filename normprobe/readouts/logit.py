"""The logit readout: the logit lens, the model's own final norm and unembedding read at every layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class LogitReadout:
    """The logit lens at every layer: the model's final norm and unembedding (built on first use)."""

    kind = "logit"

    def __init__(self, model):
        self._model = model

    @property
    def base(self):
        return self._model.readout

    def logits(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        return self.base.logits(h)

    def loss(self, h: torch.Tensor, targets: torch.Tensor, layer: int) -> torch.Tensor:
        return self.base.loss(h, targets)

    def loss_and_grad(self, h: torch.Tensor, targets: torch.Tensor, layer: int):
        return self.base.loss_and_grad(h, targets)

    def line_losses(self, h, deltas, alphas, targets, layer: int) -> torch.Tensor:
        """Loss at h + αΔ for every Δ and α: [len(deltas), len(alphas), N] (see Readout.line_losses)."""
        return self.base.line_losses(h, deltas, alphas, targets)

    def loss_grad_and_steps(self, h, deltas, targets, layer: int):
        """(loss at h, dloss/dh, [loss at h + Δ for each Δ]) from shared products."""
        return self.base.loss_grad_and_steps(h, deltas, targets)

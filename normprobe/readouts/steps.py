"""Step statistics: how a residual update Δ meets the loss gradient g, shared by the probes and the trace."""

from __future__ import annotations

import torch


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine; NaN where either vector is zero (counted apart, never averaged)."""
    denom = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return torch.where(denom > 0, (a * b).sum(-1) / denom, torch.full_like(denom, float("nan")))


def step_statistics(delta: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token alignment of an update with the descent direction -grad.

    descent_cos = cos(Δ, -g); step_eta = the least-squares η in Δ ≈ -η g; step_r2 = the share of
    ||Δ||² that -η g explains, which for the least-squares η is cos².
    """
    dot = (delta * grad).sum(-1)
    grad_sq = (grad * grad).sum(-1)
    cos = _cos(delta, -grad)
    eta = torch.where(grad_sq > 0, -dot / grad_sq, torch.full_like(dot, float("nan")))
    return {"descent_cos": cos, "step_eta": eta, "step_r2": cos * cos}

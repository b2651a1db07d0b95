"""Per-token statistics of a readout's distribution against the model's own output, from logits.

The `lens` probe and `trace` read every layer through a readout; these are the element-wise numerics
they share. Each works on a block of rows [n, V] of float32 logits in place, with one max, one
exp and two row dot products over the vocabulary besides the rank's comparison: no log-softmax
copy is ever made. With z' = z - max and s = Σ exp(z'):
loss = max + log s - z_target, entropy = log s - Σ exp(z') z' / s, and against the output's p,
KL(p ‖ readout) = Σ p log p - Σ p z' + log s · Σ p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

METRICS = ("lens_loss", "kl", "entropy", "target_rank", "target_log_rank", "target_top1", "top1_agree")


@dataclass
class Reference:
    """The output distribution of a block of rows: p [n, V], Σ p log p [n], Σ p [n] and its argmax [n]."""

    p: torch.Tensor
    neg_entropy: torch.Tensor
    mass: torch.Tensor
    top: torch.Tensor


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_v a[i, v] b[i, v] for every row, with no [n, V] temporary (a batched matrix-vector product)."""
    import torch

    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def block_statistics(
    z: torch.Tensor, targets: torch.Tensor, reference: Reference | None, buffer: torch.Tensor
) -> tuple[dict[str, torch.Tensor], Reference]:
    """Statistics of logits z [n, V] (overwritten) for next tokens `targets` [n], against `reference`.

    Returns the per-token metrics (float32 [n] each; KL and top-1 agreement only with a reference) and
    this block's own distribution as a Reference, held in `buffer` ([n, V], float32), for later blocks.
    """
    import torch

    top_value, top = z.max(dim=-1)
    z_t = z.gather(1, targets[:, None])
    # rank 1: no logit strictly above the target's; counted in float (a bool count reduces through int64, slowly)
    rank = torch.gt(z, z_t, out=buffer).sum(-1).add_(1)
    # shifted by the max even where exp(z) could not overflow: entropy and KL are differences of terms of
    # the logits' size, which the shift keeps small (unshifted, a small KL lost 1e-3 of itself in a test)
    z.sub_(top_value[:, None])
    e = torch.exp(z, out=buffer)
    s = e.sum(-1)
    log_s = s.log()
    spread = _row_dot(e, z)  # Σ exp(z') z'
    out = {
        "lens_loss": top_value + log_s - z_t[:, 0],
        "entropy": log_s - spread / s,
        "target_rank": rank.float(),
        "target_log_rank": rank.double().log().float(),
        "target_top1": (rank == 1).float(),
    }
    if reference is not None:
        out["kl"] = reference.neg_entropy - _row_dot(reference.p, z) + log_s * reference.mass
        out["top1_agree"] = (top == reference.top).float()
    unread = ~torch.isfinite(out["lens_loss"])  # a non-finite row: its comparisons mean nothing either
    if bool(unread.any()):
        for name in ("target_rank", "target_log_rank", "target_top1", "top1_agree"):
            if name in out:
                out[name] = out[name].masked_fill(unread, float("nan"))
    p = e.div_(s[:, None])
    own = Reference(p, spread / s - log_s, torch.ones_like(s), top)  # Σ p log p = Σ p z' - log s
    return out, own

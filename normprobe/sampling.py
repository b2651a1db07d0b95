"""`--readout-sample`: which tokens the readout statistics see, a seeded function of each token's document.

A token is kept when a hash of (seed, document index, position in its window, token, next token) falls
below the fraction. Nothing in it depends on batch order, shard or resume, so a single run, a resumed
run and merged shards sample the same tokens. Norms and the forward still see every token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SEED = 0x5EED
_MASK32 = 0xFFFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32-style), on int64 tensors holding values below 2³²."""
    x = ((x >> 16) ^ x) * 0x7FEB352D & _MASK32
    x = ((x >> 15) ^ x) * 0x846CA68B & _MASK32
    return (x >> 16) ^ x


def check_fraction(fraction: float) -> None:
    from .errors import NormprobeError

    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise NormprobeError(f"--readout-sample must be a fraction in (0, 1], e.g. 0.1 (got {fraction})")
    if fraction < 1 and int(fraction * 2**32) == 0:  # readout_mask keeps a token when its 32-bit hash < fraction x 2^32
        raise NormprobeError(
            f"--readout-sample {fraction:g} samples no token at all: a token is kept when its 32-bit hash falls below "
            f"fraction x 2^32, so the smallest fraction that keeps any is 2^-32 (about 2.3e-10)"
        )


def readout_mask(batch, fraction: float) -> torch.Tensor:
    """[B, T] bool: tokens with a next token that the readout statistics read (all of them at fraction 1)."""
    import torch

    if fraction >= 1:
        return batch.has_next
    docs = torch.as_tensor(batch.doc_indices, dtype=torch.int64, device=batch.tokens.device)[:, None]
    key = _mix(torch.full_like(batch.tokens, SEED) ^ (docs & _MASK32))
    for part in (batch.positions, batch.tokens, batch.next_tokens):
        key = _mix(key ^ (part.to(torch.int64) & _MASK32))
    return batch.has_next & (key < int(fraction * 2**32))

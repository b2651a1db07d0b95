"""The Poisson bootstrap over documents: B replicate weights per document, known before its first window.

A document's weights are Poisson(1) draws from a generator seeded by a hash of the document's text
(sha256 of its UTF-8 bytes), so they depend on the document alone, never on its order, its shard, its
rank or a resume. Every window of a document carries the same weight row: a document cut into
several windows is one unit. Statistics keep B weighted sums beside their plain sums
(`stats.ReplicateSums`); merging stays a sum, so a single run, a resumed run, a shard merge and a
torchrun run give the same intervals for the same documents.

An optional unit (`RunOptions.bootstrap_unit`, a string such as "random-init seed 2") multiplies every
document's weights by one more Poisson(1) vector seeded by that string: a baseline that merges
several random initialisations makes each seed a bootstrap unit as well as each document.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_REPLICATES = 200
CI_LEVEL = 0.95


def text_seed(text: str) -> int:
    """A 64-bit seed from sha256 of the text (undecodable surrogates kept, so every str hashes)."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little")


def poisson_weights(seed: int, replicates: int) -> np.ndarray:
    """Poisson(1) weights [replicates], float64, from numpy's PCG64 seeded by `seed`."""
    return np.random.default_rng(seed).poisson(1.0, replicates).astype(np.float64)


class ReplicateWeights:
    """Per-window weight rows for batches: the document's Poisson(1) vector times the unit's, if any."""

    def __init__(self, replicates: int = DEFAULT_REPLICATES, unit: str | None = None):
        self.replicates = replicates
        self.unit = unit
        self._unit_weights = poisson_weights(text_seed(unit), replicates) if unit is not None else None
        self._cache: dict[int, np.ndarray] = {}  # the last few documents: their windows come together

    def for_document(self, seed: int) -> np.ndarray:
        found = self._cache.get(seed)
        if found is None:
            found = poisson_weights(seed, self.replicates)
            if self._unit_weights is not None:
                found = found * self._unit_weights
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[seed] = found
        return found

    def for_windows(self, seeds: Sequence[int], device: str | torch.device = "cpu") -> torch.Tensor:
        """[n_windows, B] float64 weights for windows whose documents have these seeds."""
        import torch

        from .memory import to_device

        rows = np.stack([self.for_document(int(s)) for s in seeds]) if len(seeds) else np.zeros((0, self.replicates))
        return to_device(torch.as_tensor(rows, dtype=torch.float64), device)


def percentile_interval(values: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The percentile interval of replicate estimates (NaN replicates, e.g. a weight of 0, left out)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)

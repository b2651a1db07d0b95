"""Streaming, mergeable statistics over groups: count, sum, squared deviations, min, max.

Sums are float64, and the spread is kept as the sum of squared deviations from the mean
(Chan et al.'s pairwise update), so a constant value has std exactly 0 and merging
shards or ranks in any order agrees to ~1e-12. Values that are not finite are counted
apart and never enter a statistic.
"""

from __future__ import annotations

from typing import Any

import torch

_FIELDS = ("count", "total", "m2", "minimum", "maximum", "nonfinite")


def mean_or_nan(total: Any, count: Any) -> Any:
    """total / count, NaN where count is 0: every probe's table builder divides through this (torch or numpy)."""
    if isinstance(total, torch.Tensor):
        return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))
    import numpy as np

    total, count = np.asarray(total, dtype=np.float64), np.asarray(count, dtype=np.float64)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def nonfinite_layers(tables: dict[str, Any]) -> dict[str, list[int]]:
    """Table -> the layers where no value was finite though some were read (count 0, n_nonfinite > 0 in
    every row of the layer): a readout that overflowed there, say. run.json records them."""
    found = {}
    for name, frame in tables.items():
        if not {"layer", "count", "n_nonfinite"} <= set(getattr(frame, "columns", ())) or not len(frame):
            continue
        sums = frame.groupby("layer")[["count", "n_nonfinite"]].sum()
        layers = sums.index[(sums["count"] == 0) & (sums["n_nonfinite"] > 0)]
        if len(layers):
            found[name] = sorted(int(l) for l in layers)
    return found


class GroupedMoments:
    """Moments of a value per group index in [0, n_groups)."""

    def __init__(self, n_groups: int, device: str | torch.device = "cpu", track_extremes: bool = True):
        self.n_groups = n_groups
        self.track_extremes = track_extremes
        f64 = dict(dtype=torch.float64, device=device)
        self.count = torch.zeros(n_groups, **f64)
        self.total = torch.zeros(n_groups, **f64)
        self.m2 = torch.zeros(n_groups, **f64)
        self.nonfinite = torch.zeros(n_groups, **f64)
        self.minimum: Any = torch.full((n_groups,), float("inf"), **f64) if track_extremes else None
        self.maximum: Any = torch.full((n_groups,), float("-inf"), **f64) if track_extremes else None

    def add(self, groups: torch.Tensor, values: torch.Tensor) -> None:
        """Add values [N] (any float dtype) to their groups [N] (int64).

        Work is proportional to the groups this batch touches, not to n_groups, so a
        per-token-type table over a 150k vocabulary costs no more than a small one.
        """
        groups = groups.to(self.count.device)
        values = values.to(self.count.device, torch.float64)
        if values.is_cuda:
            return self._add_on_gpu(groups, values)
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            self.nonfinite.index_add_(0, groups[~finite], torch.ones_like(values[~finite]))
            groups, values = groups[finite], values[finite]
        if groups.numel() == 0:
            return
        touched, slot = torch.unique(groups, return_inverse=True)
        count = torch.zeros(len(touched), dtype=torch.float64, device=values.device).index_add_(0, slot, torch.ones_like(values))
        total = torch.zeros_like(count).index_add_(0, slot, values)
        deviation = values - (total / count)[slot]
        m2 = torch.zeros_like(count).index_add_(0, slot, deviation * deviation)
        self._combine(count, total, m2, touched)
        if self.track_extremes:
            self.minimum.scatter_reduce_(0, groups, values, reduce="amin")
            self.maximum.scatter_reduce_(0, groups, values, reduce="amax")

    def _add_on_gpu(self, groups: torch.Tensor, values: torch.Tensor) -> None:
        """`add` over every group, non-finite values weighted 0: no step waits for the host (`torch.unique`,
        a boolean selection and `bool()` would, every batch). Untouched groups add zeros: the same sums."""
        if groups.numel() == 0:
            return
        finite = torch.isfinite(values)
        self.nonfinite.index_add_(0, groups, (~finite).to(torch.float64))
        zero = torch.zeros_like(values)
        count = torch.zeros_like(self.count).index_add_(0, groups, finite.to(torch.float64))
        total = torch.zeros_like(self.total).index_add_(0, groups, torch.where(finite, values, zero))
        deviation = torch.where(finite, values - (total / count.clamp(min=1))[groups], zero)
        m2 = torch.zeros_like(self.m2).index_add_(0, groups, deviation * deviation)
        self._combine(count, total, m2)
        if self.track_extremes:
            self.minimum.scatter_reduce_(0, groups, torch.where(finite, values, zero + float("inf")), reduce="amin")
            self.maximum.scatter_reduce_(0, groups, torch.where(finite, values, zero - float("inf")), reduce="amax")

    def _combine(self, count: torch.Tensor, total: torch.Tensor, m2: torch.Tensor, where: torch.Tensor | None = None) -> None:
        """Chan et al.'s pairwise update of (count, total, m2), on all groups or on the `where` subset."""
        index = slice(None) if where is None else where
        old_count, old_total = self.count[index], self.total[index]
        n = old_count + count
        delta = total / count.clamp(min=1) - old_total / old_count.clamp(min=1)
        cross = torch.where(n > 0, delta * delta * old_count * count / n.clamp(min=1), torch.zeros_like(n))
        self.m2[index] = self.m2[index] + m2 + cross
        self.count[index] = n
        self.total[index] = old_total + total

    def merge(self, other: GroupedMoments, where: torch.Tensor | None = None) -> None:
        """Add another's moments: group for group, or its group i into this one's group where[i]."""
        wanted = self.n_groups if where is None else len(where)
        if other.n_groups != wanted:
            raise ValueError(f"cannot merge moments of {other.n_groups} groups into {wanted}")
        device = self.count.device
        index = None if where is None else where.to(device)
        self._combine(other.count.to(device), other.total.to(device), other.m2.to(device), index)
        if index is None:
            self.nonfinite += other.nonfinite.to(device)
        else:
            self.nonfinite.index_add_(0, index, other.nonfinite.to(device))
        if self.track_extremes and index is None:
            self.minimum = torch.minimum(self.minimum, other.minimum.to(device))
            self.maximum = torch.maximum(self.maximum, other.maximum.to(device))
        elif self.track_extremes:
            self.minimum.scatter_reduce_(0, index, other.minimum.to(device), reduce="amin")
            self.maximum.scatter_reduce_(0, index, other.maximum.to(device), reduce="amax")

    def grow(self, n_groups: int) -> None:
        """Room for n_groups groups; the new ones are empty."""
        extra = n_groups - self.n_groups
        if extra <= 0:
            return
        fills = {"count": 0.0, "total": 0.0, "m2": 0.0, "nonfinite": 0.0, "minimum": float("inf"), "maximum": float("-inf")}
        for name, fill in fills.items():
            current = getattr(self, name)
            if current is not None:
                setattr(self, name, torch.cat([current, torch.full((extra,), fill, dtype=current.dtype, device=current.device)]))
        self.n_groups = n_groups

    def counts(self) -> torch.Tensor:
        """How many finite values each group holds, as integers (kept as float64 for the merge arithmetic)."""
        return self.count.round().to(torch.int64)

    def mean(self, where: torch.Tensor | None = None) -> torch.Tensor:
        """The mean per group (or of the groups `where` selects); NaN for a group with no finite value."""
        index = slice(None) if where is None else where
        return mean_or_nan(self.total[index], self.count[index])

    def std(self, where: torch.Tensor | None = None) -> torch.Tensor:
        """Population standard deviation (0 for a single value, NaN for none)."""
        index = slice(None) if where is None else where
        return mean_or_nan(self.m2[index], self.count[index]).clamp(min=0).sqrt()

    def state_dict(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in _FIELDS if getattr(self, k) is not None}
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            current = getattr(self, key)
            if current is None or current.shape != value.shape:
                raise ValueError(f"state for {key!r} does not fit these moments")
            setattr(self, key, value.to(current.device, torch.float64).clone())


class ReplicateSums:
    """Bootstrap replicates of a mean per group: B weighted sums of the values and of the weights.

    Each value belongs to a window of the batch, and every window carries a row of B replicate weights
    (its document's, see normprobe.bootstrap). Replicate b's mean of group g is
    sum_i w[window_i, b] x_i / sum_i w[window_i, b]. Values are first summed per (window, group),
    then multiplied by the weight matrix, so the work is tokens + windows x groups x B, not tokens x B.
    Merging is a sum. Values that are not finite never enter (as in GroupedMoments).
    """

    def __init__(self, n_groups: int, replicates: int, device: str | torch.device = "cpu"):
        self.n_groups, self.replicates = n_groups, replicates
        f64 = dict(dtype=torch.float64, device=device)
        self.weight = torch.zeros((n_groups, replicates), **f64)
        self.total = torch.zeros((n_groups, replicates), **f64)

    def add(self, groups: torch.Tensor, values: torch.Tensor, windows: torch.Tensor, window_weights: torch.Tensor | None) -> None:
        """Add values [N] to groups [N]; windows [N] indexes the rows of window_weights [n_windows, B].

        Without weights (a probe driven by hand, outside the runner) nothing is added.
        """
        if window_weights is None:
            return
        device = self.total.device
        groups, windows = groups.to(device).reshape(-1), windows.to(device).reshape(-1)
        values = values.to(device, torch.float64).reshape(-1)
        finite = torch.isfinite(values)
        if values.is_cuda:
            return self._add_on_gpu(groups, values, windows, window_weights.to(device, torch.float64))
        if not bool(finite.all()):
            groups, values, windows = groups[finite], values[finite], windows[finite]
        if groups.numel() == 0:
            return
        weights = window_weights.to(device, torch.float64)
        touched, slot = torch.unique(groups, return_inverse=True)
        n_windows = weights.shape[0]
        cell = windows * len(touched) + slot
        sums = torch.zeros(n_windows * len(touched), dtype=torch.float64, device=device).index_add_(0, cell, values)
        counts = torch.zeros_like(sums).index_add_(0, cell, torch.ones_like(values))
        self.total[touched] += sums.view(n_windows, -1).T @ weights
        self.weight[touched] += counts.view(n_windows, -1).T @ weights

    def _add_on_gpu(self, groups: torch.Tensor, values: torch.Tensor, windows: torch.Tensor, weights: torch.Tensor) -> None:
        """`add` over every (window, group), non-finite values weighted 0: nothing waits for the host."""
        finite = torch.isfinite(values)
        cell = windows * self.n_groups + groups
        sums = torch.zeros(weights.shape[0] * self.n_groups, dtype=torch.float64, device=values.device)
        sums.index_add_(0, cell, torch.where(finite, values, torch.zeros_like(values)))
        counts = torch.zeros_like(sums).index_add_(0, cell, finite.to(torch.float64))
        self.total += sums.view(weights.shape[0], -1).T @ weights
        self.weight += counts.view(weights.shape[0], -1).T @ weights

    def merge(self, other: ReplicateSums) -> None:
        if other.weight.shape != self.weight.shape:
            raise ValueError(f"cannot merge replicates of shape {tuple(other.weight.shape)} into {tuple(self.weight.shape)}")
        self.weight += other.weight.to(self.weight.device)
        self.total += other.total.to(self.total.device)

    def means(self) -> torch.Tensor:
        """[n_groups, B] replicate means; NaN where a replicate gave the group no weight."""
        return torch.where(self.weight > 0, self.total / self.weight.clamp(min=1e-300), torch.full_like(self.total, float("nan")))

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight.detach().cpu().clone(), "total": self.total.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("weight", "total"):
            value = state[key]
            if value.shape != getattr(self, key).shape:
                raise ValueError(f"state for {key!r} does not fit these replicates")
            setattr(self, key, value.to(self.total.device, torch.float64).clone())


def token_windows(mask: torch.Tensor) -> torch.Tensor:
    """For a [n_windows, T] boolean selection, the window (row) index of each selected token, in order."""
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    return rows[mask]

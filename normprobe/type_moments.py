"""Moments of a value per (token type, slot), held only for the types a run has seen.

A table dense over the vocabulary holds slots x vocabulary float64 sums whatever the corpus: 70 MB
for a 128k vocabulary over 17 layers, most of it zeros on a short corpus. This one gives each type a
row when it is first seen (rows in the order seen, growing by doubling), so it holds what was read.
On CUDA it stays dense (row = type id): admitting a new type would make every step wait for the host.
"""

from __future__ import annotations

from typing import Any

import torch

from .stats import GroupedMoments

_ARRAYS = ("count", "total", "m2", "nonfinite")


class TokenTypeMoments:
    """Streaming moments of a value per (token type, slot); group = row * n_slots + slot."""

    def __init__(self, n_slots: int, n_types: int, device: str | torch.device = "cpu", dense: bool | None = None):
        self.n_slots, self.n_types = n_slots, n_types
        self.dense = torch.device(device).type == "cuda" if dense is None else dense
        self._device = device
        self._empty()

    def _empty(self) -> None:
        device, n_types = self._device, self.n_types
        if self.dense:
            self.moments = GroupedMoments(n_types * self.n_slots, device, track_extremes=False)
            self._row_of = None
            self._types = torch.arange(n_types, device=device)
        else:
            self.moments = GroupedMoments(0, device, track_extremes=False)
            self._row_of = torch.full((n_types,), -1, dtype=torch.int64, device=device)  # type -> row; -1 unseen
            self._types = torch.zeros(0, dtype=torch.int64, device=device)  # row -> type

    def add(self, types: torch.Tensor, values: torch.Tensor) -> None:
        """Add values [n_slots, N] of the tokens of types [N] (int64)."""
        rows = self._rows(types.to(self.moments.count.device))
        slots = torch.arange(self.n_slots, device=rows.device)[:, None]
        self.moments.add((rows[None, :] * self.n_slots + slots).reshape(-1), values.reshape(-1))

    def _rows(self, types: torch.Tensor) -> torch.Tensor:
        """Each type's row, giving unseen types new rows."""
        if self._row_of is None:
            return types
        if types.numel() and (types.min() < 0 or types.max() >= self.n_types):
            raise ValueError(f"token type outside [0, {self.n_types})")
        unseen = torch.unique(types[self._row_of[types] < 0])
        if unseen.numel():
            start = len(self._types)
            self._row_of[unseen] = torch.arange(start, start + len(unseen), device=types.device)
            self._types = torch.cat([self._types, unseen])
            needed = len(self._types) * self.n_slots
            if needed > self.moments.n_groups:
                self.moments.grow(max(needed, 2 * self.moments.n_groups))
        return self._row_of[types]

    def cells(self) -> dict[str, torch.Tensor]:
        """Every (slot, type) with a finite value: slot, type, count, mean and std, by slot then type id."""
        m = self.moments
        cells = torch.nonzero(m.count > 0).squeeze(1)
        slots, types = cells % self.n_slots, self._types[cells // self.n_slots]
        order = torch.argsort(slots * self.n_types + types)
        cells = cells[order]
        return {
            "slot": slots[order],
            "type": types[order],
            "count": m.count[cells],
            "mean": m.mean(cells),
            "std": m.std(cells),
        }

    def merge(self, other: TokenTypeMoments) -> None:
        self._merge_rows(other.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """The rows that hold anything: their types, and their cells' count, total, m2 and non-finite count."""
        m, n = self.moments, self.n_slots
        used = len(self._types) * n
        arrays = {k: getattr(m, k)[:used].view(-1, n) for k in _ARRAYS}
        active = torch.nonzero(((arrays["count"] > 0) | (arrays["nonfinite"] > 0)).any(dim=1)).squeeze(1)
        state = {k: v[active].reshape(-1).detach().cpu().clone() for k, v in arrays.items()}
        return {"types": self._types[active].detach().cpu().clone(), **state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """This state in place of the moments so far; also reads the dense layout (group = slot * n_types + type)."""
        if "types" not in state:
            state = self._from_dense(state)
        self._empty()
        self._merge_rows(state)

    def _from_dense(self, state: dict[str, Any]) -> dict[str, Any]:
        size = self.n_slots * self.n_types
        if any(k not in state or tuple(state[k].shape) != (size,) for k in _ARRAYS):
            raise ValueError("state for the per-token-type moments does not fit them")
        arrays = {k: state[k].to(torch.float64).view(self.n_slots, self.n_types).T for k in _ARRAYS}
        active = torch.nonzero(((arrays["count"] > 0) | (arrays["nonfinite"] > 0)).any(dim=1)).squeeze(1)
        return {"types": active, **{k: v[active].reshape(-1) for k, v in arrays.items()}}

    def _merge_rows(self, state: dict[str, Any]) -> None:
        types = state["types"].to(torch.int64)
        size = len(types) * self.n_slots
        if types.dim() != 1 or any(k not in state or tuple(state[k].shape) != (size,) for k in _ARRAYS):
            raise ValueError("state for the per-token-type moments does not fit them")
        if len(types) == 0:
            return
        if len(torch.unique(types)) != len(types):
            raise ValueError("state for the per-token-type moments names a token type twice")
        device = self.moments.count.device
        rows = self._rows(types.to(device))
        where = (rows[:, None] * self.n_slots + torch.arange(self.n_slots, device=device)).reshape(-1)
        theirs = GroupedMoments(size, device, track_extremes=False)
        for k in _ARRAYS:
            setattr(theirs, k, state[k].to(device, torch.float64))
        self.moments.merge(theirs, where)

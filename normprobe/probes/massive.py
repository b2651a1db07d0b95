"""`massive`: where the norm lives. Massive activations, top dimensions and attention sinks.

In many trained LMs a few fixed residual dimensions hold values thousands of times the median
at the first token (Sun et al. 2024, "Massive Activations"), and heads park attention there
(Xiao et al. 2023, "Attention Sinks"). Per token this probe keeps max |h_i|, its dimension, the
median |h_i| (numpy's: the mean of the two middle values when d_model is even) and ||h||;
per layer the squared norm per dimension; per head the attention weight on key position 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..bootstrap import DEFAULT_REPLICATES
from ..probe import Probe
from ..stats import GroupedMoments, ReplicateSums, mean_or_nan, token_windows
from . import DEFAULT_MASSIVE_RATIO
from .norms import spearman

TOP_RANKS = 8
MAX_DIMS_KEPT = 16  # dimensions counted per (site, layer, position) for max_dim_mode: exact up to 16 distinct
GROUPS = ("position0", "rest")


class SparseSums:
    """Float64 sums of value columns per int64 key, holding only the keys seen.

    Exact for counts, merges in any order, and its size is the number of distinct keys, never the
    size of the key space (here (layer, token id) of the tokens that crossed the ratio).
    """

    def __init__(self, n_columns: int, device: str | torch.device = "cpu"):
        self.keys = torch.zeros(0, dtype=torch.int64, device=device)
        self.sums = torch.zeros((0, n_columns), dtype=torch.float64, device=device)

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add values [N, n_columns] to their keys [N]."""
        if keys.numel() == 0:
            return
        keys = torch.cat([self.keys, keys.to(self.keys.device, torch.int64)])
        values = torch.cat([self.sums, values.to(self.sums.device, torch.float64)])
        self.keys, slot = torch.unique(keys, return_inverse=True)
        self.sums = torch.zeros((len(self.keys), values.shape[1]), dtype=torch.float64, device=values.device).index_add_(
            0, slot, values
        )

    def merge(self, other: SparseSums) -> None:
        self.add(other.keys, other.sums)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys.detach().cpu().clone(), "sums": self.sums.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["sums"].shape[1:] != self.sums.shape[1:] or len(state["keys"]) != len(state["sums"]):
            raise ValueError("state does not fit these sums")
        self.keys = state["keys"].to(self.keys.device, torch.int64).clone()
        self.sums = state["sums"].to(self.sums.device, torch.float64).clone()


class TopCounts:
    """Counts of integer values per cell, keeping at most `keep` values per cell (Misra-Gries).

    Memory is at most cells x keep entries, whatever d_model or the corpus. While a cell has seen at
    most `keep` distinct values its counts are exact and merge exactly in any order. Past that, each
    merge subtracts the (keep+1)-th largest count from all of the cell's counts and drops those left
    at zero (Agarwal et al. 2012, "Mergeable summaries"), so a count is low by at most
    n_cell / (keep + 1), and a value holding more than that share of the cell is never lost.
    """

    def __init__(self, n_values: int, keep: int, device: str | torch.device = "cpu"):
        self.n_values, self.keep = n_values, keep
        self.keys = torch.zeros(0, dtype=torch.int64, device=device)  # cell * n_values + value
        self.counts = torch.zeros(0, dtype=torch.float64, device=device)

    def add(self, keys: torch.Tensor, counts: torch.Tensor) -> None:
        if keys.numel() == 0:
            return
        keys = torch.cat([self.keys, keys.to(self.keys.device, torch.int64)])
        counts = torch.cat([self.counts, counts.to(self.counts.device, torch.float64)])
        keys, slot = torch.unique(keys, return_inverse=True)
        counts = torch.zeros(len(keys), dtype=torch.float64, device=keys.device).index_add_(0, slot, counts)
        cells, cell = torch.unique(keys // self.n_values, return_inverse=True)
        # rank within the cell by count, largest first; ties do not matter, equal counts share a fate
        order = torch.sort(counts, descending=True, stable=True).indices
        order = order[torch.sort(cell[order], stable=True).indices]
        first = torch.searchsorted(cell[order], torch.arange(len(cells), device=keys.device))
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=keys.device) - first[cell[order]]
        floor = torch.zeros(len(cells), dtype=torch.float64, device=keys.device)
        at_floor = rank == self.keep
        floor[cell[at_floor]] = counts[at_floor]
        counts = counts - floor[cell]
        kept = counts > 0
        self.keys, self.counts = keys[kept], counts[kept]

    def merge(self, other: TopCounts) -> None:
        self.add(other.keys, other.counts)

    def mode(self, n_cells: int) -> np.ndarray:
        """The value with the largest count per cell (ties: the lowest value); -1 where the cell is empty."""
        keys, counts = self.keys.cpu().numpy(), self.counts.cpu().numpy()
        cell, value = keys // self.n_values, keys % self.n_values
        order = np.lexsort((value, -counts, cell))
        first = order[np.r_[True, cell[order][1:] != cell[order][:-1]]] if len(order) else order
        mode = np.full(n_cells, -1, dtype=np.int64)
        mode[cell[first]] = value[first]
        return mode

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys.detach().cpu().clone(), "counts": self.counts.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if len(state["keys"]) != len(state["counts"]):
            raise ValueError("state does not fit these counts")
        self.keys = state["keys"].to(self.keys.device, torch.int64).clone()
        self.counts = state["counts"].to(self.counts.device, torch.float64).clone()


def numpy_median(values: torch.Tensor) -> torch.Tensor:
    """Median over the last dimension as numpy takes it: the mean of the two middle values when even."""
    d = values.shape[-1]
    lower = values.kthvalue((d - 1) // 2 + 1, dim=-1).values
    if d % 2:
        return lower
    return (lower + values.kthvalue(d // 2 + 1, dim=-1).values) / 2


class MassiveProbe(Probe):
    name = "massive"
    description = "massive activations (max/median of |h_i|), top dimensions' share of ||h||², attention sink mass per head"

    def __init__(self, layers: list[int] | None = None, massive_ratio: float = DEFAULT_MASSIVE_RATIO, **options: Any):
        super().__init__(layers=layers, massive_ratio=massive_ratio, **options)
        self.massive_ratio = float(massive_ratio)

    def setup(self, model, seq_len: int) -> None:
        layers = self.selected_layers(model.n_layers)
        last = model.n_layers - 1
        # The residual stream: resid_pre of each layer, then the last block's output (layer column n_layers - 1).
        self._slots = [("resid_pre", l, model.hook_name("resid_pre", l)) for l in layers]
        self._slots.append(("resid_post", last, model.hook_name("resid_post", last)))
        self._pre = [h for site, _, h in self._slots if site == "resid_pre"]
        self._patterns = [(l, model.hook_name("attn_pattern", l)) for l in layers]
        self._layers = layers
        self._seq_len, self._d, self._heads, self._vocab = seq_len, model.d_model, model.n_heads, model.d_vocab
        self._token_text = model.token_strings
        device = model.device
        n = len(self._slots) * seq_len
        self.max_abs = GroupedMoments(n, device, track_extremes=False)
        self.median_abs = GroupedMoments(n, device, track_extremes=False)
        self.norm = GroupedMoments(n, device, track_extremes=False)
        self.top_share = GroupedMoments(n, device, track_extremes=False)  # max_i h_i² / ‖h‖² per token
        # which dimension holds the maximum, counted per (slot, position) for at most MAX_DIMS_KEPT dimensions
        self.max_dims = TopCounts(self._d, MAX_DIMS_KEPT, device)
        self.squares = torch.zeros((len(self._pre), len(GROUPS), self._d), dtype=torch.float64, device=device)
        self.sink = GroupedMoments(len(layers) * self._heads, device, track_extremes=False)
        self.massive_tokens = SparseSums(2, device)  # (count, sum of max |h_i|) per (layer slot, token id)
        # document-bootstrap replicates: position 0's max and median |h_i| per stream slot; per layer the
        # sink mass (mean over heads) and what uniform attention would give the same queries
        self._n_replicates = int(self.options.get("replicates") or DEFAULT_REPLICATES)
        self.position0_replicates = ReplicateSums(len(self._slots) * 2, self._n_replicates, device)
        self.sink_replicates = ReplicateSums(len(layers) * 2, self._n_replicates, device)
        self.outlier_replicates = ReplicateSums(len(self._slots), self._n_replicates, device)  # top_share, positions >= 1

    def hook_points(self) -> list[str]:
        return sorted({h for *_, h in self._slots} | {h for _, h in self._patterns})

    def reduce(self, hook_name, activation, batch):
        real = batch.mask & (batch.positions > 0)
        if hook_name.endswith("hook_pattern"):
            # [batch, query head, query, key]: the weight on key 0 of real queries at positions >= 1.
            # Key 0 of a real window is always real, and causal queries never see right padding.
            return activation[..., 0].transpose(1, 2)[real].float()  # [N, heads]
        magnitude = activation.float().abs()
        largest, where = magnitude.max(dim=-1)
        reduced = {
            "max": largest,
            "argmax": where,
            "median": numpy_median(magnitude),
            "norm": torch.linalg.vector_norm(magnitude, dim=-1),
        }
        if hook_name in self._pre:
            first = batch.mask & (batch.positions == 0)
            squares = magnitude.square_()
            reduced["squares"] = torch.stack(
                [squares[first].sum(0, dtype=torch.float64), squares[real].sum(0, dtype=torch.float64)]
            )
        return reduced

    def update(self, activations: dict[str, Any], batch) -> None:
        mask = batch.mask
        positions = batch.positions[mask]
        n_slots = len(self._slots)
        per_token = {
            key: torch.stack([activations[h][key][mask] for *_, h in self._slots]) for key in ("max", "argmax", "median", "norm")
        }  # each [slots, N]
        groups = torch.arange(n_slots, device=positions.device)[:, None] * self._seq_len + positions[None, :]
        self.max_abs.add(groups.reshape(-1), per_token["max"].reshape(-1))
        self.median_abs.add(groups.reshape(-1), per_token["median"].reshape(-1))
        self.norm.add(groups.reshape(-1), per_token["norm"].reshape(-1))
        per_token["top_share"] = (per_token["max"] / per_token["norm"]).square()  # NaN at a zero vector: counted apart
        self.top_share.add(groups.reshape(-1), per_token["top_share"].reshape(-1))
        dims = groups * self._d + per_token["argmax"]
        self.max_dims.add(dims.reshape(-1), torch.ones(dims.numel(), dtype=torch.float64, device=dims.device))
        for i, hook in enumerate(self._pre):
            self.squares[i] += activations[hook]["squares"].to(self.squares.device)
        self._add_massive_tokens(per_token, batch)
        for i, (_, hook) in enumerate(self._patterns):
            mass = activations[hook]  # [N, heads]
            heads = torch.arange(self._heads, device=mass.device) + i * self._heads
            self.sink.add(heads.expand_as(mass).reshape(-1), mass.reshape(-1))
        self._add_replicates(per_token, activations, batch)

    def _add_replicates(self, per_token: dict[str, torch.Tensor], activations: dict[str, Any], batch) -> None:
        weights = batch.replicate_weights
        if weights is None:
            return
        first = batch.positions[batch.mask] == 0
        windows = token_windows(batch.mask)[first]
        for i in range(len(self._slots)):
            for k, key in enumerate(("max", "median")):
                values = per_token[key][i][first]
                self.position0_replicates.add(torch.full_like(windows, 2 * i + k), values, windows, weights)
        real = batch.mask & (batch.positions > 0)
        windows = token_windows(real)
        later = batch.positions[batch.mask] > 0
        for i in range(len(self._slots)):
            self.outlier_replicates.add(torch.full_like(windows, i), per_token["top_share"][i][later], windows, weights)
        uniform = 1.0 / (batch.positions[real].double() + 1)
        for i, (_, hook) in enumerate(self._patterns):
            mass = activations[hook].double().mean(-1)
            self.sink_replicates.add(torch.full_like(windows, 2 * i), mass, windows, weights)
            self.sink_replicates.add(torch.full_like(windows, 2 * i + 1), uniform, windows, weights)

    def _add_massive_tokens(self, per_token: dict[str, torch.Tensor], batch) -> None:
        later = batch.positions[batch.mask] > 0
        n_pre = len(self._pre)
        largest, median = per_token["max"][:n_pre][:, later], per_token["median"][:n_pre][:, later]
        crossed = largest > self.massive_ratio * median  # a zero median with a nonzero max crosses too
        slot, token = crossed.nonzero(as_tuple=True)
        if slot.numel() == 0:
            return
        token_ids = batch.tokens[batch.mask][later][token]
        keys = slot * self._vocab + token_ids
        values = torch.stack([torch.ones_like(largest[slot, token]), largest[slot, token]], dim=1)
        self.massive_tokens.add(keys, values)

    def merge(self, other: MassiveProbe) -> None:
        for name in ("max_abs", "median_abs", "norm", "sink", "top_share"):
            getattr(self, name).merge(getattr(other, name))
        self.max_dims.merge(other.max_dims)
        self.massive_tokens.merge(other.massive_tokens)
        self.squares += other.squares.to(self.squares.device)
        self.position0_replicates.merge(other.position0_replicates)
        self.sink_replicates.merge(other.sink_replicates)
        self.outlier_replicates.merge(other.outlier_replicates)

    def state_dict(self) -> dict[str, Any]:
        state = {
            name: getattr(self, name).state_dict()
            for name in ("max_abs", "median_abs", "norm", "sink", "max_dims", "massive_tokens", "top_share")
        }
        state["squares"] = self.squares.detach().cpu().clone()
        state["position0_replicates"] = self.position0_replicates.state_dict()
        state["sink_replicates"] = self.sink_replicates.state_dict()
        state["outlier_replicates"] = self.outlier_replicates.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("max_abs", "median_abs", "norm", "sink", "max_dims", "massive_tokens", "top_share"):
            if name in state:  # top_share: absent from states saved before it existed
                getattr(self, name).load_state_dict(state[name])
        if state["squares"].shape != self.squares.shape:
            raise ValueError("state for 'squares' does not fit this probe")
        self.squares = state["squares"].to(self.squares.device, torch.float64).clone()
        for name in ("position0_replicates", "sink_replicates", "outlier_replicates"):
            if name in state:
                getattr(self, name).load_state_dict(state[name])

    # -- tables ----------------------------------------------------------------
    def result(self) -> dict[str, pd.DataFrame]:
        return {
            "massive": self._massive_table(),
            "top_dims": self._top_dims_table(),
            "attention_sink": self._sink_table(),
            "massive_tokens": self._massive_tokens_table(),
            **self._replicate_tables(),
        }

    def _replicate_tables(self) -> dict[str, pd.DataFrame]:
        n_b = self._n_replicates
        first = self.position0_replicates.means().cpu().numpy().reshape(len(self._slots), 2, n_b)
        massive = pd.DataFrame(
            {
                "site": np.repeat([s for s, _, _ in self._slots], n_b),
                "layer": np.repeat([l for _, l, _ in self._slots], n_b).astype(np.int64),
                "replicate": np.tile(np.arange(n_b), len(self._slots)).astype(np.int64),
                "max_abs_mean": first[:, 0].reshape(-1),
                "median_abs_mean": first[:, 1].reshape(-1),
                "massive_ratio": self.massive_ratio,
            }
        )
        sink = self.sink_replicates.means().cpu().numpy().reshape(len(self._layers), 2, n_b)
        sinks = pd.DataFrame(
            {
                "layer": np.repeat(self._layers, n_b).astype(np.int64),
                "replicate": np.tile(np.arange(n_b), len(self._layers)).astype(np.int64),
                "sink_mass": sink[:, 0].reshape(-1),
                "uniform_mass": sink[:, 1].reshape(-1),
            }
        )
        outlier = pd.DataFrame(
            {
                "site": np.repeat([s for s, _, _ in self._slots], n_b),
                "layer": np.repeat([l for _, l, _ in self._slots], n_b).astype(np.int64),
                "replicate": np.tile(np.arange(n_b), len(self._slots)).astype(np.int64),
                "top_share": self.outlier_replicates.means().cpu().numpy().reshape(-1),
            }
        )
        return {"massive_replicates": massive, "sink_replicates": sinks, "outlier_replicates": outlier}

    def _massive_table(self) -> pd.DataFrame:
        n_slots, width = len(self._slots), self._seq_len
        frame = pd.DataFrame(
            {
                "site": np.repeat([s for s, _, _ in self._slots], width),
                "layer": np.repeat([l for _, l, _ in self._slots], width).astype(np.int64),
                "position": np.tile(np.arange(width), n_slots).astype(np.int64),
                "count": self.max_abs.count.cpu().numpy().astype(np.int64),
                "max_abs_mean": self.max_abs.mean().cpu().numpy(),
                "median_abs_mean": self.median_abs.mean().cpu().numpy(),
                "max_dim_mode": self.max_dims.mode(n_slots * width),
                "norm_mean": self.norm.mean().cpu().numpy(),
                "top_share_mean": self.top_share.mean().cpu().numpy(),  # mean of max_i h_i² / ‖h‖²
            }
        )
        return frame[frame["count"] > 0].reset_index(drop=True)

    def _top_dims_table(self) -> pd.DataFrame:
        rows = []
        squares = self.squares.cpu().numpy()
        for i in range(len(self._pre)):
            layer = self._slots[i][1]
            for g, group in enumerate(GROUPS):
                total = squares[i, g].sum()
                if not total > 0:
                    continue
                dims = np.lexsort((np.arange(self._d), -squares[i, g]))[:TOP_RANKS]
                for rank, dim in enumerate(dims, start=1):
                    rows.append((layer, group, rank, int(dim), float(squares[i, g, dim] / total)))
        return pd.DataFrame(rows, columns=["layer", "group", "rank", "dim", "share"]).astype(
            {"layer": np.int64, "rank": np.int64, "dim": np.int64}
        )

    def _sink_table(self) -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "layer": np.repeat(self._layers, self._heads).astype(np.int64),
                "head": np.tile(np.arange(self._heads), len(self._layers)).astype(np.int64),
                "count": self.sink.count.cpu().numpy().astype(np.int64),
                "sink_mass_mean": self.sink.mean().cpu().numpy(),
                "sink_mass_std": self.sink.std().cpu().numpy(),
            }
        )
        return frame[frame["count"] > 0].reset_index(drop=True)

    def _massive_tokens_table(self) -> pd.DataFrame:
        keys = self.massive_tokens.keys.cpu().numpy()
        sums = self.massive_tokens.sums.cpu().numpy()
        slot, token_ids = keys // self._vocab, keys % self._vocab
        unique_ids = np.unique(token_ids)
        text = dict(zip(unique_ids.tolist(), self._token_text(unique_ids.tolist())))
        return pd.DataFrame(
            {
                "layer": np.array([self._slots[i][1] for i in slot], dtype=np.int64),
                "token_id": token_ids.astype(np.int64),
                "token": [text[i] for i in token_ids.tolist()],
                "count": sums[:, 0].astype(np.int64),
                "max_abs_mean": mean_or_nan(sums[:, 1], sums[:, 0]),
            }
        )

    def findings(self, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:  # type: ignore[override]
        """From the tables and this run's --massive-ratio (recorded in run.json's request)."""
        return massive_findings(tables, self.massive_ratio)


def _stream(massive: pd.DataFrame) -> list[tuple[str, int]]:
    """(site, layer) of the residual stream in order: resid_pre by layer, then the last resid_post."""
    pre = sorted(int(l) for l in massive.loc[massive["site"] == "resid_pre", "layer"].unique())
    post = sorted(int(l) for l in massive.loc[massive["site"] == "resid_post", "layer"].unique())
    return [("resid_pre", l) for l in pre] + [("resid_post", l) for l in post]


def massive_findings(tables: dict[str, pd.DataFrame], massive_ratio: float = DEFAULT_MASSIVE_RATIO) -> dict[str, Any]:
    massive, top, sink = tables["massive"], tables["top_dims"], tables["attention_sink"]
    out: dict[str, Any] = {"massive_ratio": float(massive_ratio)}
    first = massive[massive["position"] == 0].set_index(["site", "layer"])
    ratio0 = {
        key: float(first.loc[key, "max_abs_mean"] / first.loc[key, "median_abs_mean"])
        for key in _stream(massive)
        if key in first.index
    }
    out["position0_max_median_ratio"] = {l: r for (s, l), r in ratio0.items() if s == "resid_pre"}
    out["output_position0_max_median_ratio"] = next((r for (s, _), r in ratio0.items() if s == "resid_post"), None)
    crossing = next(((s, l) for (s, l), r in ratio0.items() if r > massive_ratio), None)
    out["first_massive"] = None
    if crossing is not None:
        site, layer = crossing
        ranked = top[(top["layer"] == layer) & (top["group"] == "position0")].sort_values("rank")
        out["first_massive"] = {
            "site": site,
            "layer": layer,
            "ratio": ratio0[crossing],
            "max_dim_mode": int(first.loc[crossing, "max_dim_mode"]),
            "top_dims": [int(d) for d in ranked["dim"].head(2)] if site == "resid_pre" else [],
        }
    out["position0_top2_share"] = _top2_share(top, "position0")
    out["rest_top2_share"] = _top2_share(top, "rest")
    weighted = (sink["sink_mass_mean"] * sink["count"]).groupby(sink["layer"]).sum()
    by_layer = weighted / sink.groupby("layer")["count"].sum()
    out["sink_mass_by_layer"] = {int(l): float(v) for l, v in by_layer.items()}
    # what the sink mass would be if every query attended uniformly to its t + 1 keys
    queries = massive[(massive["site"] == "resid_pre") & (massive["position"] > 0)].drop_duplicates("position")
    out["sink_mass_uniform"] = (
        float((queries["count"] / (queries["position"] + 1)).sum() / queries["count"].sum()) if len(queries) else float("nan")
    )
    norm_ratio = _position0_norm_ratio(massive)
    out["position0_norm_ratio"] = norm_ratio
    both = [l for l in out["sink_mass_by_layer"] if l in norm_ratio]
    x = pd.Series([norm_ratio[l] for l in both], dtype=float)
    y = pd.Series([out["sink_mass_by_layer"][l] for l in both], dtype=float)
    pearson = x.corr(y) if len(both) >= 3 else float("nan")
    out["sink_vs_norm_ratio_pearson"] = float(pearson) if pearson == pearson else float("nan")
    out["sink_vs_norm_ratio_spearman"] = spearman(x, y)
    tokens = tables.get("massive_tokens")
    out["n_massive_token_types"] = int(tokens["token_id"].nunique()) if tokens is not None and len(tokens) else 0
    return out


def _top2_share(top: pd.DataFrame, group: str) -> dict[int, float]:
    rows = top[(top["group"] == group) & (top["rank"] <= 2)]
    return {int(l): float(v) for l, v in rows.groupby("layer")["share"].sum().items()}


def _position0_norm_ratio(massive: pd.DataFrame) -> dict[int, float]:
    """Per layer (resid_pre), the mean norm at position 0 over the median of later positions' mean norms."""
    ratio = {}
    for layer, rows in massive[massive["site"] == "resid_pre"].groupby("layer"):
        first, later = rows[rows["position"] == 0], rows[rows["position"] > 0]
        if not first.empty and not later.empty:
            ratio[int(layer)] = float(first["norm_mean"].iloc[0] / later["norm_mean"].median())
    return ratio

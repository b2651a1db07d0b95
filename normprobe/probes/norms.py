"""`norms`: the L2 norm of every token's vector at every residual site and layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..bootstrap import DEFAULT_REPLICATES
from ..probe import Probe
from ..stats import GroupedMoments, ReplicateSums
from ..type_moments import TokenTypeMoments

POSITION_GROUPS = ("position0", "rest")  # the replicate table's position groups: position 0, positions >= 1


class NormsProbe(Probe):
    name = "norms"
    description = "L2 norm of each token's vector per (site, layer, position), with growth, position-0 and frequency claims"

    def setup(self, model, seq_len: int) -> None:
        layers = self.selected_layers(model.n_layers)
        self._slots = [(site, layer, model.hook_name(site, layer)) for site in model.sites for layer in layers]
        # The residual stream h_0..h_L: resid_pre of each layer, then the last block's output.
        self._token_slots = [("resid_pre", l, model.hook_name("resid_pre", l)) for l in layers]
        last = model.n_layers - 1
        self._token_slots.append(("resid_post", last, model.hook_name("resid_post", last)))
        self._seq_len = seq_len
        self._vocab = model.d_vocab
        self._token_text = model.token_strings
        device = model.device
        self.by_position = GroupedMoments(len(self._slots) * seq_len, device)
        self.by_token = TokenTypeMoments(len(self._token_slots), self._vocab, device)
        # document-bootstrap replicates of the mean norm of h_0..h_L, position 0 and later positions apart
        self._replicates = int(self.options.get("replicates") or DEFAULT_REPLICATES)
        self.replicates = ReplicateSums(len(self._token_slots) * len(POSITION_GROUPS), self._replicates, device)
        path = self.options.get("token_counts")
        self._external_counts: dict[int, float] | None = None
        if path is not None:
            from ..token_counts import read_token_counts

            self._external_counts = read_token_counts(path)

    def hook_points(self) -> list[str]:
        return sorted({h for *_, h in self._slots} | {h for *_, h in self._token_slots})

    def reduce(self, hook_name, activation, batch):
        return torch.linalg.vector_norm(activation, dim=-1, dtype=torch.float32)

    def update(self, activations: dict[str, Any], batch) -> None:
        # batch.real(x) is x[batch.mask], through indices made on the host: nothing here waits for the GPU
        positions = batch.real(batch.positions)
        norms = torch.stack([batch.real(activations[h]) for *_, h in self._slots])  # [H, N]
        offsets = torch.arange(len(self._slots), device=norms.device)[:, None] * self._seq_len
        self.by_position.add((offsets + positions[None, :]).reshape(-1), norms.reshape(-1))
        if batch.replicate_weights is not None:
            stream = torch.stack([batch.real(activations[h]) for *_, h in self._token_slots])  # [S, N]
            later_group = (positions > 0).long()
            slots = torch.arange(len(self._token_slots), device=stream.device)[:, None] * len(POSITION_GROUPS)
            rows = torch.arange(batch.mask.shape[0], device=stream.device)[:, None].expand_as(batch.mask)
            windows = batch.real(rows).expand(len(self._token_slots), -1)  # token_windows(mask)
            self.replicates.add(
                (slots + later_group[None, :]).reshape(-1), stream.reshape(-1), windows.reshape(-1), batch.replicate_weights
            )
        # Position 0 (BOS where there is one) is analysed on its own, not in the frequency table.
        token_ids = batch.later(batch.tokens)
        norms = torch.stack([batch.later(activations[h]) for *_, h in self._token_slots])
        self.by_token.add(token_ids, norms)

    def merge(self, other: NormsProbe) -> None:
        self.by_position.merge(other.by_position)
        self.by_token.merge(other.by_token)
        self.replicates.merge(other.replicates)

    def state_dict(self) -> dict[str, Any]:
        return {
            "by_position": self.by_position.state_dict(),
            "by_token": self.by_token.state_dict(),
            "replicates": self.replicates.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.by_position.load_state_dict(state["by_position"])
        self.by_token.load_state_dict(state["by_token"])
        if "replicates" in state:
            self.replicates.load_state_dict(state["replicates"])

    def result(self) -> dict[str, pd.DataFrame]:
        m = self.by_position
        n_slots, width = len(self._slots), self._seq_len
        frame = pd.DataFrame(
            {
                "site": np.repeat([s for s, _, _ in self._slots], width),
                "layer": np.repeat([l for _, l, _ in self._slots], width).astype(np.int64),
                "position": np.tile(np.arange(width), n_slots).astype(np.int64),
                "count": m.count.cpu().numpy().astype(np.int64),
                "mean": m.mean().cpu().numpy(),
                "std": m.std().cpu().numpy(),
                "min": m.minimum.cpu().numpy(),
                "max": m.maximum.cpu().numpy(),
                "n_nonfinite": m.nonfinite.cpu().numpy().astype(np.int64),
            }
        )
        frame = frame[(frame["count"] > 0) | (frame["n_nonfinite"] > 0)].reset_index(drop=True)
        cells = {k: v.cpu().numpy() for k, v in self.by_token.cells().items()}
        slot_index, token_ids = cells["slot"], cells["type"]
        unique_ids = np.unique(token_ids)
        text = dict(zip(unique_ids.tolist(), self._token_text(unique_ids.tolist())))
        tokens = pd.DataFrame(
            {
                "site": [self._token_slots[i][0] for i in slot_index],
                "layer": np.array([self._token_slots[i][1] for i in slot_index], dtype=np.int64),
                "token_id": token_ids.astype(np.int64),
                "token": [text[i] for i in token_ids.tolist()],
                "count": cells["count"].astype(np.int64),
                "mean": cells["mean"],
                "std": cells["std"],
            }
        )
        out = {"norms": frame, "norms_by_token": tokens, "norms_replicates": self._replicate_table()}
        if self._external_counts is not None:  # --token-counts: the counts of the types this run saw
            seen = [int(i) for i in unique_ids if int(i) in self._external_counts]
            out["token_counts"] = pd.DataFrame(
                {
                    "token_id": np.array(seen, dtype=np.int64),
                    "count": np.array([self._external_counts[i] for i in seen], dtype=float),
                }
            )
        return out

    def _replicate_table(self) -> pd.DataFrame:
        """Per (site, layer) of h_0..h_L, position group and replicate: the summed weight and the weighted mean norm."""
        n_b, n_g = self._replicates, len(POSITION_GROUPS)
        n = len(self._token_slots) * n_g
        return pd.DataFrame(
            {
                "site": np.repeat([s for s, _, _ in self._token_slots], n_g * n_b),
                "layer": np.repeat([l for _, l, _ in self._token_slots], n_g * n_b).astype(np.int64),
                "position_group": np.tile(np.repeat(POSITION_GROUPS, n_b), len(self._token_slots)),
                "replicate": np.tile(np.arange(n_b), n).astype(np.int64),
                "weight": self.replicates.weight.cpu().numpy().reshape(-1),
                "mean": self.replicates.means().cpu().numpy().reshape(-1),
            }
        )

    @classmethod
    def findings(cls, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        return norms_findings(tables["norms"], tables.get("norms_by_token"))


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rho as the Pearson correlation of average ranks (NaN under 3 points)."""
    if len(x) < 3:
        return float("nan")
    rho = x.rank().corr(y.rank())
    return float(rho) if rho == rho else float("nan")


def residual_stream_means(norms: pd.DataFrame, exclude_position0: bool = False) -> pd.Series:
    """Mean norm of h_0..h_L, token-weighted: resid_pre of each layer, then the last resid_post as layer L."""
    rows = norms[norms["position"] > 0] if exclude_position0 else norms
    pre = rows[rows["site"] == "resid_pre"]
    post = rows[rows["site"] == "resid_post"]
    if pre.empty:
        return pd.Series(dtype=float)
    means = _weighted_mean_by_layer(pre)
    if not post.empty:
        last = int(post["layer"].max())
        means.loc[last + 1] = _weighted_mean_by_layer(post[post["layer"] == last]).iloc[0]
    return means.sort_index()


def _weighted_mean_by_layer(rows: pd.DataFrame) -> pd.Series:
    weighted = (rows["mean"] * rows["count"]).groupby(rows["layer"]).sum()
    return weighted / rows.groupby("layer")["count"].sum()


def growth_summary(means: pd.Series) -> dict[str, Any]:
    if len(means) < 2 or (means <= 0).any():
        return {"geometric": float("nan"), "fit": float("nan"), "fit_r2": float("nan")}
    layers = means.index.to_numpy(dtype=float)
    logs = np.log(means.to_numpy(dtype=float))
    span = layers[-1] - layers[0]
    geometric = float(np.exp((logs[-1] - logs[0]) / span))
    slope, intercept = np.polyfit(layers, logs, 1)
    residual = logs - (slope * layers + intercept)
    total = ((logs - logs.mean()) ** 2).sum()
    r2 = float(1 - (residual**2).sum() / total) if total > 0 else float("nan")
    return {"geometric": geometric, "fit": float(np.exp(slope)), "fit_r2": r2}


def growth_ratios(means: pd.Series) -> dict[int, float]:
    """||h_{l+1}|| / ||h_l|| (mean norms) for each measured layer l whose next layer was measured too."""
    values = means.to_dict()
    return {int(l): float(values[l + 1] / values[l]) for l in values if l + 1 in values and values[l] > 0}


def norms_findings(norms: pd.DataFrame, by_token: pd.DataFrame | None) -> dict[str, Any]:
    means = residual_stream_means(norms)
    means_later = residual_stream_means(norms, exclude_position0=True)
    out: dict[str, Any] = {
        "residual_layers": [int(x) for x in means.index],
        "residual_mean_norm": [float(x) for x in means],
        "growth": growth_summary(means),
        "growth_excluding_position0": growth_summary(means_later),
        "growth_ratio_by_layer": growth_ratios(means),
    }
    pre = norms[norms["site"] == "resid_pre"]
    ratio, rho_position = {}, {}
    for layer, rows in pre.groupby("layer"):
        first = rows[rows["position"] == 0]
        later = rows[rows["position"] > 0]
        if not first.empty and not later.empty:
            ratio[int(layer)] = float(first["mean"].iloc[0] / later["mean"].median())
        rho_position[int(layer)] = spearman(later["position"], later["mean"])
    out["position0_ratio"] = ratio
    out["position0_ratio_max"] = max(ratio.values()) if ratio else float("nan")
    out["position_spearman"] = rho_position
    rho_frequency = {}
    if by_token is not None and not by_token.empty:
        for layer, rows in by_token[by_token["site"] == "resid_pre"].groupby("layer"):
            rho_frequency[int(layer)] = spearman(np.log(rows["count"]), rows["mean"])
    out["frequency_spearman"] = rho_frequency
    out["n_nonfinite"] = int(norms["n_nonfinite"].sum()) if "n_nonfinite" in norms else 0
    nonfinite = norms.groupby(["site", "layer"])["n_nonfinite"].sum() if "n_nonfinite" in norms else pd.Series(dtype=int)
    out["nonfinite_by_layer"] = {f"{s}.{l}": int(v) for (s, l), v in nonfinite.items() if v > 0}
    return out

"""`linesearch`: the lens loss along the line h_l + αΔ, a direct test of "each layer takes a descent step".

For layer l and component c (attn, mlp, or the whole block), Δ is c's update (as in `updates`) and
the loss at h_l + αΔ is read through layer l's readout for every α of a grid. If Δ is a descent
step the loss falls from α = 0, and the α that minimises it says whether the step has the size the
model learned (α* near 1) or is too short (α* > 1) or too long (α* < 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..bootstrap import DEFAULT_REPLICATES
from ..linefit import refine_minimum
from ..probe import Probe
from ..stats import GroupedMoments, ReplicateSums, token_windows

COMPONENTS = ("attn", "mlp", "block")
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
NEAR_ONE = 0.25  # |α* - 1| within this counts as "the step the model takes is the best step on the line"


class LineSearchProbe(Probe):
    name = "linesearch"
    description = "lens loss along h_l + αΔ for a grid of α per layer and component; the best step α* and whether it is near 1"

    def __init__(
        self,
        layers: list[int] | None = None,
        alphas: list[float] | None = None,
        readout: str = "logit",
        vocab_chunk: int = 1 << 24,
        readout_sample: float = 1.0,
        **options: Any,
    ):
        super().__init__(layers, readout=readout, alphas=alphas, readout_sample=readout_sample, **options)
        self.readout_sample = readout_sample  # share of tokens read (normprobe.sampling)
        self._mask_of: tuple[Any, torch.Tensor] | None = None
        self.alphas = sorted(set(float(a) for a in (alphas if alphas is not None else DEFAULT_ALPHAS)))
        self.readout_spec = readout
        self.vocab_chunk = vocab_chunk  # at most this many logits (tokens x vocab) in memory at once

    def setup(self, model, seq_len: int) -> None:
        from ..readouts import make_readout

        self._layers = self.selected_layers(model.n_layers)
        self._readout = make_readout(model, self.readout_spec)
        self._model = model
        self._vocab = model.d_vocab
        self._slots = {l: slot for slot, l in enumerate(self._layers)}
        self._hooks = {
            l: {
                "pre": model.hook_name("resid_pre", l),
                "post": model.hook_name("resid_post", l),
                "attn": model.hook_name("attn_out", l),
                "mlp": model.hook_name("mlp_out", l),
            }
            for l in self._layers
        }
        self.losses = GroupedMoments(len(self._layers) * len(COMPONENTS) * len(self.alphas), model.device, track_extremes=False)
        self._n_replicates = int(self.options.get("replicates") or DEFAULT_REPLICATES)
        self.replicates = ReplicateSums(self.losses.n_groups, self._n_replicates, model.device)

    def hook_points(self) -> list[str]:
        if self._readout.kind == "model":
            return []  # reruns of the network, from its own forward in begin_batch
        return sorted({name for hooks in self._hooks.values() for name in hooks.values()})

    def _read(self, batch) -> torch.Tensor:
        """Tokens with a next token, and among them the --readout-sample share: [B, T] bool, once per batch."""
        from ..sampling import readout_mask

        if self._mask_of is None or self._mask_of[0] is not batch:
            self._mask_of = (batch, readout_mask(batch, self.readout_sample))
        return self._mask_of[1]

    def begin_batch(self, batch) -> None:
        """Under the model readout: the model's loss with each update scaled by α, rerun layer by layer."""
        if self._readout.kind != "model":
            return
        from ..readouts.model import line_search_losses

        index = {alpha: a for a, alpha in enumerate(self.alphas)}
        for layer, component, alpha, loss in line_search_losses(self._model, batch, self._layers, self.alphas, self.vocab_chunk):
            group = self._group(self._slots[layer], COMPONENTS.index(component), index[alpha])
            self.losses.add(torch.full((loss.shape[0],), group, device=loss.device), loss)

    def reduce(self, hook_name, activation, batch):
        return activation[self._read(batch)].float()

    def _group(self, slot: int, component: int, alpha: int) -> int:
        return (slot * len(COMPONENTS) + component) * len(self.alphas) + alpha

    def update_layer(self, layer: int, activations: dict[str, Any], batch) -> None:
        """One layer's line searches, as soon as its hooks have fired (the runner then forgets them)."""
        from ..readouts import chunked_line_losses

        targets = batch.next_tokens[self._read(batch)]
        n = targets.shape[0]
        if n == 0:
            return
        slot, hooks = self._slots[layer], self._hooks[layer]
        h = activations[hooks["pre"]]
        deltas = {"attn": activations[hooks["attn"]], "mlp": activations[hooks["mlp"]], "block": activations[hooks["post"]] - h}
        windows = token_windows(self._read(batch))  # each read token's window, for its document's bootstrap weights
        # every (component, α) from one product of each vocabulary chunk with h and each Δ (Readout.line_losses)
        losses = chunked_line_losses(
            self._readout, h, [deltas[c] for c in COMPONENTS], self.alphas, targets, layer, self.vocab_chunk
        )
        for c in range(len(COMPONENTS)):
            for a in range(len(self.alphas)):
                groups = torch.full((n,), self._group(slot, c, a), device=losses.device)
                self.losses.add(groups, losses[c, a])
                self.replicates.add(groups, losses[c, a], windows, batch.replicate_weights)

    def update(self, activations: dict[str, Any], batch) -> None:
        """Every hook point lies in a layer, so a streaming run hands nothing here; a caller that
        collects a whole batch's activations gets each complete layer handled as update_layer would."""
        for layer, hooks in self._hooks.items():
            if all(name in activations for name in hooks.values()):
                self.update_layer(layer, {name: activations[name] for name in hooks.values()}, batch)

    def merge(self, other: LineSearchProbe) -> None:
        self.losses.merge(other.losses)
        self.replicates.merge(other.replicates)

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses.state_dict(), "alphas": list(self.alphas), "replicates": self.replicates.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["alphas"]) != list(self.alphas):
            raise ValueError(f"saved line search used alphas {state['alphas']}, not {self.alphas}")
        self.losses.load_state_dict(state["losses"])
        if "replicates" in state:
            self.replicates.load_state_dict(state["replicates"])

    def result(self) -> dict[str, pd.DataFrame]:
        n_a, n_c = len(self.alphas), len(COMPONENTS)
        frame = pd.DataFrame(
            {
                "layer": np.repeat(self._layers, n_c * n_a).astype(np.int64),
                "component": np.tile(np.repeat(COMPONENTS, n_a), len(self._layers)),
                "alpha": np.tile(np.asarray(self.alphas, dtype=float), len(self._layers) * n_c),
                "count": self.losses.count.cpu().numpy().astype(np.int64),
                "lens_loss_mean": self.losses.mean().cpu().numpy(),
                "n_nonfinite": self.losses.nonfinite.cpu().numpy().astype(np.int64),
                **_document_intervals(self.replicates),
            }
        )
        # a row whose every value was non-finite stays, with count 0 and its n_nonfinite: never dropped silently
        frame = frame[(frame["count"] > 0) | (frame["n_nonfinite"] > 0)].reset_index(drop=True)
        n_b, n_groups = self._n_replicates, self.losses.n_groups
        replicates = pd.DataFrame(
            {
                "layer": np.repeat(self._layers, n_c * n_a * n_b).astype(np.int64),
                "component": np.tile(np.repeat(COMPONENTS, n_a * n_b), len(self._layers)),
                "alpha": np.tile(np.repeat(np.asarray(self.alphas, dtype=float), n_b), len(self._layers) * n_c),
                "replicate": np.tile(np.arange(n_b), n_groups).astype(np.int64),
                "lens_loss": self.replicates.means().cpu().numpy().reshape(-1),
            }
        )
        return {"line_search": frame, "line_search_replicates": replicates}

    @classmethod
    def findings(cls, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        return line_search_findings(tables["line_search"])


def _document_intervals(replicates: ReplicateSums) -> dict[str, np.ndarray]:
    """lens_loss_ci_low/_ci_high per row: the 95% percentile interval of the document bootstrap's replicates."""
    from ..bootstrap import percentile_interval

    bounds = np.array([percentile_interval(r) for r in replicates.means().cpu().numpy()]).reshape(-1, 2)
    return {"lens_loss_ci_low": bounds[:, 0], "lens_loss_ci_high": bounds[:, 1]}


def line_search_findings(table: pd.DataFrame) -> dict[str, Any]:
    alpha_star: dict[str, dict[int, float]] = {}
    at_edge: dict[str, list[int]] = {}
    near_one: dict[str, list[int]] = {}
    descends: dict[str, list[int]] = {}
    for (component, layer), rows in table.sort_values("alpha").groupby(["component", "layer"], sort=False):
        alphas, losses = rows["alpha"].to_numpy(float), rows["lens_loss_mean"].to_numpy(float)
        if len(alphas) == 0 or not np.isfinite(losses).any():
            continue
        star, edge = refine_minimum(alphas, losses)
        alpha_star.setdefault(component, {})[int(layer)] = star
        if edge:
            at_edge.setdefault(component, []).append(int(layer))
        if not edge and abs(star - 1.0) <= NEAR_ONE:
            near_one.setdefault(component, []).append(int(layer))
        zero, one = losses[alphas == 0.0], losses[alphas == 1.0]
        if len(zero) and len(one) and one[0] < zero[0]:
            descends.setdefault(component, []).append(int(layer))
    order = [c for c in COMPONENTS if c in alpha_star] + [c for c in alpha_star if c not in COMPONENTS]
    return {
        "alpha_star": {c: dict(sorted(alpha_star[c].items())) for c in order},
        "alpha_star_at_grid_edge": {c: sorted(at_edge.get(c, [])) for c in order},
        "alpha_star_near_one": {c: sorted(near_one.get(c, [])) for c in order},
        "near_one_tolerance": NEAR_ONE,
        "step_lowers_loss": {c: sorted(descends.get(c, [])) for c in order},
        "alphas": sorted(float(a) for a in table["alpha"].unique()),
        "n_nonfinite": int(table["n_nonfinite"].sum()) if "n_nonfinite" in table else 0,
    }

"""`updates`: each layer's update Δ to the residual stream, read as a step of an inner optimisation.

For layer l, h_l is resid_pre and the block's update is Δ = h_{l+1} - h_l = attn_out + mlp_out.
g = dCE/dh at h_l, the start of the step, is the exact float32 gradient of the next-token
cross-entropy read out through the run's readout (`--readout`: the logit lens, or a tuned lens;
see normprobe.readouts; the model readout's start and end of step are in normprobe.readouts.model).
The first-order check compares g·Δ with loss(h_l + Δ) - loss(h_l), both through layer l's readout.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ..bootstrap import DEFAULT_REPLICATES
from ..probe import Probe
from ..readouts.steps import _cos, step_statistics
from ..stats import GroupedMoments, ReplicateSums, token_windows

if TYPE_CHECKING:
    from ..batching import Batch

COMPONENTS = ("attn", "mlp", "block")
METRICS = (
    "update_norm",
    "rel_update",
    "descent_cos",
    "descent_cos_end",
    "step_eta",
    "step_r2",
    "next_cos",
    "total_cos",
    "predicted_change",
    "actual_change",
)
HIST_BINS = 80
REPLICATED = ("descent_cos", "predicted_change", "actual_change")  # metrics with document-bootstrap replicates


class UpdatesProbe(Probe):
    name = "updates"
    description = "per-layer updates of the residual stream: size, logit-lens loss, alignment with -dCE/dh, step fit, consistency"

    def __init__(
        self,
        layers: list[int] | None = None,
        vocab_chunk: int = 1 << 24,
        readout: str = "logit",
        ablate: bool = False,
        readout_sample: float = 1.0,
        **options: Any,
    ):
        super().__init__(layers, readout=readout, ablate=ablate, readout_sample=readout_sample, **options)
        self.vocab_chunk = vocab_chunk  # at most this many logits (tokens x vocab) in memory at once
        self.readout_spec = readout
        self.ablate = ablate  # under the model readout: rerun the network without each update (actual_change)
        self.readout_sample = readout_sample  # share of tokens read (normprobe.sampling)
        self._mask_of: tuple[Any, torch.Tensor] | None = None

    def setup(self, model, seq_len: int) -> None:
        self._layers = self.selected_layers(model.n_layers)
        self._n_layers = model.n_layers
        self._d_model = model.d_model
        from ..readouts import make_readout

        self._readout = make_readout(model, self.readout_spec)
        if self.ablate and self._readout.kind != "model":
            from ..errors import NormprobeError

            raise NormprobeError("ablate reruns the network without each update, which only the model readout does")
        self._readout_is_layer_independent = self._readout.kind == "logit"
        self._model = model
        self._vocab = model.d_vocab
        self._seq_len = seq_len
        last = model.n_layers - 1
        self._hooks = {
            l: {
                "pre": model.hook_name("resid_pre", l),
                "post": model.hook_name("resid_post", l),
                "attn": model.hook_name("attn_out", l),
                "mlp": model.hook_name("mlp_out", l),
            }
            for l in self._layers
        }
        self._slot = {layer: slot for slot, layer in enumerate(self._layers)}
        self._first = model.hook_name("resid_pre", 0)
        self._final = model.hook_name("resid_post", last)
        n_rows = len(self._layers) * len(COMPONENTS)
        device = model.device
        self.moments = {m: GroupedMoments(n_rows, device, track_extremes=False) for m in METRICS}
        self.lens = GroupedMoments(len(self._layers) + 1, device, track_extremes=False)  # + the output
        self.lens_by_position = GroupedMoments((len(self._layers) + 1) * seq_len, device, track_extremes=False)
        self.cos_by_position = GroupedMoments(len(self._layers) * seq_len, device, track_extremes=False)
        self.histogram = torch.zeros(n_rows, HIST_BINS, dtype=torch.float64, device=device)
        self._n_replicates = int(self.options.get("replicates") or DEFAULT_REPLICATES)
        self.replicated = {m: ReplicateSums(n_rows, self._n_replicates, device) for m in REPLICATED}
        self.replicated["lens"] = ReplicateSums(len(self._layers) + 1, self._n_replicates, device)

    def hook_points(self) -> list[str]:
        if self._readout.kind == "model":
            return []  # its own pass, with gradients, in begin_batch (normprobe.readouts.model)
        names = {self._first, self._final}
        for hooks in self._hooks.values():
            names.update(hooks.values())
        return sorted(names)

    def _read(self, batch) -> torch.Tensor:
        """Tokens with a next token, and among them the --readout-sample share: [B, T] bool, once per batch."""
        from ..sampling import readout_mask

        if self._mask_of is None or self._mask_of[0] is not batch:
            self._mask_of = (batch, readout_mask(batch, self.readout_sample))
        return self._mask_of[1]

    def reduce(self, hook_name, activation, batch):
        # Only tokens with a next token (in the sample) matter; keep them as float32 rows [N, d].
        return activation[self._read(batch)].float()

    def _loss_grad_and_steps(self, h, deltas, targets, layer: int):
        from ..readouts import chunked_loss_grad_and_steps

        return chunked_loss_grad_and_steps(self._readout, h, deltas, targets, layer, self.vocab_chunk, self._vocab)

    def _lens_loss(self, h: torch.Tensor, targets: torch.Tensor, layer: int) -> torch.Tensor:
        from ..readouts import chunked_loss

        return chunked_loss(self._readout, h, targets, layer, self.vocab_chunk, self._vocab)

    # -- streaming: one layer at a time -----------------------------------
    def begin_batch(self, batch) -> None:
        """Reset per-batch state and find h_L - h_0 for total_cos.

        total_cos needs the whole trajectory h_L - h_0 before the last layer has run. A first, light
        forward (two hooks, nothing else kept) gives it, so that the main pass can hand over each
        layer and forget it: holding every layer's updates until the end grows with depth.
        """
        if self._readout.kind == "model":
            return add_to_updates(self, batch)
        has_next = self._read(batch)
        ends: dict[str, torch.Tensor] = {}

        def keep(name):
            return lambda activation, hook=None: ends.__setitem__(name, self.reduce(name, activation, batch))

        if bool(has_next.any()):
            self._model.forward(batch.tokens, batch.mask.long(), [(n, keep(n)) for n in (self._first, self._final)])
        self._start_batch(batch, ends)

    def _start_batch(self, batch, ends: dict[str, torch.Tensor]) -> None:
        self._targets = batch.next_tokens[self._read(batch)]
        self._positions = batch.positions[self._read(batch)]
        self._previous: tuple[int, dict[str, torch.Tensor]] | None = None  # the layer before, for next_cos
        self._pending_block: tuple[int, Any] | None = None  # block actual_change waiting for the next layer's lens loss
        self._windows = token_windows(self._read(batch))  # each read token's window, for its bootstrap weights
        self._window_weights = batch.replicate_weights
        if self._targets.numel():
            self._total = ends[self._final] - ends[self._first]

    def update_layer(self, layer: int, activations: dict[str, Any], batch) -> None:
        if self._targets.numel() == 0:
            return
        if layer in self._slot:
            self._consume_layer(layer, activations)
        if self._final in activations:  # the last block's output: the model's own loss
            final_loss = self._lens_loss(activations[self._final], self._targets, self._n_layers)
            self._settle_block_change(final_loss)
            output = len(self._layers)
            self.lens.add(self._group(output), final_loss)
            self._replicate("lens", output, final_loss)
            self.lens_by_position.add(output * self._seq_len + self._positions, final_loss)

    def update(self, activations: dict[str, Any], batch) -> None:
        """A streaming run hands nothing here. A caller that collects a whole batch's activations at once
        (without begin_batch) gets them handled layer by layer, as the runner would."""
        if not activations:
            return
        self._start_batch(batch, activations)
        for layer in sorted({self._model.layer_of_hook(name) for name in activations}):
            self.update_layer(layer, {n: a for n, a in activations.items() if self._model.layer_of_hook(n) == layer}, batch)

    def _replicate(self, name: str, row: int, values: torch.Tensor) -> None:
        self.replicated[name].add(self._group(row), values, self._windows, self._window_weights)

    def _group(self, row: int) -> torch.Tensor:
        return torch.full((self._targets.shape[0],), row, device=self._targets.device)

    def _settle_block_change(self, next_loss: torch.Tensor) -> None:
        """loss(h_l + Δ_block) is loss(h_{l+1}): with a layer-independent readout it is the next lens loss."""
        if self._pending_block is not None:
            row, loss = self._pending_block
            self.moments["actual_change"].add(self._group(row), next_loss - loss)
            self._replicate("actual_change", row, next_loss - loss)
            self._pending_block = None

    def _consume_layer(self, layer: int, activations: dict[str, Any]) -> None:
        targets, positions = self._targets, self._positions
        slot = self._slot[layer]
        hooks = self._hooks[layer]
        h = activations[hooks["pre"]]
        deltas = {"attn": activations[hooks["attn"]], "mlp": activations[hooks["mlp"]], "block": activations[hooks["post"]] - h}
        reuse_next_loss = self._readout_is_layer_independent and (layer + 1 in self._slot or layer == self._n_layers - 1)
        stepped = [c for c in COMPONENTS if not (c == "block" and reuse_next_loss)]
        # the loss and gradient at h and the losses at h + Δ from the same products (Readout.loss_grad_and_steps)
        loss, grad, step_losses = self._loss_grad_and_steps(h, [deltas[c] for c in stepped], targets, layer)
        at_step = dict(zip(stepped, step_losses))
        self._settle_block_change(loss)
        self.lens.add(self._group(slot), loss)
        self._replicate("lens", slot, loss)
        self.lens_by_position.add(slot * self._seq_len + positions, loss)
        h_norm = torch.linalg.vector_norm(h, dim=-1)
        for c, component in enumerate(COMPONENTS):
            row = slot * len(COMPONENTS) + c
            delta = deltas[component]
            delta_norm = torch.linalg.vector_norm(delta, dim=-1)
            values = step_statistics(delta, grad)
            values["update_norm"] = delta_norm
            values["rel_update"] = delta_norm / h_norm
            values["total_cos"] = _cos(delta, self._total)
            # first-order check: the linear prediction g·Δ against the loss change it predicts
            values["predicted_change"] = (grad * delta).sum(-1)
            if component == "block" and reuse_next_loss:
                self._pending_block = (row, loss)
            else:
                values["actual_change"] = at_step[component] - loss
            for metric, v in values.items():
                self.moments[metric].add(self._group(row), v)
                if metric in self.replicated:
                    self._replicate(metric, row, v)
            cos = values["descent_cos"]
            finite = torch.isfinite(cos)
            bins = ((cos[finite].clamp(-1, 1) + 1) / 2 * HIST_BINS).long().clamp(max=HIST_BINS - 1)
            self.histogram[row].index_add_(0, bins, torch.ones_like(cos[finite], dtype=torch.float64))
            if component == "block":
                self.cos_by_position.add(slot * self._seq_len + positions, cos)
            if self._previous is not None and self._previous[0] == layer - 1:
                self.moments["next_cos"].add(self._group(row - len(COMPONENTS)), _cos(self._previous[1][component], delta))
        self._previous = (layer, deltas)

    # -- merging and state -----------------------------------------------
    def _all_moments(self) -> dict[str, GroupedMoments]:
        return {
            **self.moments,
            "lens": self.lens,
            "lens_by_position": self.lens_by_position,
            "cos_by_position": self.cos_by_position,
        }

    def merge(self, other: UpdatesProbe) -> None:
        mine, theirs = self._all_moments(), other._all_moments()
        for key, moments in mine.items():
            moments.merge(theirs[key])
        self.histogram += other.histogram.to(self.histogram.device)
        for key, sums in self.replicated.items():
            sums.merge(other.replicated[key])

    def state_dict(self) -> dict[str, Any]:
        state = {k: m.state_dict() for k, m in self._all_moments().items()}
        state["histogram"] = self.histogram.detach().cpu().clone()
        state["replicated"] = {k: r.state_dict() for k, r in self.replicated.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, moments in self._all_moments().items():
            if key in state:  # a state saved before descent_cos_end existed has none
                moments.load_state_dict(state[key])
        self.histogram = state["histogram"].to(self.histogram.device, torch.float64).clone()
        for key, sums in self.replicated.items():
            if key in state.get("replicated", {}):
                sums.load_state_dict(state["replicated"][key])

    # -- tables ----------------------------------------------------------
    def result(self) -> dict[str, pd.DataFrame]:
        n_c = len(COMPONENTS)
        rows = len(self._layers) * n_c
        layers = np.repeat(self._layers, n_c).astype(np.int64)
        lens_mean = self.lens.mean().cpu().numpy()
        frame = pd.DataFrame(
            {
                "layer": layers,
                "component": np.tile(COMPONENTS, len(self._layers)),
                # tokens read: the start-of-step cosine's, or the end-of-step one's where only that was measured
                "count": np.maximum(
                    self.moments["descent_cos"].count.cpu().numpy(), self.moments["descent_cos_end"].count.cpu().numpy()
                ).astype(np.int64),
                "update_norm_mean": self.moments["update_norm"].mean().cpu().numpy(),
                "rel_update_mean": self.moments["rel_update"].mean().cpu().numpy(),
                "lens_loss_mean": np.repeat(lens_mean[:-1], n_c),
                "descent_cos_mean": _mean_or_nan(self.moments["descent_cos"]),  # g at the step's start
                "descent_cos_end_mean": _mean_or_nan(self.moments["descent_cos_end"]),  # g at its end (model readout)
                "descent_cos_std": self.moments["descent_cos"].std().cpu().numpy(),
                "step_eta_mean": _mean_or_nan(self.moments["step_eta"]),
                "step_r2_mean": _mean_or_nan(self.moments["step_r2"]),
                "next_cos_mean": _mean_or_nan(self.moments["next_cos"]),
                "total_cos_mean": self.moments["total_cos"].mean().cpu().numpy(),
                "predicted_change_mean": _mean_or_nan(self.moments["predicted_change"]),
                "actual_change_mean": _mean_or_nan(self.moments["actual_change"]),  # null: the model readout without ablate
                "n_nonfinite": self.moments["descent_cos"].nonfinite.cpu().numpy().astype(np.int64),
                **_document_intervals(self.replicated, ("descent_cos", "actual_change")),
            }
        )
        output = {c: np.nan for c in frame.columns}
        output.update(
            layer=self._n_layers,
            component="output",
            count=int(self.lens.count[-1]),
            lens_loss_mean=float(lens_mean[-1]),
            n_nonfinite=int(self.lens.nonfinite[-1]),
        )
        frame = pd.concat([frame, pd.DataFrame([output])], ignore_index=True)
        frame["count"] = frame["count"].astype(np.int64)
        frame["n_nonfinite"] = frame["n_nonfinite"].astype(np.int64)
        frame["chance_cos_std"] = 1.0 / math.sqrt(self._d_model)
        frame["uniform_loss"] = math.log(self._vocab)  # the loss of predicting every token alike
        # a row whose every value was non-finite stays, with count 0 and its n_nonfinite: never dropped silently
        kept = (frame["count"] > 0) | (frame["n_nonfinite"] > 0)
        frame = frame[kept].reset_index(drop=True) if rows else frame

        width = self._seq_len
        slots = self._layers + [self._n_layers]
        lens_pos = self.lens_by_position
        cos_pos = self.cos_by_position
        cos_mean = np.concatenate([cos_pos.mean().cpu().numpy(), np.full(width, np.nan)])
        by_position = pd.DataFrame(
            {
                "layer": np.repeat(slots, width).astype(np.int64),
                "position": np.tile(np.arange(width), len(slots)).astype(np.int64),
                "count": lens_pos.count.cpu().numpy().astype(np.int64),
                "lens_loss_mean": lens_pos.mean().cpu().numpy(),
                "descent_cos_mean": cos_mean,
            }
        )
        by_position = by_position[by_position["count"] > 0].reset_index(drop=True)

        hist = self.histogram.cpu().numpy()
        edges = np.linspace(-1, 1, HIST_BINS + 1)
        histogram = pd.DataFrame(
            {
                "layer": np.repeat(layers, HIST_BINS),
                "component": np.repeat(np.tile(COMPONENTS, len(self._layers)), HIST_BINS),
                "bin_left": np.tile(edges[:-1], rows),
                "bin_right": np.tile(edges[1:], rows),
                "count": hist.reshape(-1).astype(np.int64),
            }
        )
        return {"updates": frame, "updates_by_position": by_position, "updates_hist": histogram, **self._replicate_tables()}

    def _replicate_tables(self) -> dict[str, pd.DataFrame]:
        """Per (layer, component) and replicate, the weighted mean descent cosine and loss changes; per layer
        (the output as layer n_layers) and replicate, the weighted mean lens loss."""
        n_b, n_c = self._n_replicates, len(COMPONENTS)
        steps = pd.DataFrame(
            {
                "layer": np.repeat(self._layers, n_c * n_b).astype(np.int64),
                "component": np.tile(np.repeat(COMPONENTS, n_b), len(self._layers)),
                "replicate": np.tile(np.arange(n_b), len(self._layers) * n_c).astype(np.int64),
                **{m: self.replicated[m].means().cpu().numpy().reshape(-1) for m in REPLICATED},
            }
        )
        lens = pd.DataFrame(
            {
                "layer": np.repeat(self._layers + [self._n_layers], n_b).astype(np.int64),
                "replicate": np.tile(np.arange(n_b), len(self._layers) + 1).astype(np.int64),
                "lens_loss": self.replicated["lens"].means().cpu().numpy().reshape(-1),
            }
        )
        return {"updates_replicates": steps, "lens_loss_replicates": lens}

    @classmethod
    def findings(cls, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        return updates_findings(tables["updates"])


def _document_intervals(replicated: dict[str, ReplicateSums], metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{metric}_ci_low/_ci_high per row: the 95% percentile interval of the document bootstrap's replicates."""
    from ..bootstrap import percentile_interval

    out = {}
    for metric in metrics:
        bounds = np.array([percentile_interval(r) for r in replicated[metric].means().cpu().numpy()]).reshape(-1, 2)
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = bounds[:, 0], bounds[:, 1]
    return out


def _mean_or_nan(moments: GroupedMoments) -> np.ndarray:
    mean = moments.mean().cpu().numpy()
    return np.where(moments.count.cpu().numpy() > 0, mean, np.nan)


def updates_findings(updates: pd.DataFrame) -> dict[str, Any]:
    steps = updates[updates["component"] != "output"].copy()
    half_width = 1.96 * steps["descent_cos_std"] / np.sqrt(steps["count"].clip(lower=1))
    steps["ci_low"] = steps["descent_cos_mean"] - half_width
    steps["ci_high"] = steps["descent_cos_mean"] + half_width
    positive = {c: [int(l) for l in rows.loc[rows["ci_low"] > 0, "layer"]] for c, rows in steps.groupby("component", sort=False)}
    lens = updates.drop_duplicates("layer").sort_values("layer")
    losses = lens["lens_loss_mean"].to_numpy(dtype=float)
    drops = -np.diff(losses)
    chance = float(updates["chance_cos_std"].iloc[0]) if len(updates) else float("nan")
    return {
        # token-level intervals (tokens taken as independent); the claims table's are over documents
        "descent_positive_layers_token_level": positive,
        "descent_ci_token_level": {
            c: {int(r.layer): [float(r.ci_low), float(r.ci_high)] for r in rows.itertuples()}
            for c, rows in steps.groupby("component", sort=False)
        },
        "chance_cos_std": chance,
        "lens_loss": {int(l): float(v) for l, v in zip(lens["layer"], losses)},
        "lens_loss_falls_every_layer": bool(len(drops) > 0 and (drops > 0).all()),
        "lens_loss_rising_after_layers": [int(l) for l, d in zip(lens["layer"].iloc[:-1], drops) if d <= 0],
        "lens_loss_total_drop": float(losses[0] - losses[-1]) if len(losses) else float("nan"),
        "n_nonfinite": int(updates["n_nonfinite"].sum()),
        "descent_cos_mean": {
            c: {int(r.layer): float(r.descent_cos_mean) for r in rows.itertuples()}
            for c, rows in steps.groupby("component", sort=False)
        },
        **_meaningful_readout(lens),
        **_first_order(steps),
    }


def _meaningful_readout(lens: pd.DataFrame) -> dict[str, Any]:
    """Layers whose lens loss exceeds log(V), the loss of a uniform guess: the readout says nothing there."""
    if "uniform_loss" not in lens or lens.empty:
        return {}
    uniform = float(lens["uniform_loss"].iloc[0])
    above = lens["lens_loss_mean"] > uniform
    meaningful = lens.loc[~above, ["layer", "lens_loss_mean"]]
    first = meaningful.iloc[0] if len(meaningful) else None
    return {
        "uniform_loss": uniform,
        "readout_not_meaningful_layers": [int(l) for l in lens.loc[above, "layer"]],
        "first_meaningful_layer": int(first["layer"]) if first is not None else None,
        "lens_loss_drop_from_first_meaningful": (
            float(first["lens_loss_mean"] - lens["lens_loss_mean"].iloc[-1]) if first is not None else float("nan")
        ),
    }


def _first_order(steps: pd.DataFrame) -> dict[str, Any]:
    """Per layer, the mean loss change a step makes against the change its linear picture g·Δ predicts."""
    if "predicted_change_mean" not in steps:
        return {}
    return {
        "first_order": {
            c: {int(r.layer): [float(r.predicted_change_mean), float(r.actual_change_mean)] for r in rows.itertuples()}
            for c, rows in steps.groupby("component", sort=False)
        }
    }


def add_to_updates(probe, batch: Batch) -> None:
    """The updates probe's statistics from one batch under the model readout (its `begin_batch`).

    The model's loss fills the lens rows of every layer: read through the rest of the network, h_l
    gives the model's own loss at any depth. The start-of-step values (descent_cos and the rest) and
    actual_change are filled only with `probe.ablate`, which reruns without each update.
    """
    from ..readouts.model import COMPONENTS, gradient_steps, start_of_step, start_values

    positions = batch.positions[batch.has_next]
    if positions.numel() == 0:
        return
    width = probe._seq_len
    windows = token_windows(batch.has_next)  # each kept token's window, for its document's bootstrap weights

    def add(moments, groups, values, replicated: str | None = None):
        moments.add(groups, values)
        if replicated is not None and replicated in probe.replicated:
            probe.replicated[replicated].add(groups, values, windows, batch.replicate_weights)

    def group(row: int) -> torch.Tensor:
        return torch.full((positions.shape[0],), row, device=positions.device)

    def on_layer(layer: int, values: dict[str, dict[str, torch.Tensor]]) -> None:
        slot = probe._slot[layer]
        for c, component in enumerate(COMPONENTS):
            row = slot * len(COMPONENTS) + c
            for metric, v in values[component].items():
                add(probe.moments[metric], group(row), v, metric)

    def add_start(slot: int, c: int, values: dict[str, torch.Tensor]) -> None:
        row = slot * len(COMPONENTS) + c
        for metric, v in values.items():
            add(probe.moments[metric], group(row), v, metric)
        cos = values["descent_cos"]
        finite = cos[torch.isfinite(cos)]
        bins = ((finite.clamp(-1, 1) + 1) / 2 * HIST_BINS).long().clamp(max=HIST_BINS - 1)
        probe.histogram[row].index_add_(0, bins, torch.ones_like(finite, dtype=torch.float64))
        if COMPONENTS[c] == "block":
            add(probe.cos_by_position, slot * width + positions, cos)

    done = gradient_steps(probe._model, batch, probe._layers, on_layer, probe.vocab_chunk, keep_streams=probe.ablate)
    for slot in range(len(probe._layers) + 1):
        add(probe.lens, group(slot), done.loss, "lens")
        add(probe.lens_by_position, slot * width + positions, done.loss)
    if probe.ablate:  # the start of each step needs the rerun without the update
        for slot, layer in enumerate(probe._layers):
            for c, component in enumerate(COMPONENTS):
                without, g_start = start_of_step(probe._model, batch, done.streams, layer, component, probe.vocab_chunk)
                add_start(slot, c, start_values(done.deltas[layer][component], g_start, done.loss, without))

"""`lens`: every layer read out through the run's readout (the logit lens, or a tuned lens), against the output.

For each layer l and component (the site read: `resid_pre`, h_l, and optionally `resid_mid`) and for
the model's own output (layer n_layers, component `output`): the readout's next-token cross-entropy,
its KL divergence from the model's output distribution KL(p_out ‖ p_l), its entropy, the target's
rank (1 = no token above it), whether the target is its top-1, and whether its top-1 is the output's.
Everything a plain loop over Hugging Face's hidden states would compute (final norm, head, log-softmax),
with the document bootstrap's replicate sums beside the means. The probe keeps the batch's hidden
states of every layer read (as `output_hidden_states` does) so that the output distribution, which
comes last, is known when each layer is compared with it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..bootstrap import DEFAULT_REPLICATES
from ..lens_stats import METRICS, block_statistics
from ..memory import LENS_BLOCK
from ..probe import Probe
from ..stats import GroupedMoments, ReplicateSums, token_windows

SITES = ("resid_pre", "resid_mid")
REPLICATED = ("lens_loss", "kl", "entropy", "target_top1", "top1_agree")  # metrics with document-bootstrap replicates
# Logits (rows x vocabulary) in one block: 128 MB in float32, at most three such buffers (the batch size sets
# them aside: memory.READOUT_BYTES). Each block reads the whole unembedding once, so small blocks are bound by
# that read: at GPT-2-small's shape, 4,096 tokens a batch, blocks of 16 MB took 67-72 s for the pass, 64 MB
# 50 s, 128 MB 47 s and 256 MB 51 s (2 CPU cores).
ROW_LOGITS = LENS_BLOCK


class LensProbe(Probe):
    name = "lens"
    description = "each layer read out against the output: cross-entropy, KL to the output, entropy, target rank, top-1 agreement"

    def __init__(
        self, layers: list[int] | None = None, readout: str = "logit", sites: tuple[str, ...] = ("resid_pre",), **options: Any
    ):
        super().__init__(layers, readout=readout, **options)
        self.readout_spec = readout
        self.sites = tuple(sites)

    def setup(self, model, seq_len: int) -> None:
        from ..errors import NormprobeError
        from ..readouts import make_readout

        bad = [s for s in self.sites if s not in SITES]
        if bad or not self.sites:
            raise NormprobeError(f"lens reads sites {', '.join(SITES)} (got {', '.join(self.sites) or 'none'})")
        self._readout = make_readout(model, self.readout_spec)
        if self._readout.kind not in ("logit", "tuned"):
            raise NormprobeError(f"the lens probe reads the logit or a tuned readout, not {self._readout.kind!r}")
        if self._readout.kind == "tuned" and "resid_mid" in self.sites:
            raise NormprobeError("a tuned lens is trained on resid_pre: lens reads resid_mid with the logit readout only")
        missing = [s for s in self.sites if s not in model.sites]
        if missing:
            raise NormprobeError(f"model {model.source.name} has no {missing[0]} (a parallel-attention family)")
        layers = self.selected_layers(model.n_layers)
        self._n_layers, self._vocab = model.n_layers, model.d_vocab
        # (layer, component, hook) per row: the layers' sites, then the output
        self._rows = [(l, s, model.hook_name(s, l)) for l in layers for s in SITES if s in self.sites]
        self._final = model.hook_name("resid_post", model.n_layers - 1)
        self._rows.append((model.n_layers, "output", self._final))
        n = len(self._rows)
        device = model.device
        self.moments = {m: GroupedMoments(n, device, track_extremes=False) for m in METRICS}
        self._n_replicates = int(self.options.get("replicates") or DEFAULT_REPLICATES)
        self.replicated = {m: ReplicateSums(n, self._n_replicates, device) for m in REPLICATED}

    def hook_points(self) -> list[str]:
        return sorted({h for *_, h in self._rows})

    def reduce(self, hook_name, activation, batch):
        return activation[batch.has_next]  # [N, d] in the model's dtype: the rows with a next token

    def update(self, activations: dict[str, Any], batch) -> None:
        read = batch.has_next
        targets = batch.next_tokens[read]
        n = targets.shape[0]
        if n == 0:
            return
        values = {m: torch.empty(len(self._rows), n) for m in METRICS}
        step = max(1, ROW_LOGITS // self._vocab)
        last = len(self._rows) - 1
        buffers = (torch.empty(0), torch.empty(0))
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            t = targets[r0:r1].to(self._readout.base.device)
            if buffers[0].numel() < (r1 - r0) * self._vocab:
                buffers = tuple(torch.empty((r1 - r0) * self._vocab, device=t.device) for _ in range(2))
            view = [b[: (r1 - r0) * self._vocab].view(r1 - r0, self._vocab) for b in buffers]
            own, reference = block_statistics(self._logits(activations[self._final][r0:r1], self._n_layers), t, None, view[0])
            own["kl"], own["top1_agree"] = torch.zeros_like(own["lens_loss"]), torch.ones_like(own["lens_loss"])
            self._store(values, last, r0, r1, own)
            for row, (layer, _, hook) in enumerate(self._rows[:-1]):
                stats, _ = block_statistics(self._logits(activations[hook][r0:r1], layer), t, reference, view[1])
                self._store(values, row, r0, r1, stats)
        groups = torch.arange(len(self._rows))[:, None].expand(-1, n).reshape(-1)
        windows = token_windows(read).expand(len(self._rows), -1).reshape(-1)
        for metric, v in values.items():
            self.moments[metric].add(groups, v.reshape(-1))
            if metric in self.replicated:
                self.replicated[metric].add(groups, v.reshape(-1), windows, batch.replicate_weights)

    def _logits(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        return self._readout.logits(h, layer)

    @staticmethod
    def _store(values, row: int, r0: int, r1: int, stats: dict[str, torch.Tensor]) -> None:
        for metric, v in stats.items():
            values[metric][row, r0:r1] = v.cpu()

    # -- merging and state -----------------------------------------------
    def merge(self, other: LensProbe) -> None:
        for key, moments in self.moments.items():
            moments.merge(other.moments[key])
        for key, sums in self.replicated.items():
            sums.merge(other.replicated[key])

    def state_dict(self) -> dict[str, Any]:
        return {
            "moments": {k: m.state_dict() for k, m in self.moments.items()},
            "replicated": {k: r.state_dict() for k, r in self.replicated.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, moments in self.moments.items():
            moments.load_state_dict(state["moments"][key])
        for key, sums in self.replicated.items():
            sums.load_state_dict(state["replicated"][key])

    # -- tables ----------------------------------------------------------
    def result(self) -> dict[str, pd.DataFrame]:
        from ..bootstrap import percentile_interval

        layers = np.array([l for l, _, _ in self._rows], dtype=np.int64)
        components = [c for _, c, _ in self._rows]
        loss = self.moments["lens_loss"]
        columns: dict[str, Any] = {
            "layer": layers,
            "component": components,
            "count": loss.count.cpu().numpy().astype(np.int64),
            "lens_loss_mean": loss.mean().cpu().numpy(),
            "lens_loss_std": loss.std().cpu().numpy(),
        }
        for metric in METRICS[1:]:
            columns[f"{metric}_mean"] = self.moments[metric].mean().cpu().numpy()
        for metric in ("lens_loss", "kl", "top1_agree"):
            bounds = np.array([percentile_interval(r) for r in self.replicated[metric].means().cpu().numpy()]).reshape(-1, 2)
            columns[f"{metric}_ci_low"], columns[f"{metric}_ci_high"] = bounds[:, 0], bounds[:, 1]
        columns["n_nonfinite"] = loss.nonfinite.cpu().numpy().astype(np.int64)
        frame = pd.DataFrame(columns)
        frame["uniform_loss"] = math.log(self._vocab)  # the loss of predicting every token alike
        frame = frame[(frame["count"] > 0) | (frame["n_nonfinite"] > 0)].reset_index(drop=True)
        n_b = self._n_replicates
        replicates = pd.DataFrame(
            {
                "layer": np.repeat(layers, n_b),
                "component": np.repeat(components, n_b),
                "replicate": np.tile(np.arange(n_b), len(self._rows)).astype(np.int64),
                **{m: self.replicated[m].means().cpu().numpy().reshape(-1) for m in REPLICATED},
            }
        )
        return {"lens": frame, "lens_replicates": replicates}

    @classmethod
    def findings(cls, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        return lens_findings(tables["lens"])


def lens_findings(lens: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers of the residual stream's readings (resid_pre and the output), from the table alone."""
    stream = lens[lens["component"].isin(["resid_pre", "output"])].sort_values("layer")
    if stream.empty:
        return {}
    losses = stream["lens_loss_mean"].to_numpy(dtype=float)
    uniform = float(stream["uniform_loss"].iloc[0])
    meaningful = stream.loc[stream["lens_loss_mean"] <= uniform, "layer"]
    agree = stream.loc[stream["top1_agree_mean"] > 0.5, "layer"]
    return {
        "lens_loss": {int(l): float(v) for l, v in zip(stream["layer"], losses)},
        "kl_to_output": {int(l): float(v) for l, v in zip(stream["layer"], stream["kl_mean"])},
        "top1_agree": {int(l): float(v) for l, v in zip(stream["layer"], stream["top1_agree_mean"])},
        "uniform_loss": uniform,
        "first_meaningful_layer": int(meaningful.iloc[0]) if len(meaningful) else None,
        "first_layer_agreeing_with_output": int(agree.iloc[0]) if len(agree) else None,
        "lens_loss_total_drop": float(losses[0] - losses[-1]),
        "n_nonfinite": int(lens["n_nonfinite"].sum()),
    }

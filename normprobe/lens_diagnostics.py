"""How good a tuned lens is on the probe corpus: per layer, the next-token cross-entropy read through it and the
KL divergence from the model's own output distribution to the lens's (the quantity tuned-lens trains on).

The runner adds this probe to every run whose readout is a tuned lens; run.json's `lens_diagnostics` holds its
numbers by layer, and says `in_sample` when the lens was trained on the probe corpus itself (`lens train`
records the training corpus's sha256 in the lens folder's training.json, beside config.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from .probe import Probe
from .stats import GroupedMoments

TRAINING_FILE = "training.json"  # written by `normprobe lens train` beside the tuned-lens config


def lens_training_digest(readout: str) -> str | None:
    """The sha256 of the corpus a tuned lens was trained on, when its folder records one."""
    from .readouts import parse_readout

    spec = parse_readout(readout)
    if spec.kind != "tuned" or spec.path is None:
        return None
    try:
        from .errors import NormprobeError
        from .jsonio import read_json

        found = read_json(Path(spec.path) / TRAINING_FILE, "").get("corpus_sha256")
    except (NormprobeError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def is_tuned(readout: Any) -> bool:
    return str(getattr(readout, "text", readout) or "").strip().startswith("tuned:")


class LensDiagnosticsProbe(Probe):
    name = "lens_diagnostics"
    description = (
        "the tuned lens on the probe corpus, per layer: next-token cross-entropy and KL(model output || lens); "
        "the last row (layer n_layers) is the model's own output"
    )

    def __init__(self, layers: list[int] | None = None, readout: str = "logit", vocab_chunk: int = 1 << 24, **options: Any):
        super().__init__(None, readout=readout)  # every layer: the lens is judged as a whole
        self.readout_spec = readout
        self.vocab_chunk = vocab_chunk

    def setup(self, model, seq_len: int) -> None:
        from .readouts import make_readout

        self._model = model
        self._readout = make_readout(model, self.readout_spec)
        self._n_layers, self._vocab = model.n_layers, model.d_vocab
        self._hooks = {model.hook_name("resid_pre", l): l for l in range(model.n_layers)}
        self._final = model.hook_name("resid_post", model.n_layers - 1)
        self.ce = GroupedMoments(model.n_layers + 1, model.device, track_extremes=False)
        self.kl = GroupedMoments(model.n_layers + 1, model.device, track_extremes=False)

    def hook_points(self) -> list[str]:
        return [*self._hooks, self._final]

    def reduce(self, hook_name, activation, batch):
        return activation[batch.has_next].float()

    def begin_batch(self, batch) -> None:
        """The model's output h_L first (a light forward with one hook): each layer's KL needs it as it streams."""
        self._targets = batch.next_tokens[batch.has_next]
        self._output: torch.Tensor | None = None
        if self._targets.numel():
            kept: dict[str, torch.Tensor] = {}
            self._model.forward(
                batch.tokens,
                batch.mask.long(),
                [(self._final, lambda a, hook=None: kept.__setitem__("h", self.reduce("", a, batch)))],
            )
            self._output = kept["h"]

    def update_layer(self, layer: int, activations: dict[str, Any], batch) -> None:
        if self._output is None:
            return
        for name, h in activations.items():
            self._add(self._n_layers if name == self._final else self._hooks[name], h)

    def update(self, activations: dict[str, Any], batch) -> None:
        if activations:  # a whole batch at once (a hand-driven caller)
            self.begin_batch(batch)
            for name, h in activations.items():
                if self._output is not None:
                    self._add(self._n_layers if name == self._final else self._hooks[name], h)

    def _add(self, row: int, h: torch.Tensor) -> None:
        base, model_output = self._readout.base, self._output
        if model_output is None:  # the batch had no token with a next token
            return
        step = max(1, self.vocab_chunk // self._vocab)
        for s in range(0, h.shape[0], step):
            output = torch.log_softmax(base.logits(model_output[s : s + step]), dim=-1)
            lens = torch.log_softmax(base.logits(self._readout.translate(h[s : s + step], row)), dim=-1)
            kl = (output.exp() * (output - lens)).sum(-1)
            ce = -lens.gather(-1, self._targets[s : s + step, None]).squeeze(-1)
            groups = torch.full_like(self._targets[s : s + step], row)
            self.kl.add(groups, kl)
            self.ce.add(groups, ce)

    def merge(self, other: Probe) -> None:
        theirs = cast(LensDiagnosticsProbe, other)
        self.ce.merge(theirs.ce)
        self.kl.merge(theirs.kl)

    def state_dict(self) -> dict[str, Any]:
        return {"ce": self.ce.state_dict(), "kl": self.kl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ce.load_state_dict(state["ce"])
        self.kl.load_state_dict(state["kl"])

    def result(self) -> dict[str, pd.DataFrame]:
        return {
            "lens_diagnostics": pd.DataFrame(
                {
                    "layer": np.arange(self._n_layers + 1, dtype=np.int64),
                    "count": self.ce.counts().cpu().numpy(),
                    "ce_mean": self.ce.mean().cpu().numpy(),
                    "ce_std": self.ce.std().cpu().numpy(),
                    "kl_mean": self.kl.mean().cpu().numpy(),
                    "kl_std": self.kl.std().cpu().numpy(),
                }
            )
        }

    @classmethod
    def findings(cls, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        frame = tables["lens_diagnostics"]
        measured = frame[frame["count"] > 0]
        return {
            "heldout_ce_by_layer": {int(l): float(v) for l, v in zip(measured["layer"], measured["ce_mean"])},
            "kl_to_output_by_layer": {int(l): float(v) for l, v in zip(measured["layer"], measured["kl_mean"])},
        }


def check_in_sample(readout: str, corpus_sha256: str | None, talk: bool = True) -> bool:
    """Warn (one line) when the tuned lens was trained on the very corpus it is now judged on."""
    from .console import warn

    trained_on = lens_training_digest(readout)
    in_sample = trained_on is not None and trained_on == corpus_sha256
    if trained_on is not None and in_sample and talk:
        warn(
            f"the tuned lens {readout[len('tuned:') :]} was trained on this probe corpus (sha256 {trained_on[:12]}…): "
            "its losses here are in-sample; probe another part of the corpus"
        )
    return in_sample


def record_diagnostics(result, readout: str, corpus_sha256: str | None) -> None:
    """run.json's `lens_diagnostics`: held-out CE and KL by layer, and whether they are in-sample."""
    found = result.descriptive(LensDiagnosticsProbe.name) if result is not None else None
    if not found:
        return
    trained_on = lens_training_digest(readout)
    result.meta["lens_diagnostics"] = {
        **found,
        "lens_corpus_sha256": trained_on,
        "probe_corpus_sha256": corpus_sha256,
        "in_sample": trained_on is not None and trained_on == corpus_sha256,
    }

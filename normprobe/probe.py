"""The public probe API. Built-in probes use nothing beyond it; so can yours.

A probe's life in a run:
  1. `setup(model, seq_len)` once, with the `ModelAdapter`: allocate accumulators.
  2. `hook_points()` names what it reads: TransformerLens hook names such as
     "blocks.3.attn.hook_pattern", or (site, layer) pairs such as ("resid_pre", 3) that the
     adapter resolves (sites: resid_pre, resid_mid, resid_post, attn_out, mlp_out, and
     attn_pattern, the attention weights [batch, query head, query, key]). The
     activations handed to `reduce` and `update` are keyed by the resolved hook name,
     which `model.hook_name(site, layer)` gives.
  3. For every batch, the runner calls `begin_batch(batch)`, then `reduce(hook_name, activation,
     batch)` inside each hook (keep this small: return only what `update` needs) and then
     `update(reduced, batch)` once with every hook point's reduced value.
     A probe that overrides `update_layer(layer, reduced, batch)` streams instead: it gets a
     layer's reduced values as soon as all of its hook points in that layer have fired, and the
     runner forgets them; `update` then gets only the hook points outside any layer. Memory
     then stays flat in depth however much a probe keeps per layer.
  4. `merge(other)` folds in another instance's statistics (shards, ranks).
  5. `result()` turns the statistics into named tidy DataFrames (by then a model the runner loaded
     itself has released its weights, `ModelAdapter.release_weights`: keep statistics, not tensors of
     the model; the tokenizer and `token_strings` stay); `findings(tables)` into a
     JSON-able dict of descriptive numbers, computed from the tables alone whenever asked (never
     saved, never a conclusion: normprobe's conclusions are its claims, normprobe.claims).
`state_dict()` / `load_state_dict()` save and restore the statistics for checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from .adapter import ModelAdapter
    from .batching import Batch


class Probe:
    """Base class of every probe. Subclasses set `name` and `description` and override the methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, layers: list[int] | None = None, **options: Any):
        self.layers = layers
        self.options = options

    def setup(self, model: ModelAdapter, seq_len: int) -> None:
        """Allocate statistics for this model; positions run from 0 to seq_len - 1. Called once."""

    def hook_points(self) -> list:
        """TransformerLens hook names, or (site, layer) pairs, that this probe reads."""
        raise NotImplementedError

    def reduce(self, hook_name: str, activation: torch.Tensor, batch: Batch) -> Any:
        """Reduce an activation where it stands (inside the hook). The default keeps it whole."""
        return activation.detach()

    def begin_batch(self, batch: Batch) -> None:
        """Called before each batch's forward pass (optional)."""

    def update_layer(self, layer: int, activations: dict[str, Any], batch: Batch) -> None:
        """Accumulate one layer's reduced activations, inside the forward pass (optional: see the module doc)."""
        raise NotImplementedError

    @property
    def streams_layers(self) -> bool:
        return type(self).update_layer is not Probe.update_layer

    def update(self, activations: dict[str, Any], batch: Batch) -> None:
        """Accumulate statistics from one batch's reduced activations."""
        raise NotImplementedError

    def merge(self, other: Any) -> None:
        """Fold another instance's statistics into this one."""
        raise NotImplementedError

    def result(self) -> dict[str, pd.DataFrame]:
        """Named tidy tables."""
        raise NotImplementedError

    @classmethod
    def findings(cls, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        """Descriptive numbers computed from the tables alone (recomputed when asked; they conclude nothing)."""
        return {}

    # Optional: `figures(cls, tables) -> list[plotly Figure]`, a classmethod drawing the report
    # section from the tables alone. Without it the report shows those numbers and table previews.

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError(f"probe {self.name!r} cannot be checkpointed")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError(f"probe {self.name!r} cannot be checkpointed")

    def selected_layers(self, n_layers: int) -> list[int]:
        return list(range(n_layers)) if self.layers is None else list(self.layers)

"""Null baselines: the same probes, readout, windows and batches, through another model or another view of the corpus.

- `random-init`: the model's architecture re-initialised by its own Hugging Face initialiser (`from_config`,
  which runs `init_weights` / `_init_weights`), one model per seed; seed s is `torch.manual_seed(s)`.
- `shuffled`: the model itself, with each window's tokens permuted; position 0 (BOS, or the first token
  when there is none) stays in place. The permutation is seeded by the window's own token ids, so it does
  not depend on the document's place in the corpus, on shards, ranks or batches.
- `no-bos`: the model itself on the same windows with the prepended BOS removed.

A baseline is one more pass of the runner's loop (see Runner.execute): nothing in a probe knows about it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import NormprobeError, did_you_mean

if TYPE_CHECKING:
    from .batching import Window

DEFAULT_BASELINE_SEEDS = 3
BASELINE_FOLDER = "baselines"
DESCRIPTIONS = {
    "random-init": "the same architecture re-initialised by its own Hugging Face initialiser (one model per seed, "
    "seed s = torch.manual_seed(s)), probed on the same windows",
    "shuffled": "the same model on the same windows with the tokens permuted within each window (position 0 kept in "
    "place; permutation seeded by the window's token ids)",
    "no-bos": "the same model on the same windows without the prepended BOS token",
}
BASELINE_KINDS = tuple(DESCRIPTIONS)
# Passes that reuse the loaded model run first; random-init replaces the model and so comes last.
_ORDER = ("shuffled", "no-bos", "random-init")


def check_baselines(baselines: Iterable[str] | None, seeds: int, prepend_bos: bool) -> list[str]:
    """The requested kinds, deduplicated in a fixed order; a bad request is one line, before any model loads."""
    kinds = list(baselines or [])
    for kind in kinds:
        if kind not in DESCRIPTIONS:
            hint = did_you_mean(str(kind), BASELINE_KINDS, 0.6)
            raise NormprobeError(f"unknown --baseline {kind!r}; choose from {', '.join(BASELINE_KINDS)}{hint}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise NormprobeError(f"--baseline-seeds must be at least 1 (got {seeds!r})")
    if "no-bos" in kinds and not prepend_bos:
        raise NormprobeError("--baseline no-bos compares with the prepended BOS; it does not combine with --no-prepend-bos")
    return [k for k in _ORDER if k in kinds]


@dataclass(frozen=True)
class BaselinePass:
    """One pass of a baseline: a kind, and for random-init its seed."""

    kind: str
    seed: int | None = None

    @property
    def key(self) -> str:
        """The name of this pass in checkpoints, and the bootstrap unit of a random-init seed."""
        return self.kind if self.seed is None else f"{self.kind}/seed={self.seed}"

    @property
    def bootstrap_unit(self) -> str | None:
        return self.key if self.seed is not None else None


def plan_passes(kinds: list[str], seeds: int) -> list[BaselinePass]:
    passes: list[BaselinePass] = []
    for kind in kinds:
        passes.extend(BaselinePass(kind, s) for s in range(seeds)) if kind == "random-init" else passes.append(BaselinePass(kind))
    return passes


def baseline_record(kind: str, seeds: int) -> dict[str, Any]:
    """What run.json says about one baseline (its tables and counts are added when it is done)."""
    return {"seeds": list(range(seeds)) if kind == "random-init" else None, "description": DESCRIPTIONS[kind]}


# -- corpus views ---------------------------------------------------------------------
def window_seed(tokens: list[int]) -> int:
    """A 64-bit seed from a window's token ids alone."""
    data = b"normprobe-shuffled\0" + b"".join(int(t).to_bytes(8, "little", signed=True) for t in tokens)
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


def shuffle_tokens(tokens: list[int]) -> list[int]:
    """Position 0 kept, the rest permuted by a generator seeded by the tokens themselves."""
    import numpy as np

    if len(tokens) <= 2:
        return list(tokens)
    order = np.random.default_rng(window_seed(tokens)).permutation(len(tokens) - 1) + 1
    return [tokens[0]] + [tokens[i] for i in order.tolist()]


def view_windows(kind: str, windows: Iterable[Window], bos: int | None) -> Iterator[Window]:
    """The windows a baseline pass reads: the model's own for random-init, shuffled or without BOS otherwise.

    Only the tokens change: a window keeps its document (index, and whatever else identifies it).
    """
    from dataclasses import replace

    if kind == "random-init":
        yield from windows
    elif kind == "shuffled":
        for window in windows:
            yield replace(window, tokens=shuffle_tokens(window.tokens))
    elif kind == "no-bos":
        if bos is None:
            raise NormprobeError(
                "--baseline no-bos needs a BOS token to remove, and this run prepends none (the tokenizer has no BOS)"
            )
        for window in windows:
            yield replace(window, tokens=window.tokens[1:] if window.tokens[:1] == [bos] else list(window.tokens))
    else:
        raise NormprobeError(f"unknown baseline {kind!r}")


# -- random-init models ----------------------------------------------------------------
def random_init_hf_model(config: Any, seed: int, dtype: str = "float32"):
    """The architecture of `config` initialised by its own Hugging Face initialiser under torch.manual_seed(seed).

    The global generator is restored afterwards, so a baseline never shifts the caller's random stream.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.to(getattr(torch, dtype)).eval()


def random_init_adapter(config: Any, tokenizer: Any, seed: int, name: str, device: str, dtype: str):
    """A `ModelAdapter` over a freshly initialised copy of the architecture."""
    from .adapter import ModelAdapter

    hf_model = random_init_hf_model(config, seed, dtype).to(device)
    adapter = ModelAdapter.from_hf_model(hf_model, tokenizer, name=f"{name} (random init, seed {seed})", device=device)
    adapter.random_init = True  # a tuned lens is checked against the trained model, whose pass comes first
    return adapter

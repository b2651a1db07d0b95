"""normprobe: probe how causal language models shape token representations, layer by layer.

Light to import: torch, TransformerLens and plotly load only when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import NormprobeError
from .probe import Probe

__version__ = "0.1.0"

_LAZY = {
    "run": ("normprobe.runner", "run"),
    "load_model": ("normprobe.adapter", "load_model"),
    "ModelAdapter": ("normprobe.adapter", "ModelAdapter"),
    "RunResult": ("normprobe.run_result", "RunResult"),
    "GroupedMoments": ("normprobe.stats", "GroupedMoments"),
    "Batch": ("normprobe.batching", "Batch"),
    "resolve_probe": ("normprobe.registry", "resolve_probe"),
    "compare": ("normprobe.api", "compare"),
    "Comparison": ("normprobe.comparison", "Comparison"),
    "merge_shards": ("normprobe.api", "merge_shards"),
    "trace": ("normprobe.tracing", "trace"),
    "Trace": ("normprobe.tracing", "Trace"),
}

__all__ = ["NormprobeError", "Probe", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'normprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    # tab completion and dir() show the public names, the lazily loaded ones too, and nothing else
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from .adapter import ModelAdapter, load_model
    from .api import compare, merge_shards
    from .batching import Batch
    from .comparison import Comparison
    from .registry import resolve_probe
    from .run_result import RunResult
    from .runner import run
    from .stats import GroupedMoments
    from .tracing import Trace, trace

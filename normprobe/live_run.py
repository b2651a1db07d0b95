"""A run under way, shared by the runner and its baseline passes: the live state that checkpoints hold, making
and merging probes, and a finished pass's result."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import NormprobeError

ZERO_PROGRESS = {"batches": 0, "tokens": 0, "windows": 0, "docs": 0}


@dataclass
class LiveRun:
    """What the loop needs while a run is under way, across all its passes."""

    sync: Any
    folder: Any
    meta: dict[str, Any]
    done: dict[str, Any]  # the model's own pass (its seconds count the whole run's time)
    main: Any  # the model's probes while they live, then their state
    batch_size: int
    checkpoint_every: int | None
    checkpoint_seconds: float
    talk: bool
    started: float
    passes: dict[str, dict[str, Any]] = field(default_factory=dict)  # pass key -> probes|state, progress, complete
    stops: Any = None
    last_save: float = field(default_factory=time.time)

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "probes": _states(self.main),
            "progress": dict(self.done),
            "baselines": {
                key: {"probes": _states(entry["probes"]), "progress": dict(entry["progress"]), "complete": entry["complete"]}
                for key, entry in self.passes.items()
            },
        }


def _states(probes: Any) -> dict[str, Any]:
    if isinstance(probes, list):
        return {p.name: p.state_dict() for p in probes}
    return probes if probes is not None else {}


def baselines_from_checkpoint(checkpoint: dict | None) -> dict[str, dict[str, Any]]:
    """The passes a checkpoint records, checked for the shape the runner writes."""
    found = (checkpoint or {}).get("baselines") or {}
    if not isinstance(found, dict):
        raise NormprobeError("the checkpoint's baselines are damaged; start the run again")
    passes = {}
    for key, entry in found.items():
        progress = entry.get("progress") if isinstance(entry, dict) else None
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("probes"), dict)
            and isinstance(progress, dict)
            and all(isinstance(progress.get(k), int) for k in ZERO_PROGRESS)
        ):
            raise NormprobeError(f"the checkpoint's baseline {key!r} is damaged; start the run again")
        passes[str(key)] = {
            "probes": entry["probes"],
            "progress": {k: progress[k] for k in ZERO_PROGRESS},
            "complete": bool(entry.get("complete")),
        }
    return passes


def make_probe(cls: type, layers: list[int] | None, options: dict[str, Any]):
    """An instance of a probe class, given those of the run's probe options its constructor accepts."""
    params = inspect.signature(cls).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        options = {k: v for k, v in options.items() if k in {p.name for p in params}}
    return cls(layers=layers, **options)


def merge_state(
    model, probes: list, state: dict[str, Any], seq_len: int, layers: list[int] | None, where: str = "another rank's statistics"
) -> None:
    """Merge saved probe statistics (another rank's or shard's) into `probes`."""
    from .store import restore_probe

    for probe in probes:
        other = make_probe(type(probe), layers, getattr(probe, "options", {}))
        other.setup(model, seq_len)
        restore_probe(other, state, where)
        probe.merge(other)


def run_result(probes, meta: dict[str, Any], done: dict[str, Any], seconds: float):
    from .run_result import RunResult

    tables: dict[str, Any] = {}
    owners: dict[str, list[str]] = {}
    for probe in probes:
        probe_tables = probe.result()
        clash = sorted(set(probe_tables) & set(tables))
        if clash:
            raise NormprobeError(f"probe {probe.name!r} returns table {clash[0]!r}, which another probe already returned")
        tables.update(probe_tables)
        owners[probe.name] = list(probe_tables)
    meta = {
        **meta,
        "status": "complete",
        "probe_tables": owners,
        "n_docs": done["docs"],
        "n_windows": done["windows"],
        "n_tokens": done["tokens"],
        "n_batches": done["batches"],
        "seconds": round(done["seconds"] + seconds, 3),
    }
    from .stats import nonfinite_layers

    meta.pop("nonfinite_layers", None)
    broken = nonfinite_layers(tables)  # recorded and said in one line: an empty cell is no zero
    if broken:
        meta["nonfinite_layers"] = broken
    # the classes the user ran draw their own figures; a folder loaded later names no code (docs/security.md)
    return RunResult(tables=tables, meta=meta, probe_modules=[type(p) for p in probes])

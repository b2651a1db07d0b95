"""The runner's baseline passes: the same loop (normprobe.loop), the same probes, another model or corpus view.

Order and memory: the model's own pass, then the passes that read the model's own weights (shuffled,
no-bos), then the model is freed and each random-init seed's model is built, run and freed in turn, so
at most one model is resident (unless the caller handed in a loaded model and still holds it).
Checkpoints hold every pass's statistics and progress under `baselines`, keyed by pass
(`shuffled`, `random-init/seed=1`, ...): a resumed run skips finished passes and continues the current one.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .baselines import BaselinePass, baseline_record, plan_passes, random_init_adapter, view_windows
from .errors import NormprobeError
from .live_run import ZERO_PROGRESS, make_probe, merge_state, run_result
from .loop import Loop


def _outside_inference():
    import torch

    return torch.inference_mode(False)


class BaselinePasses(Loop):
    """Mixed into Runner: everything about baseline passes except the loop itself (normprobe.loop)."""

    if TYPE_CHECKING:  # what Runner provides
        model: Any

    def check_baselines_fit(self, model, bos: int | None) -> None:
        if "no-bos" in (self.options.baselines or []) and bos is None:
            raise NormprobeError(f"--baseline no-bos needs a BOS token to remove; {model.source.name}'s tokenizer has none")

    def record_baselines(self, meta: dict[str, Any]) -> None:
        kinds = self.options.baselines or []
        if kinds:
            meta["baselines"] = {k: baseline_record(k, self.options.baseline_seeds) for k in kinds}

    @contextmanager
    def _pass_options(self, bpass: BaselinePass):
        """The run's options with this pass's bootstrap unit (a random-init seed), restored afterwards."""
        saved = self.options
        self.options = replace(saved, bootstrap_unit=bpass.bootstrap_unit)
        try:
            yield
        finally:
            self.options = saved

    def _passes(self) -> list[BaselinePass]:
        return plan_passes(list(self.options.baselines or []), self.options.baseline_seeds)

    def _run_pass(self, bpass: BaselinePass, model, seq_len: int, bos: int | None) -> list | None:
        """One baseline pass through the loop; returns its probes (merged over ranks on rank 0), or None when
        a checkpoint already holds it complete."""
        from .console import say
        from .store import restore_probe

        live = self._live
        entry = live.passes.setdefault(bpass.key, {"probes": {}, "progress": dict(ZERO_PROGRESS), "complete": False})
        if entry["complete"]:
            return None
        with _outside_inference():  # a readout built here must take gradients later
            # the run's own model was checked by its own pass: only fresh probes; a new model is checked whole
            probes = self.prepare(model)[0] if bpass.kind == "random-init" else self.set_up_probes(model, seq_len)
        if entry["probes"]:
            for probe in probes:
                restore_probe(probe, entry["probes"], Path(f"the checkpoint's baseline {bpass.key}"))
        entry["probes"] = probes
        say(f"baseline {bpass.key}", live.talk)
        windows, total = self._windows(model, seq_len, bos, live.sync)
        with self._pass_options(bpass):
            self._stream(model, probes, view_windows(bpass.kind, windows, bos), total, entry["progress"])
        sync = live.sync
        if sync.size > 1:
            states = sync.gather({p.name: p.state_dict() for p in probes})
            entry["progress"] = sync.totals(entry["progress"])
            if sync.rank == 0:
                for other in states[1:]:
                    merge_state(model, probes, other, seq_len, self.options.layers)
        entry.update(probes={p.name: p.state_dict() for p in probes}, complete=True)
        return probes

    def run_shared_baselines(self, model, seq_len: int, bos: int | None) -> dict[str, Any]:
        """The passes that read the loaded model (shuffled, no-bos): kind -> its result, or its state."""
        outcome = {}
        for bpass in self._passes():
            if bpass.kind != "random-init":
                probes = self._run_pass(bpass, model, seq_len, bos)
                outcome[bpass.kind] = self._baseline_result(model, probes, [self._live.passes[bpass.key]], seq_len)
        return outcome

    def run_random_init_baselines(self, handoff: list, seq_len: int, bos: int | None, outcome: dict[str, Any]) -> None:
        """Each seed's re-initialised model in turn, one resident at a time; the seeds merge into one result.

        `handoff` holds the only reference to the loaded model, which is freed before the first seed's
        model is built (unless the caller handed in a loaded model and still holds it).
        """
        seeds = [p for p in self._passes() if p.kind == "random-init"]
        if not seeds:
            handoff.clear()  # released already (Runner._release) or the caller's
            return
        model = handoff.pop()
        config, tokenizer = model.hf_config, model.tokenizer
        name, device, dtype = model.source.name, str(model.device), model.dtype
        del model
        gc.collect()
        current = None
        for bpass in seeds:
            if self._live.passes.get(bpass.key, {}).get("complete"):
                continue
            current = None
            gc.collect()  # the previous seed's model (and its probes) go before the next is built
            with _outside_inference():
                current = random_init_adapter(config, tokenizer, cast(int, bpass.seed), name, device, dtype)
            self._run_pass(bpass, current, seq_len, bos)  # its probes are dropped: the pass keeps their state
        if current is None:  # every seed was complete in the checkpoint: a model only to set up the probes
            with _outside_inference():
                current = random_init_adapter(config, tokenizer, cast(int, seeds[0].seed), name, device, dtype)
        outcome["random-init"] = self._baseline_result(current, None, [self._live.passes[p.key] for p in seeds], seq_len)

    def _baseline_result(self, model, probes: list | None, entries: list[dict], seq_len: int) -> dict[str, Any] | None:
        """Tables, counts and (for shards) the merged state of a baseline, from its passes' states.

        Several passes (random-init seeds) merge with probe.merge, as shards do. Ranks other than 0 get None.
        """
        if self._live.sync.rank != 0:
            return None
        if probes is None or len(entries) > 1:
            probes = [make_probe(cls, self.options.layers, self.options.probe_options()) for cls in self.probe_classes]
            with _outside_inference():
                for probe in probes:
                    probe.setup(model, seq_len)
                for entry in entries:
                    merge_state(model, probes, entry["probes"], seq_len, self.options.layers, where="a baseline pass")
        done: dict[str, Any] = {k: sum(e["progress"][k] for e in entries) for k in ("batches", "tokens", "windows")}
        done.update(docs=max(e["progress"]["docs"] for e in entries), seconds=0.0)
        if done["tokens"] == 0:
            raise NormprobeError("no tokens to probe in a baseline pass: its windows were empty")
        result = run_result(probes, {}, done, 0.0)
        return {
            "tables": result.tables,
            "counts": {"n_tokens": done["tokens"], "n_windows": done["windows"], "n_batches": done["batches"]},
            "state": {p.name: p.state_dict() for p in probes} if self.options.shard is not None else None,
        }

    def attach_baselines(self, result, outcome: dict[str, Any]) -> None:
        """Put each baseline's tables on the result and its record in run.json (rank 0 only)."""
        if result is None or not outcome:
            return
        records = {}
        for kind in self.options.baselines or []:
            done = outcome[kind]
            result.baselines[kind] = done["tables"]
            records[kind] = {**baseline_record(kind, self.options.baseline_seeds), **done["counts"]}
            if done["state"] is not None:
                from .store import shard_state

                result.baseline_states = {**(result.baseline_states or {}), kind: shard_state(result.meta, done["state"], kind)}
        result.meta["baselines"] = records


def read_shard_baselines(folders: list, metas: list[dict]) -> dict[str, list]:
    """`normprobe merge`, before the model loads: each baseline's shard states, read as data and checked."""
    from .results import STATE_FILE, baseline_folder
    from .store import load_shard_state

    states = {}
    for kind in list(metas[0].get("request", {}).get("baselines") or []):
        paths = [baseline_folder(Path(f), kind) / STATE_FILE for f in folders]
        missing = next((p for p in paths if not p.is_file()), None)
        if missing is not None:
            raise NormprobeError(f"{missing} is missing: the shard ran --baseline {kind} but kept no statistics for it")
        # each carries its run's identity, like the model's state.pt: one copied from another run is refused
        states[kind] = [(p, load_shard_state(p, meta, kind)) for p, meta in zip(paths, metas)]
    return states


def merge_shard_baselines(
    states: dict[str, list],
    metas: list[dict],
    model,
    probe_classes: list,
    options: dict[str, Any],
    layers: list[int] | None,
    seq_len: int,
    result,
) -> None:
    """`normprobe merge`: each baseline's shard states summed like the model's, into `result` (before it is saved)."""
    seeds = metas[0].get("request", {}).get("baseline_seeds", 3)
    records = {}
    for kind, shard_states in states.items():
        probes = [make_probe(cls, layers, options) for cls in probe_classes]
        for probe in probes:
            probe.setup(model, seq_len)
        for path, state in shard_states:
            merge_state(model, probes, state, seq_len, layers, where=str(path))
        shard_records = [(m.get("baselines") or {}).get(kind, {}) for m in metas]
        done: dict[str, Any] = {
            k: sum(int(r.get(f"n_{k}", 0) or 0) for r in shard_records) for k in ("tokens", "windows", "batches")
        }
        done.update(docs=0, seconds=0.0)
        merged = run_result(probes, {}, done, 0.0)
        result.baselines[kind] = merged.tables
        records[kind] = {
            **baseline_record(kind, seeds),
            "n_tokens": done["tokens"],
            "n_windows": done["windows"],
            "n_batches": done["batches"],
        }
    if states:
        result.meta["baselines"] = records

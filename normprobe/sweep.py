"""The outer loop: the same probes over a model's training checkpoints, one model in memory at a time.

A sweep folder holds one run folder per checkpoint (`step-N/`), `sweep.json`, `claims.parquet` (every
checkpoint's claims with its step) and `report.html`, the evolution report. Each checkpoint's results are
saved before the next one loads, so a sweep resumed with --resume skips the checkpoints that are complete
and continues the one that stopped. The random-init baseline depends only on the architecture, the corpus
and the seeds, not on the weights: it runs once, with the first checkpoint, and every later checkpoint of
the same architecture reuses its tables.
"""

from __future__ import annotations

import gc
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NormprobeError
from .jsonio import read_json

CLAIMS_FILE = "claims.parquet"
REUSED = "random-init"  # the baseline that depends on no checkpoint's weights
if TYPE_CHECKING:
    import pandas as pd

STEP_PATTERN = re.compile(r"(?:step|ckpt|checkpoint|iter|global_step)[-_]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Checkpoint:
    step: int
    model: str  # a local folder, or the Hub name
    checkpoint_value: int | None = None  # for Hub families with published checkpoints

    @property
    def folder_name(self) -> str:
        return f"step-{self.step}"


def step_of(folder: Path) -> int | None:
    """The training step of a checkpoint folder: from training_state.json / trainer_state.json, else its name."""
    for name, key in (("training_state.json", "step"), ("trainer_state.json", "global_step")):
        path = folder / name
        if path.is_file():
            try:
                value = read_json(path, "").get(key)
            except (NormprobeError, AttributeError):
                value = None
            if isinstance(value, int):
                return value
    match = STEP_PATTERN.search(folder.name)
    return int(match.group(1)) if match else None


def _local_checkpoints(folders: list[Path]) -> list[Checkpoint]:
    found = []
    for folder in folders:
        step = step_of(folder)
        if step is None:
            raise NormprobeError(
                f"cannot tell the training step of {folder}: name it step-N (or ckpt-N, checkpoint-N) "
                "or give it a training_state.json with a step"
            )
        found.append(Checkpoint(step, str(folder)))
    steps = [c.step for c in found]
    duplicates = sorted({s for s in steps if steps.count(s) > 1})
    if duplicates:
        raise NormprobeError(f"two checkpoints claim step {duplicates[0]}")
    return sorted(found, key=lambda c: c.step)


def looks_like_checkpoints(models: list[str]) -> bool:
    """Several local folders that each name a training step: a sweep rather than a comparison."""
    folders = [Path(m) for m in models]
    return len(models) > 1 and all(f.is_dir() and step_of(f) is not None for f in folders)


def plan(models: list[str], spec: str | None) -> list[Checkpoint]:
    """The checkpoints a --checkpoints SPEC (or several step-named folders) asks for, in training order."""
    if spec is None or spec == "local":
        folders = [Path(m) for m in models]
        if spec == "local" and len(folders) == 1:
            parent = folders[0]
            if not parent.is_dir():
                raise NormprobeError(f"--checkpoints local needs a folder of checkpoints; {parent} is not a folder")
            folders = sorted(p for p in parent.iterdir() if (p / "config.json").is_file())
            if not folders:
                raise NormprobeError(f"{parent} holds no checkpoint folders (subfolders with a config.json)")
        missing = [f for f in folders if not f.is_dir()]
        if missing:
            raise NormprobeError(f"checkpoint folder not found: {missing[0]}")
        return _local_checkpoints(folders)
    if len(models) != 1:
        raise NormprobeError("--checkpoints with steps takes one model name, e.g. EleutherAI/pythia-160m")
    from .adapter import resolve_source

    source = resolve_source(models[0])
    if source.kind != "hub":
        raise NormprobeError(
            "--checkpoints with steps is for Hub models that publish checkpoints; for folders use --checkpoints local"
        )
    labels = hub_checkpoint_labels(source.location)
    if spec == "all":
        chosen = labels
    elif spec.startswith("every:"):
        try:
            every = int(spec.split(":", 1)[1])
        except ValueError:
            every = 0
        if every < 1:
            raise NormprobeError(f"invalid --checkpoints {spec!r}; use every:K with K >= 1")
        chosen = [label for label in labels if label % every == 0]
    else:
        try:
            chosen = sorted({int(x) for x in spec.split(",") if x.strip()})
        except ValueError:
            raise NormprobeError(f"invalid --checkpoints {spec!r}; use steps like 0,512,1000, all, every:K or local") from None
        unknown = [c for c in chosen if c not in labels]
        if unknown:
            raise NormprobeError(
                f"{source.location} has no checkpoint at step {unknown[0]}; it has {len(labels)} from {labels[0]} to {labels[-1]}"
            )
    if not chosen:
        raise NormprobeError(f"--checkpoints {spec!r} selects no checkpoint of {source.location}")
    return [Checkpoint(step, models[0], checkpoint_value=step) for step in chosen]


def hub_checkpoint_labels(hub_id: str) -> list[int]:
    import logging

    from transformer_lens.tools.model_registry.checkpoints import get_checkpoint_labels

    logging.getLogger().setLevel(logging.ERROR)
    try:
        labels, _ = get_checkpoint_labels(hub_id)
    except (ValueError, OSError) as exc:
        raise NormprobeError(f"{hub_id} publishes no training checkpoints normprobe knows of ({exc})") from None
    return list(labels)


def run_sweep(
    checkpoints: list[Checkpoint],
    out: str | Path,
    *,
    probes: list[str],
    resume: bool = False,
    overwrite: bool = False,
    plotlyjs: str = "inline",
    progress: bool = True,
    **run_kwargs: Any,
) -> Path:
    """Run every checkpoint into OUT/step-N/, then write the evolution report OUT/report.html."""
    from .api import validate_runs
    from .lock import FolderLock
    from .results import check_output_dir

    out = Path(out)
    if resume:
        if not (out / "sweep.json").is_file():
            raise NormprobeError(f"{out} holds no sweep.json; is it a checkpoint sweep folder?")
        from .jsonio import read_json

        saved = read_json(out / "sweep.json", f"{out} holds no sweep.json")
        listed = saved.get("checkpoints") if isinstance(saved, dict) else None
        if not isinstance(listed, list) or not all(isinstance(c, dict) and "step" in c for c in listed):
            raise NormprobeError(f"{out / 'sweep.json'} is damaged: it lists no checkpoints")
        if [c["step"] for c in listed] != [c.step for c in checkpoints]:
            raise NormprobeError("cannot resume: the sweep's checkpoints differ from this command's")
    else:
        check_output_dir(out, overwrite)
    validate_runs([(c.model, c.checkpoint_value) for c in checkpoints], {**run_kwargs, "probes": probes})
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock.acquire(out):  # one sweep per folder; each checkpoint's run also locks its own folder
        return _sweep_into(out, checkpoints, probes, plotlyjs, progress, run_kwargs)


def _sweep_into(
    out: Path, checkpoints: list[Checkpoint], probes: list[str], plotlyjs: str, progress: bool, run_kwargs: dict[str, Any]
) -> Path:
    from .api import run_to_folder
    from .results import write_atomic

    write_atomic(
        out / "sweep.json",
        (json.dumps({"checkpoints": [asdict(c) for c in checkpoints], "probes": probes}, indent=2) + "\n").encode(),
    )
    reuse = REUSED in (run_kwargs.get("baselines") or []) and _one_architecture(checkpoints)
    for i, checkpoint in enumerate(checkpoints):
        folder = out / checkpoint.folder_name
        status = _status(folder)
        kwargs = dict(run_kwargs)
        if reuse and i > 0:  # the first checkpoint's random-init baseline serves every later one
            kwargs["baselines"] = [b for b in run_kwargs["baselines"] if b != REUSED]
        if status == "complete":
            if progress:
                print(f"normprobe: {checkpoint.folder_name} is complete; skipping", flush=True)
        else:
            can_resume = status in ("running", "interrupted", "failed") and (folder / "checkpoint.pt").is_file()
            run_to_folder(
                checkpoint.model,
                folder,
                probes=probes,
                resume=can_resume,
                overwrite=not can_resume,
                plotlyjs=plotlyjs,
                progress=progress,
                checkpoint_value=checkpoint.checkpoint_value,
                **kwargs,
            )
            _release_memory()
        if reuse and i > 0:
            _reuse_baseline(out / checkpoints[0].folder_name, folder, plotlyjs)
    return write_evolution_report(out, checkpoints, plotlyjs)


def _one_architecture(checkpoints: list[Checkpoint]) -> bool:
    """Whether every checkpoint has one architecture (config.json alike but for bookkeeping keys)."""
    if all(c.checkpoint_value is not None for c in checkpoints):
        return len({c.model for c in checkpoints}) == 1  # one Hub model's published checkpoints
    configs = []
    for checkpoint in checkpoints:
        try:
            config = json.loads((Path(checkpoint.model) / "config.json").read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(config, dict):
            return False
        configs.append({k: v for k, v in config.items() if not k.startswith("_") and k != "transformers_version"})
    return all(c == configs[0] for c in configs)


def _reuse_baseline(source: Path, folder: Path, plotlyjs: str) -> None:
    """Give the run in FOLDER the random-init baseline of the run in SOURCE (same architecture, corpus and
    seeds, so the same document weights pair their replicates), and rewrite its claims and report."""
    from .run_result import RunResult

    donor = RunResult.load(source)
    if REUSED not in donor.baselines:
        return
    result = RunResult.load(folder)
    records = dict(result.meta.get("baselines") or {})
    if (records.get(REUSED) or {}).get("reused_from") == source.name and REUSED in result.baselines:
        return  # done before the sweep was interrupted
    result.baselines[REUSED] = donor.baselines[REUSED]
    records[REUSED] = {**(donor.meta.get("baselines") or {}).get(REUSED, {}), "reused_from": source.name}
    result.meta["baselines"] = records
    result.save(folder, overwrite=True, plotlyjs=plotlyjs)


def _status(folder: Path) -> str | None:
    try:
        return read_json(folder / "run.json", "").get("status")
    except (NormprobeError, AttributeError):
        return None


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def write_evolution_report(out: Path, checkpoints: list[Checkpoint], plotlyjs: str = "inline") -> Path:
    """OUT/claims.parquet (every checkpoint's claims, with its step), OUT/evolution.json and OUT/report.html."""
    from .report.evolution import evolution_numbers, render_evolution
    from .results import _json_safe, _parquet_bytes, write_atomic

    sweep = Sweep(out, checkpoints)
    write_atomic(out / CLAIMS_FILE, _parquet_bytes(sweep.claims))
    body = {**evolution_numbers(sweep.runs), "first_holds": sweep.first_holds().to_dict("records")}
    write_atomic(out / "evolution.json", (json.dumps(_json_safe(body), indent=2, default=str) + "\n").encode())
    path = out / "report.html"
    local = Path(checkpoints[0].model)
    name = (
        checkpoints[0].model if checkpoints[0].checkpoint_value is not None or not local.is_dir() else local.resolve().parent.name
    )
    write_atomic(path, render_evolution(sweep.runs, sweep.claims, plotlyjs=plotlyjs, name=name).encode("utf-8"))
    return path


class Sweep:
    """A saved checkpoint sweep: `runs` ((step, RunResult) in training order), `claims` (one row per step, probe,
    claim, layer and component) and `first_holds()` (the first step at which each claim holds)."""

    def __init__(self, folder: str | Path, checkpoints: list[Checkpoint] | None = None):
        from .jsonio import read_json
        from .run_result import RunResult

        self.folder = Path(folder)
        if checkpoints is None:
            saved = read_json(self.folder / "sweep.json", f"{self.folder} holds no sweep.json; is it a checkpoint sweep folder?")
            listed = saved.get("checkpoints") if isinstance(saved, dict) else None
            if not isinstance(listed, list) or not all(isinstance(c, dict) and isinstance(c.get("step"), int) for c in listed):
                raise NormprobeError(f"{self.folder / 'sweep.json'} is damaged: it lists no checkpoints")
            checkpoints = [Checkpoint(c["step"], str(c.get("model", "")), c.get("checkpoint_value")) for c in listed]
        self.checkpoints = sorted(checkpoints, key=lambda c: c.step)
        self.runs = [(c.step, RunResult.load(self.folder / c.folder_name)) for c in self.checkpoints]

    @property
    def claims(self) -> pd.DataFrame:
        from .claim_tables import stack_claims

        return stack_claims([(step, result.claims) for step, result in self.runs], "step")

    def first_holds(self) -> pd.DataFrame:
        """Per claim: the first step at which it holds (missing where it never does), and whether it holds at the last."""
        from .claim_tables import first_holding

        return first_holding(self.claims, "step")

    def __repr__(self) -> str:
        return f"Sweep({str(self.folder)!r}, steps={[s for s, _ in self.runs]})"

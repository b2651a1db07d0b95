"""Folder-level API used by the CLI: validate everything, run into a folder, resume, re-render."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import NormprobeError
from .results import REPORT_FILE
from .run_result import RunResult


def run_to_folder(
    model: str,
    out: str | Path,
    *,
    probes: list[str],
    overwrite: bool = False,
    plotlyjs: str = "inline",
    progress: bool = True,
    resume: bool = False,
    checkpoint_every: int | None = None,
    **run_kwargs: Any,
) -> Path | None:
    """Validate inputs and the folder (before any model loads), run with checkpoints, save atomically.

    With `resume=True`, `out` is an interrupted or failed run's folder: the run continues from its
    checkpoint and must ask for exactly the same model, corpus and options.
    """
    from .distributed import world
    from .runner import make_runner
    from .store import RunFolder

    if checkpoint_every is not None and checkpoint_every < 1:
        raise NormprobeError(f"--checkpoint-every must be at least 1 (got {checkpoint_every})")
    out = Path(out)
    if not resume and world()[0] == 0:
        RunFolder.create(out, overwrite)  # a bad --out fails before probes and torch are even imported
    runner = make_runner(model, probes=probes, **run_kwargs)
    if world()[0] != 0:  # under torchrun only rank 0 touches the folder
        runner.execute(progress=False)
        return None
    if resume:
        # locked: a live run in it is refused; then the request is compared and the checkpoint read
        folder, saved_meta, checkpoint = RunFolder.for_resume(out, runner.request())
        state = (saved_meta, checkpoint)
    else:
        folder, state = RunFolder.open(out, overwrite), None  # locked for the run's whole life
    with folder:
        result = runner.execute(progress=progress, folder=folder, resume=state, checkpoint_every=checkpoint_every)
        folder.finish(result, plotlyjs)
    return out


def claims_summary(folder: str | Path) -> list[str]:
    """A saved run's claims as a short table for the console (normprobe.report.claims.claims_table_lines)."""
    from .report.headline import summary_lines

    return summary_lines(RunResult.load(folder), where=str(Path(folder) / REPORT_FILE))


def merged_line(folder: str | Path) -> str:
    """What `merge` prints first: how many shards, documents, windows and tokens the merged run holds."""
    from .jsonio import read_json

    meta = read_json(Path(folder) / "run.json", f"{folder} holds no run.json")
    shards = len(meta.get("merged_from") or [])
    counts = ", ".join(f"{meta.get(f'n_{k}', 0):,} {k}" for k in ("docs", "windows", "tokens"))
    return f"merged {shards} shards: {counts}"


def export_images(folder: str | Path, fmt: str, probe_modules: list | None = None) -> list[Path]:
    """Write each figure of a saved run's report as PNG or SVG into FOLDER/figures/."""
    from .report import sections_for
    from .report.export import export_figures
    from .tracing import is_trace_folder

    if fmt == "html":
        return []
    if is_trace_folder(folder):
        raise NormprobeError(f"{folder} is a trace: its page is HTML only (--format png and svg are for run reports)")
    return export_figures(sections_for(RunResult.load(folder, probe_modules)), Path(folder), fmt)


def rerender(
    folder: str | Path,
    out: str | Path | None = None,
    plotlyjs: str = "inline",
    overwrite: bool = False,
    probe_modules: list | None = None,
) -> Path:
    """Re-render a report from saved tables; a run that is not complete is rendered as partial.

    Nothing the folder names is imported: a custom probe is drawn from its tables, or by its own
    `figures()` when its code is given in `probe_modules` (--probe-module) or installed as an entry point.

    A run still being written is refused; one whose process died while `running` is rendered as partial.
    An `out` file that exists needs `overwrite`.
    """
    from .lock import FolderLock, describe_running, live_holder
    from .tracing import is_trace_folder, rerender_trace

    folder = Path(folder)
    if not folder.is_dir():
        raise NormprobeError(f"run folder not found: {folder}")
    if is_trace_folder(folder):
        return rerender_trace(folder, None if out is None else Path(out), plotlyjs, overwrite)
    result = RunResult.load(folder, probe_modules)
    status = result.meta.get("status", "complete")
    if status == "running":
        if live_holder(folder) is not None:
            raise NormprobeError(f"run in {folder} is {describe_running(folder)}; report it when it has finished")
        result.meta["status_reason"] = describe_running(folder) + f"; continue it with --resume {folder}"
    if status != "complete":
        print(f"normprobe: warning: run in {folder} is {status}, not complete; rendering only what was saved", file=sys.stderr)
    if out is None:
        with FolderLock.acquire(folder):
            return _render_checked(result, folder / REPORT_FILE, folder, plotlyjs)
    out = Path(out)
    if out.is_dir():
        raise NormprobeError(f"--out {out} is a folder; give the path of the HTML file to write")
    if out.exists() and not overwrite:
        raise NormprobeError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NormprobeError(f"cannot write {out}: {exc.strerror or exc}") from None
    return _render_checked(result, out, folder, plotlyjs)


def _render_checked(result: RunResult, path: Path, folder: Path, plotlyjs: str) -> Path:
    """Render; tables that read but do not hold what their probe wrote (tampered columns) are one line."""
    try:
        return result.to_html(path, plotlyjs=plotlyjs)
    except OSError as exc:
        raise NormprobeError(f"cannot write {path}: {exc.strerror or exc}") from None
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise NormprobeError(
            f"cannot render {folder}: its tables do not hold what run.json says "
            f"({type(exc).__name__}: {str(exc)[:200]}); the folder is damaged"
        ) from exc


def merge_shards(
    folders: Sequence[str | Path],
    out: str | Path,
    overwrite: bool = False,
    plotlyjs: str = "inline",
    device: str = "auto",
    probe_modules: list | None = None,
) -> Path:
    """Combine the folders of `run --shard i/N` runs into one run, equal to a single run over all documents.

    The probes' code is never taken from the shards' run.json: built-in and installed probes are found
    by name, and a custom probe's code must be given in `probe_modules` (--probe-module).
    """
    from .results import check_output_dir
    from .store import RunFolder

    if not folders:
        raise NormprobeError("give the shard folders to merge")
    out = Path(out)
    check_output_dir(out, overwrite)
    with RunFolder.open(out, overwrite):  # locked for the merge's whole life
        return _merge_into(folders, out, overwrite, plotlyjs, device, probe_modules)


def _merge_into(
    folders: Sequence[str | Path], out: Path, overwrite: bool, plotlyjs: str, device: str, probe_modules: list | None = None
) -> Path:
    from .adapter import load_model
    from .live_run import make_probe, merge_state, run_result
    from .registry import classes_by_name, saved_probe_class
    from .results import STATE_FILE
    from .store import FINGERPRINT_DEFAULTS, FINGERPRINT_KEYS, RunFolder, check_lens_digest, load_shard_state
    from .verify import check_run_json

    metas = [RunFolder(Path(f)).read_meta() for f in folders]
    for folder, meta in zip(folders, metas):
        check_run_json(meta, Path(folder))
        RunResult.load(folder)  # every table and baseline folder checked, as report and compare check them
    for folder, meta in zip(folders, metas):
        if meta.get("status") != "complete" or not (Path(folder) / STATE_FILE).is_file():
            raise NormprobeError(f"{folder} is not a complete shard run (run it with --shard I/N)")
    requests = [m.get("request", {}) for m in metas]
    shards = sorted(tuple(r.get("shard") or ()) for r in requests)
    count = shards[0][1] if shards and len(shards[0]) == 2 else 0
    if shards != [(i, count) for i in range(count)]:
        raise NormprobeError(f"shards must be 0/N..N-1/N once each; got {', '.join('/'.join(map(str, s)) for s in shards)}")
    first = requests[0]
    for folder, request in zip(folders[1:], requests[1:]):
        for key in FINGERPRINT_KEYS:
            if key not in ("shard", "batch_size") and request.get(key) != first.get(key):
                raise NormprobeError(f"cannot merge {folder}: {key} differs from {folders[0]}")
    for folder, meta, request in zip(folders, metas, requests):
        missing = [k for k in ("n_tokens", "n_windows", "n_batches", "n_docs", "seq_len") if k not in meta]
        if missing or not (
            isinstance(request.get("model"), str)
            and isinstance(request.get("dtype"), str)
            and isinstance(request.get("probe_specs"), list)
        ):
            raise NormprobeError(f"{Path(folder) / 'run.json'} is damaged: it lacks {missing[0] if missing else 'the request'}")
    for folder, meta in zip(folders[1:], metas[1:]):
        if meta.get("probes") != metas[0].get("probes"):
            raise NormprobeError(
                f"cannot merge {folder}: its probes {meta.get('probes')} differ from {folders[0]}'s {metas[0].get('probes')}"
            )
    # The probes' code: built-in, installed or named by the user; never a spec that run.json names.
    # (The runner adds the lens diagnostics itself to a run with a tuned readout.)
    from .lens_diagnostics import LensDiagnosticsProbe, is_tuned, record_diagnostics

    given = classes_by_name(probe_modules)
    probe_classes: list[type] = []
    for name in metas[0]["probes"]:
        found = (
            LensDiagnosticsProbe
            if name == LensDiagnosticsProbe.name
            else saved_probe_class(name, given, required=True, where=str(folders[0]))
        )
        if found is None:  # required=True raises first; this keeps the type honest
            raise NormprobeError(f"{folders[0]}: no code for probe {name!r}")
        probe_classes.append(found)
    # Read (as data only) and check every state against its folder's run.json before the model loads.
    states = [(Path(f) / STATE_FILE, load_shard_state(Path(f) / STATE_FILE, meta)) for f, meta in zip(folders, metas)]
    from .baseline_passes import merge_shard_baselines, read_shard_baselines

    baseline_states = read_shard_baselines(list(folders), metas)
    check_lens_digest(first)
    model = load_model(first["model"], device=device, dtype=first["dtype"], revision=first.get("revision"))
    options = {
        "massive_ratio": first.get("massive_ratio", FINGERPRINT_DEFAULTS["massive_ratio"]),
        "readout": first.get("readout", "logit"),
        "alphas": first.get("alphas"),
        "ablate": first.get("ablate", FINGERPRINT_DEFAULTS["ablate"]),
        "replicates": first.get("replicates", FINGERPRINT_DEFAULTS["replicates"]),
        "token_counts": first.get("token_counts_file"),
        "readout_sample": first.get("readout_sample", FINGERPRINT_DEFAULTS["readout_sample"]),
    }
    from .memory import check_replicates

    check_replicates(options["replicates"], model.n_layers, 1 + len(first.get("baselines") or []), None)
    from .readouts import make_readout

    make_readout(model, options["readout"], bool(first.get("allow_foreign_lens")))  # as the shards were run
    probes = [make_probe(cls, first.get("layers"), options) for cls in probe_classes]
    seq_len = metas[0]["seq_len"]
    for probe in probes:
        probe.setup(model, seq_len)
    for state_path, state in states:
        merge_state(model, probes, state, seq_len, first.get("layers"), where=str(state_path))
    done = {
        "tokens": sum(m["n_tokens"] for m in metas),
        "windows": sum(m["n_windows"] for m in metas),
        "batches": sum(m["n_batches"] for m in metas),
        "docs": sum(m["n_docs"] for m in metas),
        "seconds": 0.0,
    }
    base = {k: v for k, v in metas[0].items() if k not in ("findings", "claims", "tables", "status_reason")}
    base["request"] = {**first, "shard": None}
    base["options"] = {**base.get("options", {}), "shard": None}
    base["merged_from"] = [str(f) for f in folders]
    result = run_result(probes, base, done, sum(m.get("seconds", 0.0) for m in metas))
    merge_shard_baselines(baseline_states, metas, model, probe_classes, options, first.get("layers"), seq_len, result)
    if is_tuned(options["readout"]):
        record_diagnostics(result, options["readout"], first.get("corpus_sha256"))
    return result.save(out, overwrite=True, plotlyjs=plotlyjs)


def compare(runs: list[Any], labels: list[str] | None = None) -> Any:
    """Overlay runs (RunResults or run folders) and return a `Comparison`; `.save(folder)` writes its page."""
    from .comparison import Comparison

    return Comparison.of(runs, labels)


def compare_to_folder(
    folders: Sequence[str | Path],
    out: str | Path,
    labels: list[str] | None = None,
    plotlyjs: str = "inline",
    overwrite: bool = False,
    summary: list[str] | None = None,
) -> Path:
    """Render one report overlaying saved runs into OUT/report.html and their claims into OUT/claims.parquet
    (one row per run label, probe, claim, layer and component): the `compare` command.

    OUT is locked while the page is written; an existing non-empty OUT (a run's folder, say) needs `overwrite`.
    A `summary` list gets the lines `compare` prints: the claims whose verdicts differ, the probes a run lacks.
    """
    from .comparison import Comparison
    from .results import write_folder

    if len(folders) < 2:
        raise NormprobeError("compare needs at least two run folders")
    for folder in folders:
        if not Path(folder).is_dir():
            raise NormprobeError(f"run folder not found: {folder}")
    comparison = Comparison.of(
        [_load_finished(Path(f)) for f in folders], labels if labels is not None else [Path(f).resolve().name for f in folders]
    )
    out = Path(out)
    try:
        write_folder(out, overwrite, lambda folder: _save_comparison(comparison, folder, plotlyjs))  # replaced whole
    except OSError as exc:
        raise NormprobeError(f"cannot create {out}: {exc.strerror or exc}") from None
    if summary is not None:
        summary.extend(comparison.summary_lines())
    return out / REPORT_FILE


def _save_comparison(comparison: Any, folder: Path, plotlyjs: str) -> Path:
    import warnings

    try:
        with warnings.catch_warnings():  # empty cells are NaN: numpy's empty-slice warnings are no news
            warnings.simplefilter("ignore", RuntimeWarning)
            return comparison.save(folder, plotlyjs=plotlyjs)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise NormprobeError(
            f"cannot compare: a run's tables do not hold what its run.json says ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


def _load_finished(folder: Path) -> RunResult:
    """A saved run for a comparison; a run still being written is refused, a dead `running` one is partial."""
    from .lock import describe_running, live_holder

    result = RunResult.load(folder)
    if result.meta.get("status") == "running":
        if live_holder(folder) is not None:
            raise NormprobeError(f"run in {folder} is {describe_running(folder)}; compare it when it has finished")
        result.meta["status_reason"] = describe_running(folder)
    return result


def folder_slug(model: str) -> str:
    """A folder-safe short name for a model name or path."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(model).name or model).strip("-.")
    return slug or "model"


def validate_runs(models: list[tuple[str, int | None]], run_kwargs: dict[str, Any]) -> None:
    """Check every (model, checkpoint_value) of a multi-run, and the corpus and options, before any model loads."""
    from .runner import make_runner

    options = {k: v for k, v in run_kwargs.items() if k != "checkpoint_every"}
    for model, checkpoint_value in models:
        make_runner(model, checkpoint_value=checkpoint_value, **options)


def run_many_to_folder(
    models: list[str],
    out: str | Path,
    *,
    overwrite: bool = False,
    plotlyjs: str = "inline",
    progress: bool = True,
    summary: list[str] | None = None,
    **run_kwargs: Any,
) -> Path:
    """Run each model on the same corpus into OUT/<i>-<model>/, then write the comparison to OUT/report.html
    (and its claims to OUT/claims.parquet); `summary` gets what `compare` prints."""
    from .comparison import Comparison
    from .interrupt import RunInterrupted
    from .lock import FolderLock
    from .results import check_output_dir
    from .staging import StagedFolder, is_empty

    out = Path(out)
    check_output_dir(out, overwrite)
    validate_runs([(model, None) for model in models], run_kwargs)
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock.acquire(out) as lock:  # OUT for the whole multi-run; each run also locks its own folder
        check_output_dir(out, overwrite)
        # --overwrite: every run and the comparison go into a sibling that replaces OUT whole at the end
        staged = None if is_empty(out) else StagedFolder(out)
        target = out if staged is None else staged.path
        try:
            folders = []
            for i, model in enumerate(models, start=1):
                folder = target / f"{i}-{folder_slug(model)}"
                run_to_folder(model, folder, plotlyjs=plotlyjs, progress=progress, **run_kwargs)
                folders.append(folder)
            labels = [f"{i}: {m}" for i, m in enumerate(models, start=1)]
            comparison = Comparison.of([_load_finished(f) for f in folders], labels)
            _save_comparison(comparison, target, plotlyjs)
            if staged is not None:
                staged.commit(lock)
        except RunInterrupted as exc:  # no --resume for several models: say so instead of a command that fails
            unchanged = "" if staged is None else f"; {out} is unchanged"
            raise RunInterrupted(f"{exc}{unchanged}; a run of several models cannot be resumed: start it again") from None
        finally:
            if staged is not None:
                staged.abandon()
        if summary is not None:
            summary.extend(comparison.summary_lines())
        return out / REPORT_FILE

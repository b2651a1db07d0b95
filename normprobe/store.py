"""A run folder while the run is under way: status in run.json, checkpoints, resume.

run.json's `status` is `running`, `complete`, `interrupted` or `failed` (with `status_reason`).
`checkpoint.pt` holds every probe's statistics and how many batches they have seen.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from .errors import NormprobeError
from .jsonio import _json_safe, request_digest
from .lock import FolderLock
from .results import RUN_FILE, check_output_dir, read_run_json, write_atomic
from .staging import StagedFolder, is_empty

CHECKPOINT_FILE = "checkpoint.pt"
# What must match for a resumed run to continue the same measurement.
FINGERPRINT_KEYS = (
    "model",
    "resolved_model",
    "revision",
    "checkpoint_value",
    "dtype",
    "probe_specs",
    "corpus",
    "corpus_sha256",
    "seq_len",
    "batch_size",
    "prepend_bos",
    "layers",
    "max_docs",
    "max_tokens",
    "shard",
    "massive_ratio",
    "readout",
    "readout_params_sha256",
    "alphas",
    "ablate",
    "baselines",
    "baseline_seeds",
    "replicates",
    "bootstrap_unit",
    "token_counts",
    "readout_sample",
    "allow_foreign_lens",
)
# What a key meant in runs saved before it was recorded
FINGERPRINT_DEFAULTS = {
    "massive_ratio": 100.0,
    "readout": "logit",
    "ablate": False,
    "baselines": [],
    "baseline_seeds": 3,
    "replicates": 200,
    "readout_sample": 1.0,
    "allow_foreign_lens": False,
}


class RunFolder:
    """The output folder of one run and its life cycle: lock, signals, status, checkpoints.

    Use it as a context manager around the run (`with RunFolder.open(out) as folder:`). For its whole
    life it holds the folder's lock, so a second writer is refused; `start` installs the signal
    handlers before run.json first says `running`; and leaving the block on any error marks the run
    `failed` (or `interrupted` on a second signal) if the loop has not already, so run.json never says
    `running` after its process is gone, except after SIGKILL, where the dropped lock tells.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta: dict[str, Any] | None = None  # the run.json being kept current, once started
        self.stops: Any = None  # StopRequests, installed by start()
        self._lock: FolderLock | None = None
        self._created = False  # made by open(), so removed again if the run fails before writing anything
        self._staged: StagedFolder | None = None  # replacing a non-empty folder: the run is written here first

    # -- starting ----------------------------------------------------------
    @classmethod
    def create(cls, path: Path, overwrite: bool = False) -> RunFolder:
        """Check the folder only (cheap, before probes and torch are imported); `open` takes it."""
        check_output_dir(path, overwrite)
        return cls(path)

    @classmethod
    def open(cls, path: Path, overwrite: bool = False) -> RunFolder:
        """Take the folder for a new run: the lock first, then the empty-folder check, so two runs cannot both pass it."""
        path = Path(path)
        check_output_dir(path, overwrite)
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NormprobeError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
        folder = cls(path)
        folder._created = created
        folder._lock = FolderLock.acquire(path)
        try:
            check_output_dir(path, overwrite)
            if not is_empty(path):  # --overwrite: the old run stays whole until the new one is complete
                folder._staged = StagedFolder(path)
                folder.path = folder._staged.path
        except BaseException:
            folder.close()
            raise
        return folder

    @classmethod
    def for_resume(cls, path: Path, requested: dict[str, Any] | None = None) -> tuple[RunFolder, dict[str, Any], dict[str, Any]]:
        """The folder (locked), its run.json and its checkpoint; refuses a folder that cannot be resumed,
        or whose run asked for something other than `requested`."""
        path = Path(path)
        if not path.is_dir():
            raise NormprobeError(f"run folder not found: {path}")
        folder = cls(path)
        folder._lock = FolderLock.acquire(path)  # a run still alive in it is refused here, naming its pid
        try:
            meta = folder.read_meta()
            if not isinstance(meta, dict) or not isinstance(meta.get("request", {}), dict):
                raise NormprobeError(f"{path / RUN_FILE} is damaged or not a normprobe run.json; start the run again")
            status = meta.get("status")
            if status == "complete":
                raise NormprobeError(f"run in {path} is already complete; nothing to resume")
            if requested is not None:
                check_same_run(meta.get("request", {}), requested)
            checkpoint_path = folder.path / CHECKPOINT_FILE
            if not checkpoint_path.is_file():
                raise NormprobeError(f"run in {path} ({status}) has no {CHECKPOINT_FILE} to resume from; start it again")
            checkpoint = load_checkpoint(checkpoint_path)
        except BaseException:
            folder.close()
            raise
        return folder, meta, checkpoint

    def read_meta(self) -> dict[str, Any]:
        return read_run_json(self.path)

    # -- the life cycle ------------------------------------------------------
    def start(self, meta: dict[str, Any]) -> None:
        """Install the signal handlers, then mark the run running: no moment says running without them."""
        from .interrupt import StopRequests

        if self.stops is None:
            self.stops = StopRequests(on_abort=self._abort_now).__enter__()
        self.meta = meta
        self.mark(meta, "running")

    def finish(self, result: Any, plotlyjs: str = "inline") -> None:
        """Save the result (run.json last, saying complete) and drop the checkpoint."""
        result.save(self.path, overwrite=True, plotlyjs=plotlyjs, in_place=True)
        self.meta = result.meta
        self.remove_checkpoint()
        if self._staged is not None:
            assert self._lock is not None
            self._staged.commit(self._lock)
            self.path, self._staged = self._staged.target, None

    def close(self, error: BaseException | None = None) -> None:
        """Leave a truthful status, restore the signal handlers, release the lock."""
        try:
            if error is not None and self.meta is not None and self.meta.get("status") == "running":
                if isinstance(error, KeyboardInterrupt):
                    self._mark_if_possible("interrupted", "aborted by a second signal; the last checkpoint is kept")
                else:
                    self._mark_if_possible("failed", failure_reason(error, self.path))
        finally:
            if self.stops is not None:
                self.stops.__exit__(None, None, None)
                self.stops = None
            if self._staged is not None:  # not complete: the old folder is untouched; a checkpoint is kept to resume
                self._staged.give_up(CHECKPOINT_FILE)
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            if self._created and self.meta is None:  # failed before run.json: leave nothing behind
                try:
                    self.path.rmdir()
                except OSError:
                    pass  # not empty, or already gone

    def _abort_now(self) -> None:
        """A second signal the main thread could not act on (a long batch): record it before the process ends."""
        meta = dict(self.meta or {})  # a copy: the main thread may still be changing its own
        if meta.get("status") == "running":
            self._mark_if_possible_on(meta, "interrupted", "aborted by a second signal; the last checkpoint is kept")

    def _mark_if_possible_on(self, meta: dict[str, Any], status: str, reason: str) -> None:
        try:
            self.mark(meta, status, reason)
        except OSError:
            pass

    def _mark_if_possible(self, status: str, reason: str) -> None:
        if self.meta is None:
            return
        try:
            self.mark(self.meta, status, reason)
        except OSError:
            pass  # the disk is still full: run.json stays `running`, and the released lock says the run is dead

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        staged = self._staged
        self.close(error)
        if isinstance(error, OSError):  # a full disk or a vanished folder: one line, not a traceback
            raise _with_staged_note(NormprobeError(failure_reason(error, self.path)), staged) from None
        if staged is not None and isinstance(error, NormprobeError):
            raise _with_staged_note(error, staged) from None

    # -- writing -----------------------------------------------------------
    def write_meta(self, meta: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / RUN_FILE, (json.dumps(_json_safe(meta), indent=2) + "\n").encode("utf-8"))

    def mark(self, meta: dict[str, Any], status: str, reason: str | None = None) -> None:
        meta["status"] = status
        if reason:
            meta["status_reason"] = reason
        else:
            meta.pop("status_reason", None)
        self.write_meta(meta)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_atomic(self.path / CHECKPOINT_FILE, buffer.getvalue())

    def remove_checkpoint(self) -> None:
        (self.path / CHECKPOINT_FILE).unlink(missing_ok=True)


def _with_staged_note(error: NormprobeError, staged: StagedFolder | None) -> NormprobeError:
    """A run that was to replace a folder stopped: say that the folder is unchanged, and where the new run is."""
    from .interrupt import RunInterrupted

    if staged is None:
        return error
    note = staged.note("run")
    if isinstance(error, RunInterrupted):
        return RunInterrupted(f"{error}{note}", staged.path if staged.kept else None, resume_here=True)
    noted = NormprobeError(f"{error}{note}")
    noted.exit_code = error.exit_code
    return noted


def failure_reason(error: BaseException, folder: Path) -> str:
    if isinstance(error, OSError):
        return f"cannot write in {folder}: {error.strerror or type(error).__name__}"
    if isinstance(error, NormprobeError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def load_state_file(path: Path, what: str) -> Any:
    """A checkpoint.pt or state.pt, read as data only: tensors, numbers, strings and containers, never code."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NormprobeError(
            f"cannot read {path} as a normprobe {what} (it is loaded as data only, and this "
            f"file holds something else or is damaged): {first[:200]}"
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """checkpoint.pt, checked for the shape the runner writes."""
    state = load_state_file(path, "checkpoint")
    progress = state.get("progress") if isinstance(state, dict) else None
    if not (
        isinstance(state, dict)
        and isinstance(state.get("probes"), dict)
        and isinstance(progress, dict)
        and all(isinstance(progress.get(k), int) for k in ("batches", "tokens", "windows", "docs"))
        and isinstance(progress.get("seconds", 0.0), (int, float))
    ):
        raise NormprobeError(f"{path} is not a normprobe checkpoint (it lacks probes and progress counts); start the run again")
    return state


def restore_probe(probe: Any, states: Any, path: Path | str) -> None:
    """Load one probe's saved statistics; a missing or ill-fitting entry is one line naming the probe."""
    if not isinstance(states, dict) or not isinstance(states.get(probe.name), dict):
        raise NormprobeError(f"{path} holds no statistics for probe {probe.name!r}")
    try:
        probe.load_state_dict(states[probe.name])
    except NormprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any probe's loader may reject a tampered state its own way
        raise NormprobeError(
            f"{path}: the statistics of probe {probe.name!r} do not fit this run ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def check_same_run(saved: dict[str, Any], requested: dict[str, Any]) -> None:
    """Refuse to resume when anything that decides the numbers differs; name the first difference."""
    for key in FINGERPRINT_KEYS:
        was, now = saved.get(key, FINGERPRINT_DEFAULTS.get(key)), requested.get(key)
        if key == "batch_size" and now is None:
            continue  # not given now: the saved one is used
        if json.loads(json.dumps(_json_safe(was))) != json.loads(json.dumps(_json_safe(now))):
            raise NormprobeError(f"cannot resume: {key} differs (the run used {was!r}, this command gives {now!r})")


# -- shard states: statistics that carry the identity of their run ---------------------
SHARD_STATE_FORMAT = "normprobe shard state 1"
SHARD_COUNTS = ("n_tokens", "n_docs", "n_windows", "n_batches")


def shard_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What ties a shard's state.pt to its run.json: the request's digest, the shard, and its counts."""
    request = meta.get("request", {})
    return {
        "shard": list(request.get("shard") or []),
        **{key: meta.get(key) for key in SHARD_COUNTS},
        "request_sha256": request_digest(request),
    }


MODEL_PASS = "model"  # the pass over the model itself; a baseline's pass is named by its kind


def shard_state(meta: dict[str, Any], probe_states: dict[str, Any], pass_name: str = MODEL_PASS) -> dict[str, Any]:
    """The state.pt of a shard run: every probe's statistics, the pass that made them (the model's own, or a
    baseline's kind) and the identity of the run."""
    return {"format": SHARD_STATE_FORMAT, "identity": shard_identity(meta), "pass": pass_name, "probes": probe_states}


def load_shard_state(path: Path, meta: dict[str, Any], pass_name: str = MODEL_PASS) -> dict[str, Any]:
    """A shard's state.pt, read as data only, whose identity must be that of the run.json beside it and
    whose pass must be `pass_name` (the model's own, or the baseline kind of its folder).

    Returns the probes' statistics. A state copied from another shard, run or pass is one line.
    """
    state = load_state_file(path, "shard state")
    if not (
        isinstance(state, dict)
        and state.get("format") == SHARD_STATE_FORMAT
        and isinstance(state.get("identity"), dict)
        and isinstance(state.get("probes"), dict)
    ):
        raise NormprobeError(
            f"{path} is not a normprobe shard state (it carries no run identity; "
            "a shard run by an older normprobe must be run again)"
        )
    if state.get("pass") != pass_name:
        said = state.get("pass")
        raise NormprobeError(
            f"{path} holds the statistics of "
            + (f"the {said!r} pass" if isinstance(said, str) else "an unnamed pass (an older normprobe: run the shard again)")
            + f", not of the {pass_name!r} pass this file must hold"
        )
    expected, saved = shard_identity(meta), state["identity"]
    for key, value in expected.items():
        if saved.get(key) == value:
            continue
        if key == "request_sha256":
            raise NormprobeError(
                f"{path} belongs to another run: its request (model, corpus, options) is not the one in the run.json beside it"
            )
        raise NormprobeError(
            f"{path} belongs to another run: its {key} ({saved.get(key)!r}) is not that of the run.json beside it ({value!r})"
        )
    return state["probes"]


def check_lens_digest(request: dict[str, Any]) -> None:
    """A tuned lens that a saved request names is read (as data) only if its params.pt is the one the run used."""
    readout = request.get("readout", "logit")
    if not isinstance(readout, str) or readout == "logit":
        return
    from .readouts import parse_readout

    now = parse_readout(readout).describe().get("params_sha256")
    if now != request.get("readout_params_sha256"):
        raise NormprobeError(
            f"the tuned lens {readout[len('tuned:') :]} that the shards were run with has changed "
            "since (its params.pt digest differs); merge needs the same lens"
        )

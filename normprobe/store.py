"""A run folder while the run is under way: status in run.json, checkpoints, resume.

run.json's `status` is `running`, `complete`, `interrupted` or `failed` (with `status_reason`).
`checkpoint.pt` holds every probe's statistics and how many batches they have seen.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from .errors import NormprobeError
from .results import RUN_FILE, _json_safe, check_output_dir, read_run_json, write_atomic

CHECKPOINT_FILE = "checkpoint.pt"
# What must match for a resumed run to continue the same measurement.
FINGERPRINT_KEYS = ("model", "resolved_model", "revision", "checkpoint_value", "dtype", "probe_specs", "corpus", "corpus_sha256",
                    "seq_len", "batch_size", "prepend_bos", "layers", "max_docs", "max_tokens", "shard", "massive_ratio",
                    "readout", "readout_params_sha256", "alphas")
# What a key meant in runs saved before it was recorded
FINGERPRINT_DEFAULTS = {"massive_ratio": 100.0, "readout": "logit"}


def corpus_digest(texts: list[str] | None, path: Path | None, text_field: str, encoding: str, errors: str) -> str:
    """sha256 of what decides the documents: the file's bytes (streamed) or the texts, and how they are read."""
    digest = hashlib.sha256(f"{text_field}\0{encoding}\0{errors}\0".encode())
    if path is not None:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    elif texts is not None:
        for text in texts:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    else:
        digest.update(b"<built-in sample>")
    return digest.hexdigest()


class RunFolder:
    """The output folder of one run, written as the run goes."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # -- starting ----------------------------------------------------------
    @classmethod
    def create(cls, path: Path, overwrite: bool = False) -> "RunFolder":
        check_output_dir(path, overwrite)
        return cls(path)

    @classmethod
    def for_resume(cls, path: Path) -> tuple["RunFolder", dict[str, Any], dict[str, Any]]:
        """The folder, its run.json and its checkpoint; refuses a folder that cannot be resumed."""
        import torch

        folder = cls(path)
        meta = folder.read_meta()
        status = meta.get("status")
        if status == "complete":
            raise NormprobeError(f"run in {path} is already complete; nothing to resume")
        checkpoint_path = folder.path / CHECKPOINT_FILE
        if not checkpoint_path.is_file():
            raise NormprobeError(f"run in {path} ({status}) has no {CHECKPOINT_FILE} to resume from; start it again")
        try:
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is one message
            raise NormprobeError(f"cannot read {checkpoint_path}: {type(exc).__name__}: {exc}") from None
        return folder, meta, checkpoint

    def read_meta(self) -> dict[str, Any]:
        return read_run_json(self.path)

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


def check_same_run(saved: dict[str, Any], requested: dict[str, Any]) -> None:
    """Refuse to resume when anything that decides the numbers differs; name the first difference."""
    for key in FINGERPRINT_KEYS:
        was, now = saved.get(key, FINGERPRINT_DEFAULTS.get(key)), requested.get(key)
        if key == "batch_size" and now is None:
            continue  # not given now: the saved one is used
        if json.loads(json.dumps(_json_safe(was))) != json.loads(json.dumps(_json_safe(now))):
            raise NormprobeError(f"cannot resume: {key} differs (the run used {was!r}, this command gives {now!r})")

"""A `--readout` value parsed and checked without torch: `logit`, `model` or `tuned:DIR`.

The readouts themselves (normprobe.readouts) need torch; options and validation need only this.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NormprobeError

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.pt"
LENS_TYPE = "linear_tuned_lens"


@dataclass(frozen=True)
class ReadoutSpec:
    """A parsed `--readout`: `logit`, `model`, or `tuned` with the lens folder."""

    kind: str
    path: Path | None = None

    def describe(self) -> dict[str, Any]:
        """What run.json records, and what resume compares (a retrained lens is another readout)."""
        if self.kind in ("logit", "model") or self.path is None:
            return {"kind": self.kind}
        config = read_lens_config(self.path)
        return {
            "kind": "tuned",
            "path": str(self.path),
            "params_sha256": file_sha256(self.path / PARAMS_FILE),
            "base_model": config.get("base_model_name_or_path"),
        }

    @property
    def text(self) -> str:
        """The canonical `--readout` value: logit, model, or tuned: with the folder's absolute path."""
        return f"tuned:{self.path}" if self.kind == "tuned" else self.kind

    @property
    def label(self) -> str:
        return {"logit": "logit lens", "model": "the model's own loss (no lens)"}.get(self.kind, f"tuned lens ({self.path})")


def parse_readout(spec: str | ReadoutSpec | None) -> ReadoutSpec:
    """Check a `--readout` value without loading any model: the folder and its two files exist."""
    if isinstance(spec, ReadoutSpec):
        return spec
    text = (spec or "logit").strip()
    if text in ("logit", "model"):
        return ReadoutSpec(text)
    if not text.startswith("tuned:") or not text[len("tuned:") :].strip():
        raise NormprobeError(f"--readout must be model, logit or tuned:DIR (a tuned-lens folder), not {text!r}")
    try:
        path = Path(text[len("tuned:") :].strip()).expanduser().resolve()
        is_dir = path.is_dir()
    except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError from resolve(), ELOOP from stat()
        raise NormprobeError(
            f"tuned lens folder {text[len('tuned:') :].strip()} cannot be opened: "
            f"{getattr(exc, 'strerror', None) or ' '.join(str(exc).split())[:200]}"
        ) from None
    if not is_dir:
        raise NormprobeError(f"tuned lens folder not found: {path}")
    from .lock import live_holder

    holder = live_holder(path)
    if holder is not None:  # `lens train` holds the folder's lock while it writes the lens
        raise NormprobeError(
            f"tuned lens folder {path} is being written by another normprobe process "
            f"(pid {holder if holder > 0 else 'unknown'}); use it when the training has finished"
        )
    missing = [f for f in (CONFIG_FILE, PARAMS_FILE) if not (path / f).is_file()]
    if missing:
        raise NormprobeError(f"tuned lens folder {path} has no {' or '.join(missing)} (expected the tuned-lens format)")
    read_lens_config(path)
    return ReadoutSpec("tuned", path)


def read_lens_config(path: Path) -> dict[str, Any]:
    from .jsonio import read_json

    config = read_json(Path(path) / CONFIG_FILE, f"tuned lens folder {path} has no {CONFIG_FILE}")
    if not isinstance(config, dict) or not all(isinstance(config.get(k), int) for k in ("d_model", "num_hidden_layers")):
        raise NormprobeError(
            f"{Path(path) / CONFIG_FILE} is not a tuned-lens config (needs integer d_model and num_hidden_layers)"
        )
    if config.get("lens_type", LENS_TYPE) != LENS_TYPE:
        raise NormprobeError(f"{Path(path) / CONFIG_FILE}: lens_type {config['lens_type']!r} is not supported (only {LENS_TYPE})")
    return config


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

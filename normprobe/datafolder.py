"""A dataset folder is data: what its JSON and README name is checked before `datasets` reads it.

`save_to_disk` folders name their arrow files in `state.json` and their splits in `dataset_dict.json`;
data-file folders may name files in a README's `configs`. Every name must be a file inside the folder
(a folder never sends normprobe to read elsewhere: absolute paths, `..` and links out are refused), and
the corpus fingerprint covers the bytes of every file read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .errors import NormprobeError
from .jsonio import read_json

ARROW_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the end-of-stream marker every complete arrow stream ends with


def inside(root: Path, name: Any, what: str) -> Path:
    """`root / name` when `name` is a relative path to a file within `root`; otherwise one line."""
    if not isinstance(name, str) or not name:
        raise NormprobeError(f"{what} names {name!r}, not a file name")
    candidate = Path(name)
    try:
        resolved, base = (root / candidate).resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise NormprobeError(f"{what} names {name!r}, which cannot be opened ({exc})") from None
    if candidate.is_absolute() or not resolved.is_relative_to(base):
        raise NormprobeError(
            f"{what} names {name!r}, outside the dataset folder {root}; a dataset folder "
            "may name only files inside it (give other files yourself, as --dataset FILE or a glob)"
        )
    return resolved


def _json_object(path: Path, what: str) -> dict[str, Any]:
    body = read_json(path, f"{path} is missing")
    if not isinstance(body, dict):
        raise NormprobeError(f"{path} is damaged or not a datasets {what}: it holds {type(body).__name__}, not an object")
    return body


def check_split_folder(folder: Path) -> list[str]:
    """The arrow files (relative names) a `Dataset.save_to_disk` folder's state.json names, each checked."""
    state = _json_object(folder / "state.json", "state.json")
    files = state.get("_data_files")
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) for f in files):
        raise NormprobeError(
            f"{folder / 'state.json'} is damaged: '_data_files' must be a list of "
            f"{{\"filename\": ...}} objects, not {type(files).__name__}"
        )
    names = []
    for entry in files:
        path = inside(folder, entry.get("filename"), str(folder / "state.json"))
        if not path.is_file():
            raise NormprobeError(f"{folder / 'state.json'} names {entry.get('filename')!r}, which is missing")
        check_arrow_complete(path)
        names.append(str(path.relative_to(folder.resolve())))
    if (folder / "dataset_info.json").exists():
        _json_object(folder / "dataset_info.json", "dataset_info.json")
    return names


def check_arrow_complete(path: Path) -> None:
    """A truncated arrow file reads as fewer rows (or none) without an error; its missing end marker tells."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(0, size - len(ARROW_END)))
            tail = fh.read()
    except OSError as exc:
        raise NormprobeError(f"cannot read {path}: {exc.strerror or exc}") from None
    if tail != ARROW_END:
        raise NormprobeError(f"{path} is truncated or damaged (it does not end as a complete arrow stream)")


def check_disk_folder(root: Path) -> dict[str | None, list[str]]:
    """Split name (None for a single Dataset) -> the files (relative to `root`) it reads, all checked."""
    if (root / "dataset_dict.json").is_file():
        body = _json_object(root / "dataset_dict.json", "dataset_dict.json")
        splits = body.get("splits")
        if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
            raise NormprobeError(f"{root / 'dataset_dict.json'} is damaged: 'splits' must be a list of split names")
        read = {}
        for split in splits:
            folder = inside(root, split, str(root / "dataset_dict.json"))
            if not folder.is_dir() or folder.parent != root.resolve():
                raise NormprobeError(f"{root / 'dataset_dict.json'} names split {split!r}, which is no folder of {root}")
            read[split] = [f"{split}/{name}" for name in check_split_folder(root / split)]
        return read
    return {None: check_split_folder(root)}


def files_inside(root: Path, data_files: Any) -> list[str]:
    """The data files a builder resolved (from a README's `configs` or the folder's layout), all inside `root`,
    as names relative to it."""
    named: list[str] = []
    for files in (data_files or {}).values():
        for name in files:
            text = str(name)
            if "://" in text:
                raise NormprobeError(
                    f"the README of {root} names {text}, outside the dataset folder; a dataset "
                    "folder may name only files inside it"
                )
            # datasets hands back absolute paths: what matters is where they resolve to
            relative = Path(text).resolve()
            if relative.is_relative_to(root.resolve()):
                relative = relative.relative_to(root.resolve())
            named.append(str(inside(root, str(relative), f"the README of {root}").relative_to(root.resolve())))
    return named


def files_sha256(root: Path, names: list[str]) -> str:
    """sha256 of every file read: its name relative to `root`, its size and its bytes (streamed).

    Each must lie inside `root` (a link out of the folder is refused like a path out of it).
    """
    digest = hashlib.sha256()
    for name in sorted(set(names)):
        path = inside(root, name, f"dataset folder {root}")
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

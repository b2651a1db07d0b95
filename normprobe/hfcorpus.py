"""Hugging Face `datasets` as corpora: a `save_to_disk` folder, data files (a folder or a glob), or a Hub dataset.

Local data files and Hub datasets are read with streaming, so nothing is converted or downloaded whole.
`datasets` is imported only when a dataset is asked for.
"""
from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import NormprobeError

# data-file suffix -> the `datasets` builder that reads it
BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text",
            ".arrow": "arrow"}
TEXT_TYPES = ("string", "large_string")
BATCH = 1024


@dataclass(frozen=True)
class DatasetSpec:
    """Which dataset, which config and split, and which column holds the text."""

    name: str
    config: str | None = None
    split: str = "train"
    text_field: str = "text"

    @property
    def description(self) -> str:
        config = f", config {self.config}" if self.config else ""
        return f"dataset {self.name}{config}, split {self.split}, field {self.text_field}"


@dataclass
class OpenedDataset:
    """A dataset opened and checked: `rows` is a Dataset or IterableDataset of the chosen split."""

    spec: DatasetSpec
    kind: str  # "disk", "files" or "hub"
    rows: Any
    fingerprint: str  # the dataset's own fingerprint, its files' sha256, or the Hub commit

    def documents(self) -> Iterator[str]:
        field = self.spec.text_field
        for batch in self.rows.select_columns([field]).iter(batch_size=BATCH):
            for text in batch[field]:
                if isinstance(text, str) and text.strip():
                    yield text

    def digest(self) -> str:
        """What resume compares: the dataset's identity, the split and field read from it."""
        spec = self.spec
        key = f"dataset\0{self.kind}\0{self.fingerprint}\0{spec.config}\0{spec.split}\0{spec.text_field}"
        return hashlib.sha256(key.encode()).hexdigest()


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise NormprobeError("--dataset needs the datasets package: pip install datasets") from None
    return datasets


def kind_of(name: str) -> str:
    """`disk` for a save_to_disk folder, `files` for data files, `hub` for anything that is not a local path."""
    path = Path(name).expanduser()
    if glob.has_magic(name):
        return "files"
    if path.is_dir():
        return "disk" if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file() else "files"
    if path.is_file():
        return "files"
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.suffix.lower() in BUILDERS:
        raise NormprobeError(f"dataset not found: {name} is no file, folder or glob that matches files")
    return "hub"


def open_dataset(spec: DatasetSpec) -> OpenedDataset:
    """Open the split, and check the text column, with one-line errors naming what exists."""
    kind = kind_of(spec.name)
    if spec.config is not None and kind != "hub":
        raise NormprobeError(f"--dataset-config applies to Hub datasets; {spec.name} is a local {kind} dataset")
    opener = {"disk": _open_disk, "files": _open_files, "hub": _open_hub}[kind]
    rows, fingerprint = opener(spec)
    _check_text_field(spec, rows)
    return OpenedDataset(spec, kind, rows, fingerprint)


def _pick_split(spec: DatasetSpec, splits: Any) -> Any:
    if spec.split not in splits:
        raise NormprobeError(f"dataset {spec.name} has no split {spec.split!r}; splits: {', '.join(splits)}; "
                             "choose one with --split")
    return splits[spec.split]


def _open_disk(spec: DatasetSpec) -> tuple[Any, str]:
    datasets = _import_datasets()
    try:
        loaded = datasets.load_from_disk(str(Path(spec.name).expanduser()))
    except (OSError, ValueError) as exc:
        raise NormprobeError(f"cannot read dataset folder {spec.name}: {_first_line(exc)}") from None
    # a folder holding one Dataset has no splits to choose from; --split names a DatasetDict's part
    rows = _pick_split(spec, loaded) if isinstance(loaded, datasets.DatasetDict) else loaded
    return rows, rows._fingerprint  # written into the folder by save_to_disk: stable across loads


def _data_files(name: str) -> list[Path]:
    path = Path(name).expanduser()
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    else:
        files = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
    if not files:
        raise NormprobeError(f"dataset not found: no files match {name}")
    return files


def _files_sha256(files: list[Path]) -> str:
    """The bytes of every data file, streamed: the same content gives the same corpus, wherever it lies."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _open_files(spec: DatasetSpec) -> tuple[Any, str]:
    datasets = _import_datasets()
    files = _data_files(spec.name)
    path = Path(spec.name).expanduser()
    try:
        if path.is_dir():  # datasets finds the builder and the splits (train-*.parquet, test.csv, ...) itself
            splits = datasets.load_dataset(str(path), streaming=True)
        else:
            builders = {BUILDERS.get(p.suffix.lower()) for p in files}
            if None in builders or len(builders) != 1:
                raise NormprobeError(f"{spec.name} matches files of types {', '.join(sorted({p.suffix or '(none)' for p in files}))}; "
                                     f"give files of one type among {', '.join(BUILDERS)}")
            splits = datasets.load_dataset(builders.pop(), data_files=[str(p) for p in files], streaming=True)
    except NormprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for unreadable data files
        raise NormprobeError(f"cannot read dataset files {spec.name}: {_first_line(exc)}") from None
    return _pick_split(spec, splits), _files_sha256(files)


def _open_hub(spec: DatasetSpec) -> tuple[Any, str]:
    """Stream a Hub dataset; its fingerprint is the commit the name resolves to now."""
    datasets = _import_datasets()
    try:
        from huggingface_hub import HfApi

        commit = HfApi().dataset_info(spec.name).sha
        splits = datasets.load_dataset(spec.name, spec.config, streaming=True, revision=commit)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, missing config: one line each
        raise NormprobeError(f"cannot open Hub dataset {spec.name}"
                             f"{f' (config {spec.config})' if spec.config else ''}: {_first_line(exc)}") from None
    return _pick_split(spec, splits), f"{spec.name}@{commit}"


def _check_text_field(spec: DatasetSpec, rows: Any) -> None:
    features = rows.features
    if features is None:  # some streamed formats learn their columns from the first row
        first = next(iter(rows), None)
        if first is None:
            raise NormprobeError(f"{spec.description} holds no rows")
        types = {k: ("string" if isinstance(v, str) else type(v).__name__) for k, v in first.items()}
    else:
        types = {k: getattr(v, "dtype", type(v).__name__) for k, v in features.items()}
    if spec.text_field not in types:
        raise NormprobeError(f"dataset {spec.name} (split {spec.split}) has no column {spec.text_field!r}; "
                             f"columns: {', '.join(types)}; choose one with --text-field")
    if types[spec.text_field] not in TEXT_TYPES:
        texts = [k for k, t in types.items() if t in TEXT_TYPES]
        raise NormprobeError(f"column {spec.text_field!r} of dataset {spec.name} holds {types[spec.text_field]}, "
                             f"not text; text columns: {', '.join(texts) or 'none'}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__

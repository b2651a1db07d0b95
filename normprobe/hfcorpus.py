"""Hugging Face `datasets` as corpora: a `save_to_disk` folder, data files (a folder or a glob), or a Hub dataset.

Local data files and Hub datasets are read with streaming, so nothing is converted or downloaded whole.
`datasets` is imported only when a dataset is asked for.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NormprobeError

# data-file suffix -> the `datasets` builder that reads it
BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text", ".arrow": "arrow"}
TEXT_TYPES = ("string", "large_string")
BATCH = 1024


@dataclass(frozen=True)
class DatasetSpec:
    """Which dataset, which config and split, and which column holds the text."""

    name: str
    config: str | None = None
    split: str = "train"
    text_field: str = "text"
    encoding: str = "utf-8"  # of CSV, JSON and text data files (arrow and parquet strings are UTF-8)
    errors: str = "strict"  # undecodable bytes: strict (one line naming them) or replace (U+FFFD)

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
        """The texts, decoded here from the arrow bytes, so --errors applies to arrow and parquet strings too."""
        from .corpus import arrow_texts

        spec = self.spec
        rows = self.rows.select_columns([spec.text_field]).with_format("arrow")
        batches = iter(rows.iter(batch_size=BATCH))
        start = 0
        while True:
            try:
                batch = next(batches, None)
            except NormprobeError:
                raise
            except Exception as exc:  # noqa: BLE001 - datasets and pyarrow raise many types for bad bytes
                raise _unreadable(spec, exc) from None
            if batch is None:
                return
            for text in arrow_texts(batch.column(spec.text_field), spec.errors, spec.description, start):
                if text is not None and text.strip():
                    yield text
            start += batch.num_rows

    def digest(self) -> str:
        """What resume compares: the dataset's identity (its files' bytes), the split and field read, how decoded."""
        spec = self.spec
        key = (
            f"dataset\0{self.kind}\0{self.fingerprint}\0{spec.config}\0{spec.split}\0{spec.text_field}"
            f"\0{spec.encoding}\0{spec.errors}"
        )
        return hashlib.sha256(key.encode()).hexdigest()


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise NormprobeError("--dataset needs the datasets package: pip install datasets") from None
    import logging

    # its builders log a file they cannot read before raising; normprobe says it in its own one line
    logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)
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
    try:
        _check_text_field(spec, rows)
    except NormprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a streamed format reads its first row here
        raise _unreadable(spec, exc) from None
    return OpenedDataset(spec, kind, rows, fingerprint)


def _unreadable(spec: DatasetSpec, exc: BaseException) -> NormprobeError:
    advice = "; pass --encoding ENCODING or --errors replace" if isinstance(exc, UnicodeDecodeError) else ""
    return NormprobeError(f"cannot read {spec.description}: {_first_line(exc)}{advice}")


def _pick_split(spec: DatasetSpec, splits: Any) -> Any:
    if spec.split not in splits:
        raise NormprobeError(
            f"dataset {spec.name} has no split {spec.split!r}; splits: {', '.join(splits)}; choose one with --split"
        )
    return splits[spec.split]


def _open_disk(spec: DatasetSpec) -> tuple[Any, str]:
    from .datafolder import check_disk_folder, files_sha256

    datasets = _import_datasets()
    root = Path(spec.name).expanduser()
    read = check_disk_folder(root)  # before datasets reads anything the folder's JSON names
    try:
        loaded = datasets.load_from_disk(str(root))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a damaged folder
        raise NormprobeError(f"cannot read dataset folder {spec.name}: {_first_line(exc)}") from None
    # a folder holding one Dataset has no splits to choose from; --split names a DatasetDict's part
    rows = _pick_split(spec, loaded) if isinstance(loaded, datasets.DatasetDict) else loaded
    # save_to_disk's fingerprint and the bytes of every file read: an edited arrow file changes the digest
    files = read.get(spec.split if isinstance(loaded, datasets.DatasetDict) else None, [])
    return rows, f"{rows._fingerprint}:{files_sha256(root, files)}"


def _data_files(name: str) -> list[Path]:
    path = Path(name).expanduser()
    if path.is_dir():
        files = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
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
    from .datafolder import files_inside, files_sha256

    datasets = _import_datasets()
    files = _data_files(spec.name)
    path = Path(spec.name).expanduser()
    try:
        if path.is_dir():  # datasets finds the builder and the splits (train-*.parquet, test.csv, ...) itself
            builder = datasets.load_dataset_builder(str(path))
            # a README's `configs` may name data files: only files inside the folder are read
            named = files_inside(path, builder.config.data_files)
            if _decodes_text(builder.config):
                builder = datasets.load_dataset_builder(str(path), **_decoding(spec))
            splits = builder.as_streaming_dataset()
            fingerprint = files_sha256(path, [str(p.relative_to(path)) for p in files] + named)
        else:  # files the user named (a glob or a file): wherever they lie
            builders = {BUILDERS.get(p.suffix.lower()) for p in files}
            if None in builders or len(builders) != 1:
                raise NormprobeError(
                    f"{spec.name} matches files of types {', '.join(sorted({p.suffix or '(none)' for p in files}))}; "
                    f"give files of one type among {', '.join(BUILDERS)}"
                )
            builder_name = builders.pop()
            decoding = _decoding(spec) if builder_name in ("csv", "json", "text") else {}
            splits = datasets.load_dataset(builder_name, data_files=[str(p) for p in files], streaming=True, **decoding)
            fingerprint = _files_sha256(files)
    except NormprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for unreadable data files
        raise NormprobeError(f"cannot read dataset files {spec.name}: {_first_line(exc)}") from None
    return _pick_split(spec, splits), fingerprint


def _decodes_text(config: Any) -> bool:
    """The builder reads text files itself (csv, json, text): --encoding and --errors are passed to it."""
    return hasattr(config, "encoding") and hasattr(config, "encoding_errors")


def _decoding(spec: DatasetSpec) -> dict[str, str]:
    return {"encoding": spec.encoding, "encoding_errors": spec.errors}


def _open_hub(spec: DatasetSpec) -> tuple[Any, str]:
    """Stream a Hub dataset; its fingerprint is the commit the name resolves to now."""
    datasets = _import_datasets()
    try:
        from huggingface_hub import HfApi

        commit = HfApi().dataset_info(spec.name).sha
        splits = datasets.load_dataset(spec.name, spec.config, streaming=True, revision=commit)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, missing config: one line each
        raise NormprobeError(
            f"cannot open Hub dataset {spec.name}{f' (config {spec.config})' if spec.config else ''}: {_first_line(exc)}"
        ) from None
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
        raise NormprobeError(
            f"dataset {spec.name} (split {spec.split}) has no column {spec.text_field!r}; "
            f"columns: {', '.join(types)}; choose one with --text-field"
        )
    if types[spec.text_field] not in TEXT_TYPES:
        texts = [k for k, t in types.items() if t in TEXT_TYPES]
        raise NormprobeError(
            f"column {spec.text_field!r} of dataset {spec.name} holds {types[spec.text_field]}, "
            f"not text; text columns: {', '.join(texts) or 'none'}"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__

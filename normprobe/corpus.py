"""Documents in: the built-in sample and files in txt, jsonl, csv or parquet.

Everything here is plain Python and pyarrow; no torch, so validating input is fast.
"""

from __future__ import annotations

import ast
import codecs
import hashlib
import io
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import NormprobeError

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")
VALIDATE_DOCS = 200_000  # documents read ahead before the model loads


def _paragraphs(text: str, min_chars: int) -> list[str]:
    out = []
    for block in text.split("\n\n"):
        block = " ".join(block.split())
        if len(block) >= min_chars and not set(block) <= set("*=-~^ "):
            out.append(block)
    return out


def pydoc_topic_documents(min_chars: int = 40) -> list[str]:
    """Paragraphs of the interpreter's own help topics (English prose that every Python ships)."""
    from pydoc_data.topics import topics

    docs: list[str] = []
    for key in sorted(topics):
        docs.extend(_paragraphs(topics[key], min_chars))
    return docs


def stdlib_docstring_documents(min_chars: int = 40) -> list[str]:
    """Paragraphs of the module docstrings of the standard library's top-level sources."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc:
            docs.extend(_paragraphs(doc, min_chars))
    return docs


def sample_documents(n: int | None = 200) -> list[str]:
    """The built-in sample corpus: paragraphs of Python's help topics, every 7th one.

    The demo model holds out the same every-7th paragraphs for validation, so the sample
    is text the demo model did not train on.
    """
    docs = pydoc_topic_documents()[3::7]
    return docs if n is None else docs[:n]


@dataclass(frozen=True)
class InputSpec:
    """A corpus file and how to read it."""

    path: Path
    text_field: str = "text"
    encoding: str = "utf-8"
    errors: str = "strict"


def validate_input(spec: InputSpec) -> None:
    """Check the input file before any model loads: exists, readable, right format, non-empty."""
    path = spec.path
    if not path.exists():
        raise NormprobeError(f"input file not found: {path}")
    if path.is_dir():
        raise NormprobeError(f"input is a folder, not a file: {path}")
    if not path.is_file():
        # a FIFO, socket or device: it is read several times (read-ahead, sha256, the run) and may never end
        raise NormprobeError(f"input {path} is not a regular file (a pipe or device?); save it to a file first")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise NormprobeError(
            f"unsupported input type {path.suffix or '(none)'!r} for {path}; use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192)
    except OSError as exc:
        raise NormprobeError(f"cannot read input file {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".txt", ".jsonl", ".csv") and "\x00" in _decoded_head(head, spec):
        raise NormprobeError(f"input file {path} looks binary (it holds NUL characters), not {spec.encoding} text")
    # Reading ahead is cheap next to a model load and catches encoding and format errors early;
    # past VALIDATE_DOCS documents a bad line still stops the run with the same one-line message.
    if next(iter_documents(spec), None) is None:
        raise NormprobeError(f"input file {path} holds no documents (it is empty or only whitespace)")
    for count, _ in enumerate(iter_documents(spec)):
        if count >= VALIDATE_DOCS:
            break


def _decoded_head(head: bytes, spec: InputSpec) -> str:
    """The first bytes decoded first: UTF-16 text holds NUL bytes, not NUL characters."""
    try:
        decoder = codecs.getincrementaldecoder(spec.encoding)(errors="replace")
    except LookupError:
        raise NormprobeError(f"unknown encoding {spec.encoding!r}") from None
    return decoder.decode(head)


def _binary(path: Path, where: str) -> NormprobeError:
    return NormprobeError(f"input file {path} looks binary ({where} holds a NUL character), not text")


def iter_documents(spec: InputSpec) -> Iterator[str]:
    """Stream the documents of a file, one at a time; never reads a text file whole."""
    suffix = spec.path.suffix.lower()
    if suffix == ".txt":
        yield from _iter_txt(spec)
    elif suffix == ".jsonl":
        yield from _iter_jsonl(spec)
    elif suffix in (".csv", ".parquet"):
        yield from _iter_table(spec)
    else:
        raise NormprobeError(f"unsupported input type {suffix!r}")


def _lines(spec: InputSpec) -> Iterator[tuple[int, str]]:
    """Decoded lines with their 1-based numbers; an undecodable byte names its line."""
    try:
        decoder = codecs.getincrementaldecoder(spec.encoding)(errors=spec.errors)
    except LookupError:
        raise NormprobeError(f"unknown encoding {spec.encoding!r}") from None
    lineno, pending = 0, ""
    with open(spec.path, "rb") as fh:
        for raw in fh:
            try:
                pending += decoder.decode(raw)
            except UnicodeDecodeError:
                raise NormprobeError(
                    f"{spec.path}: line {lineno + pending.count(chr(10)) + 1} is not valid {spec.encoding}; "
                    "pass --encoding ENCODING or --errors replace"
                ) from None
            *complete, pending = pending.split("\n")
            for line in complete:
                lineno += 1
                if "\x00" in line:  # anywhere in the file, not only in the first 8 KB the early check reads
                    raise _binary(spec.path, f"line {lineno}")
                yield lineno, line.rstrip("\r")
        pending += decoder.decode(b"", final=True)
    if "\x00" in pending:
        raise _binary(spec.path, f"line {lineno + 1}")
    if pending:
        yield lineno + 1, pending.rstrip("\r")


def _iter_txt(spec: InputSpec) -> Iterator[str]:
    for _, line in _lines(spec):
        text = line.strip()
        if text:
            yield text


def _iter_jsonl(spec: InputSpec) -> Iterator[str]:
    for lineno, line in _lines(spec):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise NormprobeError(f"{spec.path}: line {lineno} is not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise NormprobeError(f"{spec.path}: line {lineno} is nested too deeply to read as JSON") from None
        except ValueError as exc:  # e.g. an integer too long to convert
            raise NormprobeError(f"{spec.path}: line {lineno} cannot be read as JSON ({exc})") from None
        if not isinstance(record, dict) or spec.text_field not in record:
            raise NormprobeError(f"{spec.path}: line {lineno} has no field {spec.text_field!r}; choose one with --text-field")
        text = record[spec.text_field]
        if not isinstance(text, str):
            raise NormprobeError(f"{spec.path}: line {lineno} field {spec.text_field!r} is {_json_kind(text)}, not a string")
        text = as_text(text, f"{spec.path}: line {lineno} field {spec.text_field!r}", spec.errors)
        if text.strip():
            yield text


def _json_kind(value: object) -> str:
    return {dict: "an object", list: "a list", bool: "true/false", type(None): "null"}.get(type(value), "a number")


def as_text(text: str, where: str, errors: str = "strict") -> str:
    """Text a tokenizer accepts: lone surrogates (an escaped \\ud800 in JSON, undecodable bytes in argv)
    are an error naming `where`, or U+FFFD with errors='replace'."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError as exc:
        if errors == "replace":
            return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        raise NormprobeError(
            f"{where} holds {text[exc.start : exc.end].encode('unicode_escape').decode()!s} at "
            f"character {exc.start}, which is not text (a lone surrogate); "
            "fix it or pass --errors replace"
        ) from None


CSV_BLOCK = 1 << 20  # pyarrow's default; a row longer than a block is read again with larger blocks


def _iter_table(spec: InputSpec) -> Iterator[str]:
    """The texts of a CSV or parquet column, decoded here so --errors applies to parquet strings too.

    A CSV row longer than pyarrow's block (a multi-megabyte cell) is read again with blocks large enough,
    skipping the rows already given: the documents are the same whatever the file's block layout.
    """
    import pyarrow as pa

    done, block = 0, CSV_BLOCK
    size = spec.path.stat().st_size
    while True:
        try:
            for index, text in enumerate(_table_texts(spec, block)):
                if index < done:
                    continue
                done += 1
                if text is not None and text.strip():
                    yield text
            return
        except _RowTooLong as exc:
            if block > 2 * size + CSV_BLOCK:
                raise NormprobeError(f"cannot read {spec.path}: {exc}") from None
            block *= 8
        except pa.ArrowInvalid as exc:
            raise NormprobeError(f"cannot read {spec.path}: {str(exc).splitlines()[0]}") from None


class _RowTooLong(Exception):
    """pyarrow's CSV reader met a row longer than its block."""


def _table_texts(spec: InputSpec, block: int) -> Iterator[str | None]:
    import pyarrow as pa

    where = str(spec.path)
    try:
        if spec.path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            source = pq.ParquetFile(spec.path)
            columns = source.schema_arrow.names
            batches = lambda: source.iter_batches(columns=[spec.text_field], batch_size=1024)  # noqa: E731
        else:
            import pyarrow.csv as pcsv

            # decoded by Python, so --encoding and --errors mean what they mean for .txt; every cell is text
            stream = _Utf8Stream(spec)
            try:
                reader = pcsv.open_csv(
                    stream,
                    read_options=pcsv.ReadOptions(block_size=block),
                    convert_options=pcsv.ConvertOptions(column_types={spec.text_field: pa.string()}),
                )
            except pa.ArrowInvalid as exc:
                stream.check()
                _raise_if_too_long(exc)
                raise
            stream.check()
            columns = reader.schema.names
            batches = lambda: stream.checked(reader)  # noqa: E731
    except OSError as exc:
        raise NormprobeError(f"cannot read {spec.path}: {str(exc).splitlines()[0]}") from None
    if spec.text_field not in columns:
        raise NormprobeError(
            f"{spec.path} has no column {spec.text_field!r}; columns found: {', '.join(columns)}; choose one with --text-field"
        )
    if spec.path.suffix.lower() == ".parquet":
        kind = source.schema_arrow.field(spec.text_field).type
        if not is_text_type(kind):
            raise NormprobeError(
                f"{spec.path}: column {spec.text_field!r} holds {kind} values, not text; choose a text column with --text-field"
            )
    start = 0
    try:
        for batch in batches():
            column = batch.column(batch.schema.get_field_index(spec.text_field))
            yield from arrow_texts(column, spec.errors, where, start)
            start += batch.num_rows
    except pa.ArrowInvalid as exc:
        if spec.path.suffix.lower() == ".csv":
            stream.check()
            _raise_if_too_long(exc)
        raise


def _raise_if_too_long(exc: Exception) -> None:
    if "straddl" in str(exc) or "block size" in str(exc):
        raise _RowTooLong(str(exc).splitlines()[0]) from None


def is_text_type(kind) -> bool:
    """Text, or text stored as a dictionary (a pandas Categorical saved to parquet)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def arrow_texts(column, errors: str, where: str, start: int = 0) -> Iterator[str | None]:
    """The values of an arrow text column as str (None for nulls), decoded from its UTF-8 bytes here.

    Arrow does not check that string bytes are UTF-8: an invalid byte is one line naming the row, or
    U+FFFD with errors='replace'. Dictionary-encoded text is read as text.
    """
    import pyarrow as pa

    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        column = column.cast(pa.large_binary() if pa.types.is_large_string(kind) else pa.binary())
    elif not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        yield from (v if isinstance(v, str) else None for v in column.to_pylist())
        return
    for offset, raw in enumerate(column.to_pylist()):
        if raw is None:
            yield None
            continue
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if errors != "replace":
                raise NormprobeError(
                    f"{where}: row {start + offset + 1} holds bytes that are not valid UTF-8 "
                    f"(at byte {exc.start}); fix it or pass --errors replace"
                ) from None
            yield raw.decode("utf-8", "replace")


class _Utf8Stream(io.RawIOBase):
    """A file decoded with --encoding and --errors and handed on as UTF-8, for pyarrow's CSV reader.

    pyarrow reads it from its own thread, where an exception would abort the process; an undecodable
    byte therefore ends the stream, and `check` raises the one-line error in the caller's thread.
    """

    def __init__(self, spec: InputSpec):
        try:
            self._decoder = codecs.getincrementaldecoder(spec.encoding)(errors=spec.errors)
        except LookupError:
            raise NormprobeError(f"unknown encoding {spec.encoding!r}") from None
        self._spec = spec
        self._file = open(spec.path, "rb")
        self._ready = b""
        self._ended = False
        self._undecodable = False
        self._binary = False

    def check(self) -> None:
        if self._binary:
            raise _binary(self._spec.path, "it")
        if self._undecodable:
            raise NormprobeError(
                f"{self._spec.path} is not valid {self._spec.encoding}; pass --encoding ENCODING or --errors replace"
            )

    def checked(self, reader):
        for batch in reader:
            self.check()
            yield batch
        self.check()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while len(self._ready) < len(buffer) and not self._ended:
            raw = self._file.read(1 << 16)
            self._ended = not raw
            try:
                text = self._decoder.decode(raw, final=self._ended)
            except UnicodeDecodeError:
                self._undecodable = self._ended = True
                continue
            if "\x00" in text:
                self._binary = self._ended = True
                continue
            self._ready += text.encode("utf-8")
        n = min(len(buffer), len(self._ready))
        buffer[:n] = self._ready[:n]
        self._ready = self._ready[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


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

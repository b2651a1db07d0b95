"""Reading corpora: formats, fields, encodings, and the errors a user sees."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from normprobe.batching import iter_windows, windows_of
from normprobe.corpus import InputSpec, iter_documents, sample_documents, validate_input
from normprobe.errors import NormprobeError


def docs(path, **kw):
    spec = InputSpec(path, **kw)
    validate_input(spec)
    return list(iter_documents(spec))


def test_txt_jsonl_csv_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n  \ntwo words\n")
    assert docs(tmp_path / "a.txt") == ["one", "two words"]
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "alpha"}) + "\n\n" + json.dumps({"text": "beta", "x": 1}) + "\n")
    assert docs(tmp_path / "a.jsonl") == ["alpha", "beta"]
    pd.DataFrame({"body": ["c1", "c2"], "id": [1, 2]}).to_csv(tmp_path / "a.csv", index=False)
    assert docs(tmp_path / "a.csv", text_field="body") == ["c1", "c2"]
    pd.DataFrame({"text": ["p1", "", "p3"]}).to_parquet(tmp_path / "a.parquet")
    assert docs(tmp_path / "a.parquet") == ["p1", "p3"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "holds no documents"),
        (b"  \n\t\n   \n", "holds no documents"),
        (b"\x00\x01\x02binary\x00", "looks binary"),
        (b"fine\ncaf\xe9\n", "line 2 is not valid utf-8"),
    ],
)
def test_bad_text_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(NormprobeError, match=message):
        docs(path)


def test_errors_replace_reads_bad_bytes(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"caf\xe9\n")
    assert docs(path, errors="replace") == ["caf\ufffd"]
    assert docs(path, encoding="latin-1") == ["café"]


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(NormprobeError, match="line 2 is not valid JSON"):
        docs(path)
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(NormprobeError, match="line 2 has no field 'text'"):
        docs(path)


def test_table_without_text_column_lists_columns(tmp_path):
    pd.DataFrame({"body": ["a"], "id": [1]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(NormprobeError, match="columns found: body, id"):
        docs(tmp_path / "x.parquet")
    pd.DataFrame({"body": ["a"]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(NormprobeError, match="columns found: body"):
        docs(tmp_path / "x.csv")


def test_missing_folder_and_suffix(tmp_path):
    with pytest.raises(NormprobeError, match="not found"):
        docs(tmp_path / "nope.txt")
    with pytest.raises(NormprobeError, match="is a folder"):
        docs(tmp_path)
    (tmp_path / "x.docx").write_text("x")
    with pytest.raises(NormprobeError, match="unsupported input type"):
        docs(tmp_path / "x.docx")


def test_long_document_is_windowed_with_bos_each():
    ids = list(range(1, 250_001))  # a document of 250,000 tokens
    windows = list(windows_of(0, ids, 1024, bos=0))
    assert all(w.tokens[0] == 0 for w in windows)
    assert all(len(w.tokens) <= 1024 for w in windows)
    assert [t for w in windows for t in w.tokens[1:]] == ids
    no_bos = list(windows_of(0, ids, 1024, bos=None))
    assert [t for w in no_bos for t in w.tokens] == ids and len(no_bos) == 245


def test_max_tokens_and_max_docs_stop_cleanly():
    encode = lambda text: [ord(c) for c in text]  # noqa: E731
    windows = list(iter_windows(["abcdef", "ghij", "klm"], encode, 4, bos=0, max_tokens=9))
    assert sum(len(w.tokens) for w in windows) == 9
    windows = list(iter_windows(["abcdef", "ghij", "klm"], encode, 4, bos=0, max_docs=2))
    assert {w.doc_index for w in windows} == {0, 1}


def test_sample_is_offline_prose():
    sample = sample_documents(20)
    assert len(sample) == 20 and all(len(d) >= 40 for d in sample)

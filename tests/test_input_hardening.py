"""Corpus files and dataset folders tried as a hostile tester would: valid input read, bad input one line.

A dataset folder is data: the files its state.json, dataset_dict.json or README name must lie inside it,
and the corpus fingerprint follows the bytes of every file read. Every refusal comes before the model loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from normprobe.corpus import InputSpec, iter_documents
from normprobe.errors import NormprobeError
from normprobe.runner import make_runner

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
TEXTS = ["The first document is short.", "A second one, about layers and norms.", "caf\u00e9 au lait"]


def cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    import normprobe.adapter as adapter
    from normprobe.cli import main

    def no_loading(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(adapter.ModelAdapter, "from_source", no_loading)
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    return exc.value.code or 0, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normprobe: error: "), err
    return lines[0]


def documents(dataset: Path, **options) -> list[str]:
    return list(make_runner("demo", dataset=str(dataset), **options).corpus.documents())


def digest(dataset: Path, **options) -> str:
    return make_runner("demo", dataset=str(dataset), **options).request()["corpus_sha256"]


def bad_utf8_table() -> pa.Table:
    """A text column whose second value holds the byte 0xE9 alone (Latin-1 é), which is not UTF-8."""
    raw = pa.array([TEXTS[0].encode(), b"caf\xe9 au lait", TEXTS[1].encode()], pa.binary())
    return pa.table({"text": raw.view(pa.string())})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-ds")
    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(root / "single")
    return root


# -- 1, 2. a dataset folder names only files inside it ------------------------------------
def test_dataset_json_that_points_elsewhere_or_is_malformed_is_one_line(saved, tmp_path, capsys, monkeypatch):
    def variant(name: str, state=None, split_names=None) -> Path:
        folder = tmp_path / name
        if split_names is not None:
            folder.mkdir()
            shutil.copytree(saved / "single", folder / "train")
            (folder / "dataset_dict.json").write_text(json.dumps({"splits": split_names}))
            return folder
        shutil.copytree(saved / "single", folder)
        (folder / "state.json").write_text(json.dumps(state) if not isinstance(state, str) else state)
        return folder

    original = json.loads((saved / "single" / "state.json").read_text())
    arrow = original["_data_files"][0]["filename"]
    outside = tmp_path / "elsewhere.arrow"
    shutil.copy(saved / "single" / arrow, outside)
    cases = {
        "list": (variant("list", [1, 2]), "holds list, not an object"),
        "string": (variant("string", {**original, "_data_files": arrow}), "'_data_files' must be a list"),
        "deep": (variant("deep", "[" * 100_000 + "]" * 100_000), "state.json is not valid JSON (RecursionError"),
        "dotdot": (
            variant("dotdot", {**original, "_data_files": [{"filename": "../elsewhere.arrow"}]}),
            "names '../elsewhere.arrow', outside the dataset folder",
        ),
        "absolute": (
            variant("absolute", {**original, "_data_files": [{"filename": str(outside)}]}),
            f"names '{outside}', outside the dataset folder",
        ),
        "split": (variant("split", split_names=["train", "../hostile-ds0/single"]), "outside the dataset folder"),
    }
    for name, (folder, phrase) in cases.items():
        code, err = cli(["run", "demo", "--dataset", str(folder), "--out", str(tmp_path / "x")], capsys, monkeypatch)
        assert code == 1 and phrase in one_line(err), (name, err)
    assert not (tmp_path / "x").exists()


def test_a_readme_may_name_only_files_inside_its_folder(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "files"
    (folder / ".data").mkdir(parents=True)
    pd.DataFrame({"text": TEXTS}).to_csv(folder / ".data" / "train.csv", index=False)
    pd.DataFrame({"text": ["outside the folder"]}).to_csv(tmp_path / "outside.csv", index=False)

    def readme(path: str) -> None:
        (folder / "README.md").write_text(
            f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {path}\n---\n"
        )

    readme(".data/train.csv")  # a hidden file the folder listing skips, named by the README
    assert documents(folder) == TEXTS
    before = digest(folder)
    pd.DataFrame({"text": TEXTS[::-1]}).to_csv(folder / ".data" / "train.csv", index=False)
    assert documents(folder) == TEXTS[::-1] and digest(folder) != before
    for path in ("../outside.csv", str(tmp_path / "outside.csv")):
        readme(path)
        code, err = cli(["run", "demo", "--dataset", str(folder), "--out", str(tmp_path / "x")], capsys, monkeypatch)
        assert code == 1 and "outside the dataset folder" in one_line(err), err


def test_fingerprint_follows_the_arrow_bytes(saved, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(saved / "single", folder)
    before = digest(folder)
    arrow = next(folder.glob("*.arrow"))
    data = arrow.read_bytes()
    arrow.write_bytes(data.replace(b"first document", b"final document"))  # same length, same fingerprint field
    assert (
        json.loads((folder / "state.json").read_text())["_fingerprint"]
        == json.loads((saved / "single" / "state.json").read_text())["_fingerprint"]
    )
    assert documents(folder)[0] == "The final document is short."
    assert digest(folder) != before


def test_truncated_arrow_file_is_named_not_empty(saved, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "truncated"
    shutil.copytree(saved / "single", folder)
    arrow = next(folder.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:200])
    code, err = cli(["run", "demo", "--dataset", str(folder), "--out", str(tmp_path / "x")], capsys, monkeypatch)
    assert code == 1 and "is truncated or damaged" in one_line(err), err


# -- 4. undecodable text: one line, or U+FFFD with --errors replace ------------------------
def test_undecodable_dataset_and_parquet_text_is_one_line_or_replaced(tmp_path, capsys, monkeypatch, caplog):
    import pyarrow.parquet as pq

    disk = tmp_path / "disk"
    datasets.Dataset(bad_utf8_table()).save_to_disk(disk)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_bytes(b'text\n"' + TEXTS[0].encode() + b'"\n"caf\xe9 au lait"\n')
    parquet = tmp_path / "bad.parquet"
    pq.write_table(bad_utf8_table(), parquet)
    parquet_folder = tmp_path / "pq"
    parquet_folder.mkdir()
    pq.write_table(bad_utf8_table(), parquet_folder / "train.parquet")
    replaced = "caf\ufffd au lait"
    capsys.readouterr()  # save_to_disk's progress bar
    for args, phrase in [
        (["--dataset", str(disk)], "row 2 holds bytes that are not valid UTF-8"),
        (["--dataset", str(data)], "pass --encoding ENCODING or --errors replace"),
        (["--dataset", str(parquet_folder)], "row 2 holds bytes that are not valid UTF-8"),
        (["--input", str(parquet)], "row 2 holds bytes that are not valid UTF-8"),
    ]:
        code, err = cli(["run", "demo", *args, "--out", str(tmp_path / "x")], capsys, monkeypatch)
        assert code == 1 and phrase in one_line(err), (args, err)
        assert "Failed to read" not in caplog.text  # datasets' own log line would be a second line
    assert not (tmp_path / "x").exists()
    assert documents(disk, errors="replace") == [TEXTS[0], replaced, TEXTS[1]]
    assert documents(parquet_folder, errors="replace") == [TEXTS[0], replaced, TEXTS[1]]
    assert documents(data, errors="replace") == [TEXTS[0], replaced]
    assert documents(data, encoding="latin-1") == [TEXTS[0], "caf\u00e9 au lait"]
    assert list(iter_documents(InputSpec(parquet, errors="replace"))) == [TEXTS[0], replaced, TEXTS[1]]
    assert digest(data, errors="replace") != digest(data, encoding="latin-1")  # how it is decoded is part of it


# -- 5. valid input accepted ------------------------------------------------------------------
def test_utf16_files_are_read_with_their_encoding(tmp_path, capsys, monkeypatch):
    files = {
        ".txt": "\n".join(TEXTS) + "\n",
        ".jsonl": "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS),
        ".csv": "text\n" + "".join(f'"{t}"\n' for t in TEXTS),
    }
    for suffix, content in files.items():
        path = tmp_path / f"corpus{suffix}"
        path.write_bytes(content.encode("utf-16"))  # with a BOM; every ASCII character has a NUL byte
        runner = make_runner("demo", input=str(path), encoding="utf-16")  # the checks `run` makes before loading
        assert list(runner.corpus.documents()) == TEXTS, suffix
        code, err = cli(["run", "demo", "--input", str(path), "--out", str(tmp_path / "x")], capsys, monkeypatch)
        assert code == 1 and "looks binary" in one_line(err), err  # read as UTF-8 it is not text


def test_a_multi_megabyte_csv_cell_is_read(tmp_path):
    big = "word " * 700_000  # 3.5 MB in one cell: longer than pyarrow's 1 MB block
    path = tmp_path / "big.csv"
    pd.DataFrame({"text": [TEXTS[0], big, TEXTS[1]], "n": [1, 2, 3]}).to_csv(path, index=False)
    assert list(iter_documents(InputSpec(path))) == [TEXTS[0], big, TEXTS[1]]


def test_a_dictionary_encoded_parquet_text_column_is_text(tmp_path):
    path = tmp_path / "categorical.parquet"
    pd.DataFrame({"text": pd.Categorical(TEXTS + TEXTS[:1])}).to_parquet(path)
    import pyarrow.parquet as pq

    assert pa.types.is_dictionary(pq.read_schema(path).field("text").type)
    assert list(iter_documents(InputSpec(path))) == TEXTS + TEXTS[:1]


# -- 7. NUL anywhere in a text file ------------------------------------------------------------
def test_nul_after_the_first_8_kb_is_refused(tmp_path, capsys, monkeypatch):
    path = tmp_path / "late.txt"
    path.write_bytes(b"fine line of text\n" * 1000 + b"bin\x00ary\n")
    code, err = cli(["run", "demo", "--input", str(path), "--out", str(tmp_path / "x")], capsys, monkeypatch)
    assert code == 1 and "looks binary (line 1001 holds a NUL character)" in one_line(err), err
    csv = tmp_path / "late.csv"
    csv.write_bytes(b"text\n" + b"fine line of text\n" * 1000 + b"bin\x00ary\n")
    with pytest.raises(NormprobeError, match="looks binary"):
        list(iter_documents(InputSpec(csv)))

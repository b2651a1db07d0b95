"""Hugging Face datasets as corpora, offline: save_to_disk folders, data-file folders and globs.

A dataset must give exactly the statistics of the same texts given directly; errors name what exists.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

import normprobe
from normprobe.errors import NormprobeError
from normprobe.runner import make_runner
from tests.conftest import DOCS
from tests.test_cli import invoke

datasets = pytest.importorskip("datasets")
TEXTS = DOCS + ["   ", "The last document is plain prose about layers and norms."]  # one blank: skipped by both
KEPT = [t for t in TEXTS if t.strip()]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DatasetDict on disk (train: TEXTS with a number column; test: two texts in column body)."""
    root = tmp_path_factory.mktemp("ds")
    train = datasets.Dataset.from_dict({"text": TEXTS, "n": list(range(len(TEXTS)))})
    datasets.DatasetDict({"train": train, "test": datasets.Dataset.from_dict({"body": TEXTS[:2]})}).save_to_disk(root / "dict")
    train.save_to_disk(root / "single")
    files = root / "files"
    files.mkdir()
    train.select(range(4)).to_parquet(files / "train-00000.parquet")
    train.select(range(4, len(TEXTS))).to_parquet(files / "train-00001.parquet")
    datasets.Dataset.from_dict({"text": ["held out text"]}).to_parquet(files / "test-00000.parquet")
    train.to_json(root / "a.jsonl")
    return root


def test_saved_dataset_equals_the_same_texts(saved, tmp_path, capsys):
    args = ["--probe", "norms", "--probe", "updates", "--no-progress", "--seq-len", "16"]
    code, _, err = invoke(["run", "demo", "--dataset", str(saved / "dict"), "--out", str(tmp_path / "ds"), *args], capsys)
    assert code == 0, err
    code, _, err = invoke(["run", "demo", *[x for t in KEPT for x in ("--text", t)], "--out", str(tmp_path / "t"), *args], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "ds" / "run.json").read_text())
    assert meta["corpus"] == f"dataset {saved / 'dict'}, split train, field text" and meta["n_docs"] == len(KEPT)
    for table in ("norms", "norms_by_token", "updates", "updates_by_position", "updates_hist"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "ds" / f"{table}.parquet"),
            pd.read_parquet(tmp_path / "t" / f"{table}.parquet"),
            check_exact=True,
        )
    assert meta["claims"] == json.loads((tmp_path / "t" / "run.json").read_text())["claims"]


@pytest.mark.parametrize(
    "dataset, extra",
    [("single", {}), ("files", {}), ("a.jsonl", {}), ("files/train-*.parquet", {}), ("files", {"split": "test"})],
)
def test_folders_files_and_globs_read_the_same_documents(saved, dataset, extra):
    runner = make_runner("demo", dataset=str(saved / dataset), **extra)
    want = ["held out text"] if extra else KEPT
    assert list(runner.corpus.documents()) == want


def test_statistics_from_data_files_equal_texts(saved, demo_adapter):
    from_files = normprobe.run(demo_adapter, dataset=str(saved / "files"), probes=["norms"], progress=False, seq_len=16)
    from_texts = normprobe.run(demo_adapter, texts=KEPT, probes=["norms"], progress=False, seq_len=16)
    pd.testing.assert_frame_equal(from_files["norms"], from_texts["norms"], check_exact=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--dataset", "{dict}", "--split", "validation"],
            "dataset {dict} has no split 'validation'; splits: train, test; choose one with --split",
        ),
        (
            ["--dataset", "{dict}", "--text-field", "body"],
            "dataset {dict} (split train) has no column 'body'; columns: text, n; choose one with --text-field",
        ),
        (["--dataset", "{dict}", "--text-field", "n"], "column 'n' of dataset {dict} holds int64, not text; text columns: text"),
        (["--dataset", "{files}", "--split", "dev"], "dataset {files} has no split 'dev'; splits: train, test"),
        (
            ["--dataset", "{dict}", "--dataset-config", "en"],
            "--dataset-config applies to Hub datasets; {dict} is a local disk dataset",
        ),
        (["--dataset", "./no/such/folder"], "dataset not found: ./no/such/folder is no file, folder or glob"),
        (["--dataset", "{root}/*.csv"], "dataset not found: no files match {root}/*.csv"),
        (["--dataset", "{dict}", "--text", "a"], "give one corpus: texts, an input file or a dataset"),
    ],
)
def test_bad_datasets_fail_in_one_line_before_loading(saved, tmp_path, capsys, monkeypatch, args, message):
    import normprobe.adapter as adapter

    def no_loading(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(adapter.ModelAdapter, "from_source", no_loading)
    names = {"dict": saved / "dict", "files": saved / "files", "root": saved}
    code, _, err = invoke(["run", "demo", *[a.format(**names) for a in args], "--out", str(tmp_path / "x")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert message.format(**names) in err and not (tmp_path / "x").exists()


def test_empty_dataset_is_refused(tmp_path):
    datasets.Dataset.from_dict({"text": ["", "  "]}).save_to_disk(tmp_path / "empty")
    with pytest.raises(NormprobeError, match="holds no documents"):
        make_runner("demo", dataset=str(tmp_path / "empty"))


def test_fingerprint_follows_the_dataset_not_its_path(saved, tmp_path):
    import shutil

    digest = lambda path, **kw: make_runner("demo", dataset=str(path), **kw).request()["corpus_sha256"]  # noqa: E731
    first = digest(saved / "dict")
    shutil.copytree(saved / "dict", tmp_path / "copy")
    assert digest(tmp_path / "copy") == first  # save_to_disk wrote the fingerprint into the folder
    assert digest(saved / "dict", split="test", text_field="body") != first
    datasets.Dataset.from_dict({"text": KEPT[::-1]}).save_to_disk(tmp_path / "other")
    assert digest(tmp_path / "other") != digest(saved / "single")
    shutil.copytree(saved / "files", tmp_path / "files")
    assert digest(tmp_path / "files") == digest(saved / "files")  # data files: their bytes
    (tmp_path / "files" / "test-00000.parquet").write_bytes(b"")
    assert digest(tmp_path / "files", split="train") != digest(saved / "files", split="train")


def test_hub_dataset_is_streamed_at_a_pinned_commit(saved, monkeypatch):
    """Offline stand-in for the Hub: the code path asks for streaming at the resolved commit."""
    import huggingface_hub

    calls = []
    real = datasets.load_dataset

    class Info:
        sha = "0123abcd" * 5

    def fake_load(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return real("parquet", data_files={"train": str(saved / "files" / "train-*.parquet")}, streaming=True)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, name, **kw: Info())
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    runner = make_runner("demo", dataset="someone/corpus", dataset_config="en")
    assert calls == [("someone/corpus", "en", {"streaming": True, "revision": Info.sha})]
    assert list(runner.corpus.documents()) == KEPT
    assert runner.request()["corpus"] == "dataset someone/corpus, config en, split train, field text"


def test_hub_dataset_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(NormprobeError, match=r"^cannot open Hub dataset someone/corpus: ") as exc:
        make_runner("demo", dataset="someone/corpus")
    assert "\n" not in str(exc.value)

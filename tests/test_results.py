"""Round trips: save -> load -> equal; a report renders the same twice; corpus text stays text."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import normprobe
from normprobe.results import RunResult

PAYLOADS = ['<img src=x onerror="alert(1)"> hello', "end </script><script>alert(2)</script>",
            '<a href="javascript:alert(3)">click</a> & more']


@pytest.fixture(scope="module")
def result(demo_adapter):
    return normprobe.run(demo_adapter, texts=PAYLOADS * 2, probes=["norms", "updates"], progress=False)


def test_save_load_round_trip(result, tmp_path):
    result.save(tmp_path / "r")
    loaded = RunResult.load(tmp_path / "r")
    assert set(loaded.tables) == set(result.tables)
    for name, frame in result.tables.items():
        pd.testing.assert_frame_equal(loaded.tables[name], frame)
    assert json.loads(loaded.run_json()) == json.loads(result.run_json())
    loaded.save(tmp_path / "again", report=False)
    assert (tmp_path / "again" / "run.json").read_text() == (tmp_path / "r" / "run.json").read_text()


def test_report_is_deterministic_and_self_contained(result, tmp_path):
    a = result.to_html(tmp_path / "a.html").read_text()
    b = result.to_html(tmp_path / "b.html").read_text()
    assert a == b
    assert a.count("* plotly.js v") == 1  # the library is embedded once, for nine figures
    assert a.count("Plotly.newPlot") == 9
    assert '<script src="https://cdn.plot.ly' not in a
    small = result.to_html(tmp_path / "c.html", plotlyjs="cdn").read_text()
    assert '<script src="https://cdn.plot.ly' in small and len(small) < len(a) / 4


def test_corpus_markup_is_never_live(result, tmp_path):
    html = result.to_html(tmp_path / "x.html").read_text()
    for raw in ("<img src=x", "</script><script>alert", '<a href="javascript:'):
        assert raw not in html


def test_write_failure_leaves_no_complete_folder(result, tmp_path, monkeypatch):
    import normprobe.results as results

    calls = {"n": 0}
    real = results.write_atomic

    def failing(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(results, "write_atomic", failing)
    with pytest.raises(normprobe.NormprobeError, match="No space left"):
        result.save(tmp_path / "fail")
    assert not (tmp_path / "fail" / "run.json").exists()
    assert not list((tmp_path / "fail").glob(".*.tmp"))

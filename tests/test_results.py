"""Round trips: save -> load -> equal; a report renders the same twice; corpus text stays text."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import normprobe
from normprobe import RunResult

PAYLOADS = [
    '<img src=x onerror="alert(1)"> hello',
    "end </script><script>alert(2)</script>",
    '<a href="javascript:alert(3)">click</a> & more',
]


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


def test_the_tables_load_without_the_drawing_layer(result, tmp_path):
    """results.RunTables (below the report) reads and writes a folder alone; RunResult.load gives a RunResult."""
    from normprobe.results import RunTables

    folder = result.save(tmp_path / "r")
    tables = RunTables.load(folder)
    assert type(tables) is RunTables and type(RunResult.load(folder)) is RunResult
    assert repr(tables).startswith("RunTables(") and not hasattr(tables, "figures")
    for name, frame in result.tables.items():
        pd.testing.assert_frame_equal(tables[name], frame)
    pd.testing.assert_frame_equal(tables.claims, result.claims)
    tables.save(tmp_path / "again", report=False)
    assert (tmp_path / "again" / "run.json").read_text() == (folder / "run.json").read_text()
    assert not (tmp_path / "again" / "report.html").exists()
    with pytest.raises(NotImplementedError, match="RunResult writes report.html"):
        tables.to_html(tmp_path / "x.html")


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


def test_large_model_report_stays_small(tmp_path):
    """A 48-layer model over 2,048 positions: heatmaps are averaged down to the point budget."""
    import numpy as np

    from normprobe.probes.updates import COMPONENTS

    rng = np.random.default_rng(0)
    L, P, V = 48, 2048, 50_000
    sites = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
    site, layer, position = (a.ravel() for a in np.meshgrid(sites, np.arange(L), np.arange(P), indexing="ij"))
    mean = rng.uniform(1, 100, len(site))
    norms = pd.DataFrame(
        {
            "site": site,
            "layer": layer,
            "position": position,
            "count": 50,
            "mean": mean,
            "std": mean / 10,
            "min": mean / 2,
            "max": mean * 2,
            "n_nonfinite": 0,
        }
    )
    tok_layer, tok_id = (a.ravel() for a in np.meshgrid(np.arange(L), np.arange(V), indexing="ij"))
    tokens = pd.DataFrame(
        {
            "site": "resid_pre",
            "layer": tok_layer,
            "token_id": tok_id,
            "token": "tok",
            "count": rng.integers(1, 1000, len(tok_id)),
            "mean": rng.uniform(1, 100, len(tok_id)),
            "std": 1.0,
        }
    )
    ul, uc = (a.ravel() for a in np.meshgrid(np.arange(L), COMPONENTS, indexing="ij"))
    updates = pd.DataFrame(
        {
            "layer": ul,
            "component": uc,
            "count": 1000,
            "update_norm_mean": 1.0,
            "rel_update_mean": 0.1,
            "lens_loss_mean": np.repeat(np.linspace(9, 3, L), 3),
            "descent_cos_mean": 0.05,
            "descent_cos_std": 0.1,
            "step_eta_mean": 0.1,
            "step_r2_mean": 0.01,
            "next_cos_mean": 0.2,
            "total_cos_mean": 0.3,
            "n_nonfinite": 0,
            "chance_cos_std": 1 / 64,
        }
    )
    bl, bp = (a.ravel() for a in np.meshgrid(np.arange(L), np.arange(P), indexing="ij"))
    by_position = pd.DataFrame(
        {"layer": bl, "position": bp, "count": 50, "lens_loss_mean": 5.0, "descent_cos_mean": rng.normal(0, 0.1, len(bl))}
    )
    hl, hc, hb = (a.ravel() for a in np.meshgrid(np.arange(L), COMPONENTS, np.arange(80), indexing="ij"))
    hist = pd.DataFrame({"layer": hl, "component": hc, "bin_left": -1 + hb / 40, "bin_right": -1 + (hb + 1) / 40, "count": 5})
    tables = {
        "norms": norms,
        "norms_by_token": tokens,
        "updates": updates,
        "updates_by_position": by_position,
        "updates_hist": hist,
    }
    result = RunResult(
        tables=tables,
        meta={
            "model": "synthetic-48",
            "probes": ["norms", "updates"],
            "status": "complete",
            "probe_tables": {"norms": ["norms", "norms_by_token"], "updates": ["updates", "updates_by_position", "updates_hist"]},
        },
    )
    size = result.to_html(tmp_path / "big.html").stat().st_size
    assert size < 15 * 1024 * 1024, size
    small = result.to_html(tmp_path / "cdn.html", plotlyjs="cdn").stat().st_size
    assert small < size - 4 * 1024 * 1024


def test_axes_fit_their_values(result):
    from normprobe.report.compare import _descent, _norm_growth
    from normprobe.report.norms import norm_by_frequency
    from normprobe.report.updates import COMPONENT_COLOURS, alignment_histogram

    frequency = norm_by_frequency(result["norms_by_token"])
    assert frequency.layout.xaxis.type == "log" and frequency.layout.xaxis.range[0] == 0  # counts start at 1
    histogram = alignment_histogram(result["updates_hist"])
    assert {t.name for t in histogram.data} == {"attn", "mlp", "block"}
    for trace in histogram.data:  # outlines in the legend's own colours, nothing blended
        assert trace.type == "scatter" and trace.line.color == COMPONENT_COLOURS[trace.name] and trace.opacity is None

    def log_buttons(fig):
        return [b.label for menu in fig.layout.updatemenus for b in menu.buttons if b.label == "y: log"]

    runs = [("a", result), ("b", result)]
    assert log_buttons(_norm_growth(runs)) == ["y: log"]
    assert log_buttons(_descent(runs)) == []  # cosines can be negative

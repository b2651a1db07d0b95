"""Results and comparisons as notebook objects: repr, HTML summary, figures(), show(), differences.

Expected values are recomputed here from the saved tables, not read from the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import normprobe
from normprobe.errors import NormprobeError
from normprobe.report.export import _slug, static_copy, static_variants
from tests.reference import assert_float32_close

FIRST = [
    "The quick brown fox jumps over the lazy dog.",
    "Assignment statements are used to bind names to values.",
    "Norms grow with depth in many models, and the first token is often an outlier.",
]
SECOND = [
    "Every layer of a transformer adds an update to the residual stream of each token in the window.",
    "A short one.",
    "The cat sat on the mat.",
]


@pytest.fixture(scope="module")
def runs(demo_adapter):
    a = normprobe.run(demo_adapter, texts=FIRST, probes=["norms", "updates"], progress=False)
    b = normprobe.run(demo_adapter, texts=SECOND, probes=["norms", "updates"], progress=False)
    return a, b


def residual_means(result) -> pd.Series:
    """Token-weighted mean norm of h_0..h_L: resid_pre of every layer, then the last layer's resid_post."""
    norms = result["norms"]
    weighted = lambda rows: (rows["mean"] * rows["count"]).groupby(rows["layer"]).sum() / rows.groupby("layer")["count"].sum()  # noqa: E731
    pre = weighted(norms[norms["site"] == "resid_pre"])
    post = norms[(norms["site"] == "resid_post") & (norms["layer"] == norms["layer"].max())]
    pre.loc[int(post["layer"].iloc[0]) + 1] = (post["mean"] * post["count"]).sum() / post["count"].sum()
    return pre.sort_index()


def test_repr_is_one_short_line(runs):
    a, _ = runs
    text = repr(a)
    assert "\n" not in text and len(text) < 300
    assert text.startswith("RunResult(model='demo', status='complete', tokens=")
    tokens = int(a["norms"].query("site == 'resid_pre' and layer == 0")["count"].sum())
    assert f"tokens={tokens}," in text


def test_html_summary_shows_model_tokens_status_and_claims_without_plotly(runs):
    a, _ = runs
    page = a._repr_html_()
    tokens = int(a["norms"].query("site == 'resid_pre' and layer == 0")["count"].sum())
    assert f"model demo (GPT-2, 4 layers, float32) · {tokens:,} tokens in 3 documents · status complete" in page
    assert "Lens loss by layer" not in page and "finding" not in page  # the claims are its only conclusions
    assert "<script" not in page and len(page) < 30_000
    for row in a.claims.to_dict("records"):
        assert f"{g3(row['value'])} [{g3(row['ci_low'])}, {g3(row['ci_high'])}]" in page


def g3(value: float) -> str:
    return f"{value:.3g}" if np.isfinite(value) else "n/a"


def test_figures_are_the_reports_figures_with_its_values(runs, tmp_path):
    a, _ = runs
    figures = a.figures()
    report = a.to_html(tmp_path / "r.html").read_text()
    assert len(figures) == report.count("Plotly.newPlot") == 9
    assert all(isinstance(f, __import__("plotly.graph_objects").graph_objects.Figure) for f in figures.values())
    per_layer = figures["Mean norm per layer, by site (band: ± one standard deviation over tokens)"]
    resid_pre = next(t for t in per_layer.data if t.name == "resid_pre")
    norms = a["norms"][a["norms"]["site"] == "resid_pre"]
    want = (norms["mean"] * norms["count"]).groupby(norms["layer"]).sum() / norms.groupby("layer")["count"].sum()
    assert_float32_close(resid_pre.y, want.to_numpy())
    lens = next(f for t, f in figures.items() if t.startswith("Logit-lens loss"))
    rows = a["updates"].drop_duplicates("layer").sort_values("layer")
    np.testing.assert_array_equal(lens.data[0].y, rows["lens_loss_mean"].to_numpy())


def test_show_draws_the_chosen_figures(runs, monkeypatch):
    import plotly.graph_objects as go

    a, _ = runs
    shown = []
    monkeypatch.setattr(go.Figure, "show", lambda self, renderer=None: shown.append(self.layout.title.text))
    a.show("LOGIT-LENS")
    assert shown == ["Logit-lens loss of the next token, read out from h_l (the last point is the model&#x27;s output)"]
    shown.clear()
    a.show()
    assert len(shown) == 9
    with pytest.raises(NormprobeError, match="no figure title contains 'nothing such'; titles: Mean norm over"):
        a.show("nothing such")


def test_comparison_subtracts_the_first_run_per_layer_and_lists_claims_per_run(runs, tmp_path):
    a, b = runs
    comparison = normprobe.compare([a, b], labels=["A", "B"])
    assert isinstance(comparison, normprobe.Comparison) and repr(comparison) == "Comparison('A', 'B')"
    diff = comparison.differences()
    norm = diff[diff["quantity"] == "mean norm of h_l"].set_index("layer")["difference"]
    assert_float32_close(norm.to_numpy(), (residual_means(b) - residual_means(a)).to_numpy())
    lens_a, lens_b = (r["updates"].drop_duplicates("layer").set_index("layer")["lens_loss_mean"] for r in (a, b))
    lens = diff[diff["quantity"] == "lens loss (nats)"].set_index("layer")["difference"]
    np.testing.assert_array_equal(lens.to_numpy(), (lens_b - lens_a).to_numpy())
    block = [r["updates"].query("component == 'block'").set_index("layer")["descent_cos_mean"] for r in (a, b)]
    descent = diff[diff["quantity"] == "descent cosine of the block update"].set_index("layer")["difference"]
    np.testing.assert_array_equal(descent.to_numpy(), (block[1] - block[0]).to_numpy())

    claims = comparison.claims
    assert list(claims.columns[:5]) == ["run", "probe", "claim", "layer", "component"]
    for label, result in (("A", a), ("B", b)):
        mine = claims[claims["run"] == label].drop(columns="run").reset_index(drop=True)
        want = result.claims.reset_index(drop=True)
        pd.testing.assert_frame_equal(mine[want.columns], want)

    figures = comparison.figures()
    assert len(figures) == 5
    difference = figures["Difference from the first run: each run minus A, per layer"]
    lens_trace = [t for t in difference.data if t.yaxis == "y2"]
    np.testing.assert_array_equal(lens_trace[0].y, (lens_b - lens_a).to_numpy())
    page = comparison.save(tmp_path / "cmp").read_text()
    assert page.count("Plotly.newPlot") == 5 and '<h3 id="claims">Claims, run by run</h3>' in page
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cmp" / "claims.parquet"), claims)
    html = comparison._repr_html_()
    assert "<script" not in html and "normprobe comparison</b> of 2 runs" in html


def test_static_copy_drops_menus_and_keeps_the_data(runs):
    a, b = runs
    figures = {**a.figures(), **normprobe.compare([a, b]).figures()}
    with_menus = [f for f in figures.values() if f.layout.updatemenus]
    assert len(with_menus) >= 5
    for fig in with_menus:
        still = static_copy(fig)
        assert still.layout.updatemenus == () and still.layout.sliders == ()
        assert fig.layout.updatemenus  # the report's own figure keeps its menus
        assert json.loads(still.to_json())["data"] == json.loads(fig.to_json())["data"]


def test_static_variants_show_each_menu_choice_and_name_it(runs):
    """A still per choice of a selection menu, titled with the choice; the data each shows is what the menu would."""
    a, _ = runs
    menus = [
        f
        for f in a.figures().values()
        if f.layout.updatemenus and any(b.method == "update" for b in f.layout.updatemenus[0].buttons)
    ]
    assert menus
    for fig in menus:
        buttons = fig.layout.updatemenus[0].buttons
        variants = static_variants(fig)
        assert [label for label, _ in variants] == [b.label for b in buttons]
        for (label, still), button in zip(variants, buttons):
            assert still.layout.title.text.endswith(f" — {label}") and "(menu:" not in still.layout.title.text
            assert not still.layout.updatemenus
            visible = button.args[0].get("visible")
            if visible is not None:
                assert [trace.visible for trace in still.data] == list(visible)
    log_only = [
        f
        for f in a.figures().values()
        if f.layout.updatemenus and all(b.method == "relayout" for m in f.layout.updatemenus for b in m.buttons)
    ]
    assert log_only and all(len(static_variants(f)) == 1 for f in log_only)


def test_export_file_names_are_cut_between_words():
    slug = _slug("Per-token descent alignment at one layer, with everything a long title can hold")
    assert len(slug) <= 48 and slug == "per-token-descent-alignment-at-one-layer-with"
    assert _slug("x" * 60) == "x" * 48 and _slug("???") == "figure"


def test_model_adapter_says_what_it_holds(demo_adapter):
    text = repr(demo_adapter)
    assert text == (
        f"<ModelAdapter 'demo' ({demo_adapter.family.name}): {demo_adapter.n_layers} layers, "
        f"d_model {demo_adapter.d_model}, {demo_adapter.dtype} on {demo_adapter.device}>"
    )
    assert "object at" not in text


def test_dir_lists_lazy_names_and_import_stays_light():
    assert set(dir(normprobe)) == set(normprobe.__all__)
    assert not {"Any", "TYPE_CHECKING", "annotations", "errors"} & set(dir(normprobe))
    assert {"run", "load_model", "compare", "Comparison", "RunResult"} <= set(dir(normprobe))
    code = "import sys, normprobe; dir(normprobe); print('torch' in sys.modules, 'plotly' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False", "False"]


def test_norm_by_position_shows_every_layer_of_a_shallow_model_and_six_of_a_deep_one():
    import pandas as pd

    from normprobe.report.norms import norm_by_position

    def table(n_layers):
        return pd.DataFrame(
            [
                {"site": "resid_pre", "layer": l, "position": p, "count": 3, "mean": 1.0 + l + p}
                for l in range(n_layers)
                for p in range(4)
            ]
        )

    shallow = norm_by_position(table(4))
    assert [t.visible for t in shallow.data] == [True] * 4
    deep = norm_by_position(table(24))
    shown = [int(t.name.split()[1]) for t in deep.data if t.visible is True]
    assert shown[0] == 0 and shown[-1] == 23 and len(shown) == 6


def test_line_search_curves_offer_a_per_layer_scale():
    import numpy as np
    import pandas as pd

    from normprobe.report.linesearch import loss_curves

    alphas = [0.0, 0.5, 1.0, 2.0]
    losses = {0: [23.0, 10.0, 5.0, 6.0], 1: [4.0, 3.9, 3.8, 3.95]}  # layer 0 dwarfs layer 1 in nats
    table = pd.DataFrame(
        [
            {"layer": l, "component": "block", "alpha": a, "lens_loss_mean": v}
            for l, values in losses.items()
            for a, v in zip(alphas, values)
        ]
    )
    fig = loss_curves(table, "block")
    nats, scaled = (b.args[0]["y"] for b in fig.layout.updatemenus[0].buttons)
    for layer, values in losses.items():
        change = np.asarray(values) - values[0]
        np.testing.assert_allclose(nats[layer], change, rtol=1e-6)
        np.testing.assert_allclose(scaled[layer], change / np.abs(change).max(), rtol=1e-6)


def test_section_notes_name_excluded_values_and_unread_layers_as_L_and_zero_counts_as_none():
    from normprobe.report.common import count_text, data_notes

    notes = data_notes({"readout_not_meaningful_layers": [0, 2], "n_nonfinite": 1234}, "values", unread=True)
    assert notes == [
        "Non-finite values excluded from every statistic: 1,234.",
        "The readout does not read layers L0, L2 (lens loss above log V, a uniform guess).",
    ]
    assert data_notes({"n_nonfinite": 0}, "norms") == [] and count_text(0) == "none"

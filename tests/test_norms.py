"""The norms probe against Hugging Face output_hidden_states, across batching, streaming and merging."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import normprobe
from normprobe.probes.norms import NormsProbe

from .conftest import DOCS, FAMILY_NAMES
from .reference import drive_by_hand, mean_norm_by_layer_position


def _run(adapter, docs=DOCS, probes=("norms",), **kw):
    return normprobe.run(adapter, texts=docs, probes=list(probes), progress=False, **kw)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_resid_norms_equal_hugging_face(family, family_adapter, family_dir, hf_model):
    adapter = family_adapter(family)
    result = _run(adapter, batch_size=4)
    norms = result["norms"]
    # the reference runs the attention kernel the run used (sdpa unless the family's check fell back)
    expected = mean_norm_by_layer_position(hf_model(family_dir(family), result.meta["attention"]), adapter.tokenizer, DOCS)
    last = adapter.n_layers - 1
    checked = 0
    for (layer, position), want in expected.items():
        site, at = ("resid_pre", layer) if layer <= last else ("resid_post", last)
        got = norms[(norms.site == site) & (norms.layer == at) & (norms.position == position)]["mean"]
        assert len(got) == 1
        assert abs(got.iloc[0] - want) <= 1e-5 * want + 1e-12, (site, at, position, got.iloc[0], want)
        checked += 1
    assert checked == sum(1 for _ in expected)
    assert checked > (adapter.n_layers + 1) * 10


def test_sites_add_up(demo_adapter):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out, seen through per-token norms."""
    norms = _run(demo_adapter, docs=DOCS[:1])["norms"]
    one = norms.set_index(["site", "layer", "position"]).sort_index()["mean"]
    assert set(norms.site) == {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"}
    # with a single document every statistic is one token's norm; post of layer l is pre of l+1
    for layer in range(demo_adapter.n_layers - 1):
        np.testing.assert_allclose(one.loc["resid_post", layer].values, one.loc["resid_pre", layer + 1].values, rtol=1e-6)


def test_mixed_length_batch_equals_documents_alone(demo_adapter):
    together = _run(demo_adapter, batch_size=len(DOCS))
    alone = [_run(demo_adapter, docs=[d]) for d in DOCS]
    merged = pd.concat([r["norms"] for r in alone])
    merged["weighted"] = merged["mean"] * merged["count"]
    per_key = merged.groupby(["site", "layer", "position"]).agg(
        count=("count", "sum"), weighted=("weighted", "sum"), min=("min", "min"), max=("max", "max")
    )
    per_key["mean"] = per_key["weighted"] / per_key["count"]
    got = together["norms"].set_index(["site", "layer", "position"]).loc[per_key.index]
    np.testing.assert_array_equal(got["count"].values, per_key["count"].values)
    np.testing.assert_allclose(got["mean"].values, per_key["mean"].values, rtol=1e-5)
    np.testing.assert_allclose(got["min"].values, per_key["min"].values, rtol=1e-5)
    np.testing.assert_allclose(got["max"].values, per_key["max"].values, rtol=1e-5)


def test_streaming_batches_equal_one_pass(demo_adapter):
    docs = DOCS * 3
    one_pass = _run(demo_adapter, docs=docs, batch_size=len(docs))
    streamed = _run(demo_adapter, docs=docs, batch_size=1)
    for name in ("norms", "norms_by_token"):
        a, b = one_pass[name], streamed[name]
        pd.testing.assert_frame_equal(a[["site", "layer"]], b[["site", "layer"]])
        np.testing.assert_array_equal(a["count"], b["count"])
        np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-5)
        # float32 forwards of one window alone or in a batch differ in the last bits (~1e-7 of a norm)
        np.testing.assert_allclose(a["std"], b["std"], rtol=1e-4, atol=1e-6 * float(a["mean"].max()))


def test_merge_of_halves_equals_whole(demo_adapter):
    import torch

    from normprobe.batching import iter_windows

    windows = list(iter_windows(DOCS, demo_adapter.encode, 64, demo_adapter.bos_token_id))

    def probe_over(ws):
        probe = NormsProbe()
        probe.setup(demo_adapter, 64)
        return drive_by_hand(probe, demo_adapter, ws)

    whole = probe_over(windows)
    first, second = probe_over(windows[:3]), probe_over(windows[3:])
    first.merge(second)
    for key in ("count", "total", "m2", "minimum", "maximum"):
        torch.testing.assert_close(getattr(first.by_position, key), getattr(whole.by_position, key), rtol=1e-12, atol=1e-12)
    merged, direct = first.by_token.cells(), whole.by_token.cells()
    for key in ("slot", "type", "count"):
        torch.testing.assert_close(merged[key], direct[key], rtol=0, atol=0)
    for key in ("mean", "std"):
        torch.testing.assert_close(merged[key], direct[key], rtol=1e-12, atol=1e-12)


def test_findings_recomputed_by_hand(demo_adapter):
    from scipy.stats import spearmanr

    result = _run(demo_adapter, docs=DOCS * 2)
    norms, tokens, f = result["norms"], result["norms_by_token"], result.findings["norms"]
    pre = norms[norms.site == "resid_pre"]
    layer_means = []
    for layer in range(demo_adapter.n_layers):
        rows = pre[pre.layer == layer]
        layer_means.append((rows["mean"] * rows["count"]).sum() / rows["count"].sum())
    post = norms[(norms.site == "resid_post") & (norms.layer == demo_adapter.n_layers - 1)]
    layer_means.append((post["mean"] * post["count"]).sum() / post["count"].sum())
    np.testing.assert_allclose(f["residual_mean_norm"], layer_means, rtol=1e-9)
    L = demo_adapter.n_layers
    assert f["growth"]["geometric"] == pytest.approx((layer_means[-1] / layer_means[0]) ** (1 / L), rel=1e-9)
    assert f["growth_ratio_by_layer"] == pytest.approx({l: layer_means[l + 1] / layer_means[l] for l in range(L)}, rel=1e-9)
    for layer in range(L):
        rows = pre[pre.layer == layer]
        ratio = rows[rows.position == 0]["mean"].iloc[0] / np.median(rows[rows.position > 0]["mean"])
        assert f["position0_ratio"][layer] == pytest.approx(ratio, rel=1e-9)
        later = rows[rows.position > 0]
        assert f["position_spearman"][layer] == pytest.approx(spearmanr(later.position, later["mean"]).statistic, abs=1e-9)
        toks = tokens[(tokens.site == "resid_pre") & (tokens.layer == layer)]
        assert f["frequency_spearman"][layer] == pytest.approx(spearmanr(np.log(toks["count"]), toks["mean"]).statistic, abs=1e-9)


def test_no_bos_means_position_zero_is_text(family_adapter):
    adapter = family_adapter("mistral")  # its tokenizer has no BOS
    assert adapter.bos_token_id is None
    result = _run(adapter, docs=["hello"])
    n_tokens = len(adapter.encode("hello"))
    assert result.meta["n_tokens"] == n_tokens
    assert result.meta["prepend_bos"] is False

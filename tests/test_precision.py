"""Half precision: bfloat16 and float16 runs agree with float32 (norms within 1%, alignments within 0.02)."""

from __future__ import annotations

import numpy as np
import pytest

import normprobe

from .conftest import DOCS, TEST_DEVICE

TEXTS = DOCS * 4


@pytest.fixture(scope="module")
def float32_demo(demo_adapter):
    return normprobe.run(demo_adapter, texts=TEXTS, probes=["norms", "updates"], progress=False)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_matches_float32_on_demo(dtype, float32_demo):
    half = normprobe.run("demo", texts=TEXTS, probes=["norms", "updates"], dtype=dtype, device=TEST_DEVICE, progress=False)
    assert half.meta["dtype"] == dtype
    a, b = float32_demo["norms"], half["norms"]
    assert (a[["site", "layer", "position", "count"]].values == b[["site", "layer", "position", "count"]].values).all()
    # position-wise means over a few tokens; compare per (site, layer) pooled means and every cell loosely
    pooled_a = (a["mean"] * a["count"]).groupby([a["site"], a["layer"]]).sum() / a.groupby(["site", "layer"])["count"].sum()
    pooled_b = (b["mean"] * b["count"]).groupby([b["site"], b["layer"]]).sum() / b.groupby(["site", "layer"])["count"].sum()
    assert float((pooled_b / pooled_a - 1).abs().max()) < 0.01
    ua, ub = float32_demo["updates"], half["updates"]
    steps = ua["component"] != "output"
    assert float(np.abs(ua.loc[steps, "descent_cos_mean"] - ub.loc[steps, "descent_cos_mean"]).max()) < 0.02
    assert half.findings["norms"]["n_nonfinite"] == 0


def test_float16_overflow_is_counted_not_averaged(demo_adapter):
    """Residuals past float16's range become inf; they are counted in n_nonfinite and left out of every mean."""
    import torch

    from normprobe.probes.norms import NormsProbe

    probe = NormsProbe()
    probe.setup(demo_adapter, 8)
    from normprobe.batching import Window, collate

    batch = collate([Window(0, [0, 5, 6, 7])], demo_adapter.pad_token_id, demo_adapter.device)
    acts = {}
    for name in probe.hook_points():
        # 300² overflows float16
        x = torch.full((1, 4, demo_adapter.d_model), 300.0, dtype=torch.float16, device=demo_adapter.device)
        if name == "blocks.3.hook_resid_post":
            x[0, 2] = float("inf")
        acts[name] = probe.reduce(name, x, batch)
    probe.update(acts, batch)
    norms = probe.result()["norms"]
    row = norms[(norms.site == "resid_post") & (norms.layer == 3) & (norms.position == 2)].iloc[0]
    assert row["n_nonfinite"] == 1 and row["count"] == 0
    ok = norms[(norms.site == "resid_post") & (norms.layer == 3) & (norms.position == 1)].iloc[0]
    assert ok["mean"] == pytest.approx(300 * np.sqrt(demo_adapter.d_model))  # squared in float32: no overflow
    assert NormsProbe.findings(probe.result())["n_nonfinite"] == 1


@pytest.mark.parametrize("family", ["gpt_neox", "llama", "gemma"])
def test_bfloat16_norms_on_other_families(family, family_adapter):
    texts = DOCS * 2
    full = normprobe.run(family_adapter(family), texts=texts, probes=["norms"], progress=False)["norms"]
    half = normprobe.run(family_adapter(family, "bfloat16"), texts=texts, probes=["norms"], progress=False)["norms"]

    def pooled(t):
        return (t["mean"] * t["count"]).groupby([t["site"], t["layer"]]).sum() / t.groupby(["site", "layer"])["count"].sum()

    assert float((pooled(half) / pooled(full) - 1).abs().max()) < 0.01

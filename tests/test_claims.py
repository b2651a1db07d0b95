"""The document bootstrap against a plain weighted loop, shard merges against one run, and claims' verdict rules."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import normprobe
from normprobe.claims import FAILS, HOLDS, UNDETERMINED, claims, verdict
from normprobe.stats import ReplicateSums

from .conftest import DOCS
from .reference import assert_float32_close, hf_residuals, token_ids

B = 16
SEQ_LEN = 16  # short windows: the longer documents are cut into several, which must stay one bootstrap unit
PROBES = ["norms", "updates", "linesearch", "massive"]


def poisson_by_hand(doc: str, replicates: int) -> np.ndarray:
    """The documented seeding: the first 8 bytes of sha256(text), little-endian, into numpy's default_rng."""
    seed = int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).poisson(1.0, replicates).astype(float)


def test_replicate_sums_equal_a_plain_weighted_loop_and_merge_as_a_sum():
    gen = torch.Generator().manual_seed(0)
    n, n_windows, n_groups = 300, 7, 5
    groups = torch.randint(0, n_groups, (n,), generator=gen)
    windows = torch.randint(0, n_windows, (n,), generator=gen)
    values = torch.randn(n, generator=gen, dtype=torch.float64)
    values[3] = float("nan")  # never enters
    weights = torch.poisson(torch.ones(n_windows, B), generator=gen).double()
    whole = ReplicateSums(n_groups, B)
    whole.add(groups, values, windows, weights)
    halves = [ReplicateSums(n_groups, B) for _ in range(2)]
    halves[0].add(groups[:150], values[:150], windows[:150], weights)
    halves[1].add(groups[150:], values[150:], windows[150:], weights)
    halves[0].merge(halves[1])
    want = np.full((n_groups, B), np.nan)
    for g in range(n_groups):
        for b in range(B):
            num = den = 0.0
            for i in range(n):
                if int(groups[i]) == g and math.isfinite(float(values[i])):
                    num += float(weights[windows[i], b]) * float(values[i])
                    den += float(weights[windows[i], b])
            if den > 0:
                want[g, b] = num / den
    np.testing.assert_allclose(whole.means().numpy(), want, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(halves[0].means().numpy(), want, rtol=1e-12, equal_nan=True)


@pytest.fixture(scope="module")
def runs(demo_adapter):
    """One run over DOCS, and the same documents as two shards merged as `normprobe merge` would."""
    from normprobe.live_run import make_probe, merge_state, run_result
    from normprobe.registry import resolve_probes

    # one window per batch: a shard then runs each window exactly as the single run does (float32 forwards
    # depend on the batch they share), so only the float64 sums differ in order
    options = dict(texts=DOCS, probes=PROBES, seq_len=SEQ_LEN, batch_size=1, replicates=B, alphas=[0, 0.5, 1, 2], progress=False)
    whole = normprobe.run(demo_adapter, **options)
    parts = [normprobe.run(demo_adapter, shard=(i, 2), **options) for i in range(2)]
    probes = [make_probe(cls, None, {"replicates": B, "alphas": [0, 0.5, 1, 2]}) for cls in resolve_probes(PROBES)]
    for probe in probes:
        probe.setup(demo_adapter, SEQ_LEN)
    for part in parts:
        merge_state(demo_adapter, probes, part.probe_states["probes"], SEQ_LEN, None)
    merged = run_result(probes, dict(whole.meta), {"docs": 0, "windows": 0, "tokens": 0, "batches": 0, "seconds": 0.0}, 0.0)
    return whole, merged


def test_norm_replicates_equal_a_plain_loop_over_documents_and_windows(runs, hf_model):
    from transformers import AutoTokenizer

    whole, _ = runs
    folder = Path(normprobe.__file__).parent / "demo"
    hf, tokenizer = hf_model(folder), AutoTokenizer.from_pretrained(folder)
    bos = tokenizer.bos_token_id
    sums = {}  # layer -> [numerator[B], denominator[B]] over positions >= 1
    for doc in DOCS:
        weights = poisson_by_hand(doc, B)
        ids = token_ids(tokenizer, doc)[1:]
        for start in range(0, len(ids), SEQ_LEN - 1):
            window = [bos] + ids[start : start + SEQ_LEN - 1]
            for layer, h in enumerate(hf_residuals(hf, window)):
                norms = h[1:].norm(dim=-1).sum().item()
                num, den = sums.setdefault(layer, [np.zeros(B), np.zeros(B)])
                num += weights * norms
                den += weights * (len(window) - 1)
    table = whole["norms_replicates"]
    rest = table[table["position_group"] == "rest"]
    n_layers = len(sums) - 1  # h_0..h_L
    for layer in range(n_layers + 1):
        site, table_layer = ("resid_pre", layer) if layer < n_layers else ("resid_post", n_layers - 1)
        got = rest[(rest["site"] == site) & (rest["layer"] == table_layer)].sort_values("replicate")
        num, den = sums[layer]
        assert_float32_close(got["mean"], num / den, what=f"layer {layer}")
        np.testing.assert_array_equal(got["weight"], den)


def test_shard_merge_gives_the_single_runs_intervals(runs):
    whole, merged = runs
    for name in (
        "norms_replicates",
        "updates_replicates",
        "lens_loss_replicates",
        "line_search_replicates",
        "massive_replicates",
        "sink_replicates",
    ):
        pd.testing.assert_frame_equal(merged[name], whole[name], check_exact=False, rtol=1e-9, atol=1e-12)
    a, b = whole.claims, merged.claims
    assert len(a) > 30 and list(a["verdict"]) == list(b["verdict"])
    for column in ("value", "ci_low", "ci_high", "check_ci_low", "check_ci_high"):
        np.testing.assert_allclose(
            b[column].to_numpy(float), a[column].to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=column
        )


def test_demo_claims_follow_the_verdict_rules_and_round_trip(runs, tmp_path):
    whole, _ = runs
    frame = whole.claims
    assert {
        "norm_growth",
        "position0_ratio",
        "massive",
        "sink_mass",
        "frequency",
        "descent",
        "lens_loss_drop",
        "alpha_star",
    } <= set(frame["claim"])
    assert set(frame["verdict"]) <= {HOLDS, FAILS, UNDETERMINED}
    greater = frame[frame["direction"] == "greater"]
    held = greater[greater["verdict"] == HOLDS]
    assert (held["ci_low"] > held["null"]).all()
    failed = greater[greater["verdict"] == FAILS]
    assert ((failed["ci_high"] < failed["null"]) | (failed["check_ci_low"] > 0)).all()
    descent = frame[frame["claim"] == "descent"]
    assert (descent.loc[descent["verdict"] == HOLDS, "check_ci_high"] < 0).all()
    unread = whole.findings["updates"]["readout_not_meaningful_layers"]
    assert (descent.loc[descent["layer"].isin(unread), "verdict"] == UNDETERMINED).all()
    growth = frame[frame["claim"] == "norm_growth"]
    assert growth["layer"].dropna().tolist() == list(range(demo_layers(whole)))  # the embedding step and the last block
    assert "R²" in growth.loc[growth["layer"].isna(), "note"].iloc[0]
    ratio = frame[frame["claim"] == "position0_ratio"]
    assert ratio["component"].iloc[-1] == "output"
    # the document interval of the block descent cosine equals the one the updates table now carries
    table = whole["updates"].set_index(["layer", "component"])
    for row in descent.itertuples():
        assert row.ci_low == pytest.approx(table.loc[(row.layer, row.component), "descent_cos_ci_low"], abs=1e-12)
    folder = whole.save(tmp_path / "run", plotlyjs="cdn")
    loaded = normprobe.RunResult.load(folder)
    pd.testing.assert_frame_equal(loaded.claims, frame)
    assert "Claims" in (folder / "report.html").read_text()


def demo_layers(result) -> int:
    return int(result.meta["n_layers"])


# -- claims() on hand-made tables ----------------------------------------------------------------


def norms_tables(stream_means: list[float], replicates: list[np.ndarray], first: float = 1.0) -> dict[str, pd.DataFrame]:
    """norms + norms_replicates for h_0..h_L with the given mean norms (positions >= 1) and replicates."""
    n_layers = len(stream_means) - 1
    rows, reps = [], []
    for index, (mean, rep) in enumerate(zip(stream_means, replicates)):
        site, layer = ("resid_pre", index) if index < n_layers else ("resid_post", n_layers - 1)
        rows += [(site, layer, 0, 10, first), (site, layer, 1, 10, mean)]
        for b, value in enumerate(rep):
            reps += [(site, layer, "position0", b, 10.0, first), (site, layer, "rest", b, 10.0, value)]
    norms = pd.DataFrame(rows, columns=["site", "layer", "position", "count", "mean"])
    table = pd.DataFrame(reps, columns=["site", "layer", "position_group", "replicate", "weight", "mean"])
    return {"norms": norms, "norms_replicates": table}


def spread(center: float, width: float, n: int = 40) -> np.ndarray:
    return center + np.linspace(-width, width, n)


def test_norm_growth_verdicts_on_hand_made_tables():
    # ratios: h1/h0 = 2 (holds), h2/h1 = 0.5 (does not hold), h3/h2 ≈ 1 (undetermined)
    means = [1.0, 2.0, 1.0, 1.0]
    reps = [spread(1.0, 0.01), spread(2.0, 0.01), spread(1.0, 0.01), spread(1.0, 0.3)]
    frame = claims(norms_tables(means, reps))
    growth = frame[frame["claim"] == "norm_growth"].set_index("layer")
    assert growth.loc[0, "verdict"] == HOLDS and growth.loc[0, "value"] == pytest.approx(2.0)
    assert growth.loc[1, "verdict"] == FAILS
    assert growth.loc[2, "verdict"] == UNDETERMINED
    # the ratio's interval is the percentile interval of the replicate ratios
    ratios = reps[1] / reps[0]
    assert growth.loc[0, "ci_low"] == pytest.approx(np.percentile(ratios, 2.5))
    # against a baseline growing as much, the model's growth no longer holds; against a weaker one it does
    same = claims(norms_tables(means, reps), {"random-init": norms_tables(means, reps)})
    row = same[(same["claim"] == "norm_growth") & (same["layer"] == 0)].iloc[0]
    assert row["random_init_difference"] == 0 and row["verdict"] == UNDETERMINED
    weak = norms_tables([1.0, 1.5, 1.0, 1.0], [spread(1.0, 0.01), spread(1.5, 0.01), spread(1.0, 0.01), spread(1.0, 0.3)])
    row = claims(norms_tables(means, reps), {"shuffled": weak}).query("claim == 'norm_growth' and layer == 0").iloc[0]
    assert row["verdict"] == HOLDS and row["shuffled_difference"] == pytest.approx(0.5)
    paired = reps[1] / reps[0] - spread(1.5, 0.01) / spread(1.0, 0.01)  # replicate by replicate
    assert row["shuffled_difference_ci_low"] == pytest.approx(np.percentile(paired, 2.5))


def test_verdict_rule_branches():
    assert verdict("greater", 0.0, (0.1, 0.2), [], 0.05) == HOLDS
    assert verdict("greater", 0.0, (-0.2, -0.1), [], 0.05) == FAILS
    assert verdict("greater", 0.0, (-0.1, 0.2), [], 0.05) == UNDETERMINED
    assert verdict("greater", 0.0, (0.1, 0.2), [(0.04, 0.1)], 0.05) == UNDETERMINED  # beats the baseline by too little
    assert verdict("greater", 0.0, (0.1, 0.2), [(0.06, 0.1), (0.05, 0.3)], 0.05) == HOLDS
    assert verdict("greater", 0.0, (float("nan"), float("nan")), [], 0.05) == UNDETERMINED
    # descent: the actual loss change must be below 0 with its interval; a rise means it does not hold
    assert verdict("greater", 0.0, (0.1, 0.2), [], 0.01, check=(-0.3, -0.1)) == HOLDS
    assert verdict("greater", 0.0, (0.1, 0.2), [], 0.01, check=(-0.3, 0.1)) == UNDETERMINED
    assert verdict("greater", 0.0, (0.1, 0.2), [], 0.01, check=(0.1, 0.3)) == FAILS
    assert verdict("two-sided", 0.0, (-0.5, -0.2), [], 0.1) == HOLDS
    assert verdict("two-sided", 0.0, (-0.05, 0.08), [], 0.1) == FAILS  # within ±min_effect of the null
    assert verdict("two-sided", 0.0, (-0.3, 0.4), [], 0.1) == UNDETERMINED


def updates_tables(lens: list[float], uniform: float = 5.0) -> dict[str, pd.DataFrame]:
    rows = [(l, c, 0.1, -0.2, loss, uniform) for l, loss in enumerate(lens[:-1]) for c in ("attn", "mlp", "block")]
    rows.append((len(lens) - 1, "output", np.nan, np.nan, lens[-1], uniform))
    updates = pd.DataFrame(
        rows, columns=["layer", "component", "descent_cos_mean", "actual_change_mean", "lens_loss_mean", "uniform_loss"]
    )
    reps = pd.DataFrame(
        [
            (l, c, b, 0.1 + 0.01 * (b % 3), -0.2 + 0.01 * (b % 5))
            for l in range(len(lens) - 1)
            for c in ("attn", "mlp", "block")
            for b in range(40)
        ],
        columns=["layer", "component", "replicate", "descent_cos", "actual_change"],
    )
    lens_reps = pd.DataFrame(
        [(l, b, loss + 0.01 * (b % 4)) for l, loss in enumerate(lens) for b in range(40)],
        columns=["layer", "replicate", "lens_loss"],
    )
    return {"updates": updates, "updates_replicates": reps, "lens_loss_replicates": lens_reps}


def test_descent_is_never_claimed_where_the_readout_is_not_meaningful():
    frame = claims(updates_tables([9.0, 4.0, 3.0]))
    descent = frame[frame["claim"] == "descent"]
    assert (descent.loc[descent["layer"] == 0, "verdict"] == UNDETERMINED).all()
    assert descent.loc[descent["layer"] == 0, "note"].str.contains("not meaningful").all()
    assert (descent.loc[descent["layer"] == 1, "verdict"] == HOLDS).all()
    drops = frame[frame["claim"] == "lens_loss_drop"]
    assert drops["layer"].min() == 1 and set(drops["component"]) == {"step", "to output"}  # from the first meaningful layer
    assert drops["verdict"].eq(HOLDS).all()


def test_alpha_star_is_undetermined_on_a_flat_line_or_at_the_grids_end():
    alphas = [0.0, 0.5, 1.0, 1.5, 2.0]
    curves = {
        0: [5.0, 5.0002, 5.0001, 5.0003, 5.0002],  # flat: varies < 1e-3 nats
        1: [5.0, 4.5, 4.2, 4.1, 4.0],  # minimum at the grid's end
        2: [5.0, 4.5, 4.2, 4.5, 5.0],
    }  # a clear minimum at 1
    rows = [(l, "block", a, 10, v) for l, vs in curves.items() for a, v in zip(alphas, vs)]
    table = pd.DataFrame(rows, columns=["layer", "component", "alpha", "count", "lens_loss_mean"])
    reps = pd.DataFrame(
        [
            (l, "block", a, b, v + 0.001 * b * (a - 1) ** 2)
            for l, vs in curves.items()
            for a, v in zip(alphas, vs)
            for b in range(30)
        ],
        columns=["layer", "component", "alpha", "replicate", "lens_loss"],
    )
    frame = claims({"line_search": table, "line_search_replicates": reps}).set_index("layer")
    assert frame.loc[0, "verdict"] == UNDETERMINED and "varies by" in frame.loc[0, "note"]
    assert frame.loc[1, "verdict"] == UNDETERMINED and "grid's end" in frame.loc[1, "note"]
    assert frame.loc[2, "verdict"] == HOLDS and frame.loc[2, "value"] == pytest.approx(1.0)


def test_frequency_needs_enough_types_and_token_counts_replace_the_corpus_counts():
    rng = np.random.default_rng(0)
    n = 40
    by_token = pd.DataFrame(
        {
            "site": "resid_pre",
            "layer": 0,
            "token_id": np.arange(n),
            "token": "t",
            "count": np.r_[np.full(n - 3, 6), [1, 2, 3]],
            "mean": rng.normal(size=n),
            "std": 0.0,
        }
    )
    counts = pd.DataFrame({"token_id": np.arange(n), "count": np.exp(-by_token["mean"].to_numpy() * 3)})
    alone = claims({"norms_by_token": by_token}).iloc[0]
    assert "from the probe corpus" in alone["note"] and alone["interval"].startswith("token types")
    external = claims({"norms_by_token": by_token, "token_counts": counts}).iloc[0]
    assert external["value"] == pytest.approx(-1.0) and external["verdict"] == HOLDS  # counts fall with the norm
    half = 1.959964 * math.sqrt(1.06 / (n - 3 - 3))
    assert external["ci_low"] == pytest.approx(math.tanh(math.atanh(-0.999999) - half))
    few = claims({"norms_by_token": by_token.head(8)}).iloc[0]
    assert few["verdict"] == UNDETERMINED and "only" in few["note"]

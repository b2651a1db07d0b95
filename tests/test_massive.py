"""The massive probe against Hugging Face hidden states and eager attention weights, plain loops in numpy."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
import torch

import normprobe
from normprobe.errors import NormprobeError
from normprobe.probes.massive import MassiveProbe, massive_findings

from .conftest import DOCS, TEST_DEVICE
from .reference import drive_by_hand, final_norm_module, token_ids


@torch.no_grad()
def reference_tokens(hf, tokenizer, docs):
    """Per document: ids, h_0..h_L as float64 numpy [T, d], and attention weights per layer [heads, T, T]."""
    out_docs = []
    for doc in docs:
        ids = token_ids(tokenizer, doc)
        captured = {}
        handle = final_norm_module(hf).register_forward_pre_hook(lambda m, args: captured.setdefault("h", args[0]))
        try:
            out = hf(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
        finally:
            handle.remove()
        n_layers = len(out.hidden_states) - 1
        states = [out.hidden_states[l][0] for l in range(n_layers)] + [captured["h"][0]]
        out_docs.append((ids, [h.double().numpy() for h in states], [a[0].double().numpy() for a in out.attentions]))
    return out_docs


def reference_tables(docs, d_model, ratio):
    """The four tables by plain loops: one token, one dimension, one head at a time."""
    per_slot = defaultdict(lambda: defaultdict(list))
    squares = defaultdict(lambda: np.zeros(d_model))
    sink = defaultdict(list)
    crossed = defaultdict(list)
    for ids, states, attentions in docs:
        n_layers = len(states) - 1
        for l, h in enumerate(states):
            site, layer = ("resid_pre", l) if l < n_layers else ("resid_post", n_layers - 1)
            for position, vector in enumerate(h):
                magnitude = np.abs(vector)
                cell = per_slot[(site, layer, position)]
                cell["max"].append(magnitude.max())
                cell["median"].append(np.median(magnitude))
                cell["argmax"].append(int(magnitude.argmax()))
                cell["norm"].append(np.sqrt((vector**2).sum()))
                cell["top_share"].append((vector**2).max() / (vector**2).sum())
                if site == "resid_pre":
                    squares[(layer, "position0" if position == 0 else "rest")] += vector**2
                    if position >= 1 and magnitude.max() > ratio * np.median(magnitude):
                        crossed[(layer, ids[position])].append(magnitude.max())
        for layer, weights in enumerate(attentions):
            for head in range(weights.shape[0]):
                for query in range(1, len(ids)):
                    sink[(layer, head)].append(weights[head, query, 0])
    massive = {
        key: {
            "count": len(c["max"]),
            "max_abs_mean": np.mean(c["max"]),
            "median_abs_mean": np.mean(c["median"]),
            "max_dim_mode": min(Counter(c["argmax"]).items(), key=lambda kv: (-kv[1], kv[0]))[0],
            "norm_mean": np.mean(c["norm"]),
            "top_share_mean": np.mean(c["top_share"]),
        }
        for key, c in per_slot.items()
    }
    top = {}
    for (layer, group), sq in squares.items():
        order = sorted(range(d_model), key=lambda i: (-sq[i], i))[:8]
        top.update({(layer, group, rank): (dim, sq[dim] / sq.sum()) for rank, dim in enumerate(order, start=1)})
    sinks = {key: (len(v), np.mean(v), np.std(v)) for key, v in sink.items()}
    tokens = {key: (len(v), np.mean(v)) for key, v in crossed.items()}
    return massive, top, sinks, tokens


def threshold_between(docs, quantile=0.8):
    """A max/median threshold in a clear gap between tokens' ratios, so float rounding cannot move a token across."""
    ratios = np.sort(
        np.unique([np.abs(v).max() / np.median(np.abs(v)) for _, states, _ in docs for h in states[:-1] for v in h[1:]])
    )
    i = int(quantile * len(ratios))
    while ratios[i + 1] - ratios[i] < 1e-3 * ratios[i]:
        i += 1
    return float((ratios[i] + ratios[i + 1]) / 2)


def _run(adapter, docs=DOCS, **kw):
    return normprobe.run(adapter, texts=docs, probes=["massive"], progress=False, **kw)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma"])  # llama: grouped-query; gemma: one key-value head
def test_tables_equal_hugging_face(family, family_adapter, family_dir, hf_model, tokenizers_by_kind):
    adapter = family_adapter(family)
    docs = reference_tokens(hf_model(family_dir(family)), adapter.tokenizer, DOCS)
    ratio = threshold_between(docs)
    # every document in one padded batch: padding must not enter any statistic
    result = _run(adapter, batch_size=len(DOCS), massive_ratio=ratio)
    want_massive, want_top, want_sink, want_tokens = reference_tables(docs, adapter.d_model, ratio)

    massive = result["massive"].set_index(["site", "layer", "position"])
    assert sorted(massive.index) == sorted(want_massive)
    for key, want in want_massive.items():
        got = massive.loc[key]
        assert got["count"] == want["count"] and got["max_dim_mode"] == want["max_dim_mode"], key
        for column in ("max_abs_mean", "median_abs_mean", "norm_mean", "top_share_mean"):
            assert got[column] == pytest.approx(want[column], rel=1e-5), (key, column)

    top = result["top_dims"].set_index(["layer", "group", "rank"])
    assert sorted(top.index) == sorted(want_top)
    for key, (dim, share) in want_top.items():
        assert top.loc[key, "dim"] == dim and top.loc[key, "share"] == pytest.approx(share, rel=1e-5, abs=1e-7), key

    sink = result["attention_sink"].set_index(["layer", "head"])
    assert len(sink) == adapter.n_layers * adapter.n_heads == len(want_sink)
    for key, (count, mean, std) in want_sink.items():
        got = sink.loc[key]
        assert got["count"] == count
        assert got["sink_mass_mean"] == pytest.approx(mean, rel=1e-5, abs=1e-7), key
        assert got["sink_mass_std"] == pytest.approx(std, rel=1e-5, abs=1e-7), key

    tokens = result["massive_tokens"].set_index(["layer", "token_id"])
    assert 0 < len(tokens) == len(want_tokens)
    for key, (count, mean) in want_tokens.items():
        assert tokens.loc[key, "count"] == count and tokens.loc[key, "max_abs_mean"] == pytest.approx(mean, rel=1e-5)
        assert tokens.loc[key, "token"] == adapter.tokenizer.decode([key[1]])


def test_findings_recomputed_by_hand(family_adapter):
    adapter = family_adapter("llama")
    tables = _run(adapter, docs=DOCS * 2).tables
    massive, top, sink = tables["massive"], tables["top_dims"], tables["attention_sink"]
    first = massive[massive.position == 0]
    stream = [first[(first.site == "resid_pre") & (first.layer == l)] for l in range(adapter.n_layers)]
    stream.append(first[first.site == "resid_post"])
    ratios = [float(r["max_abs_mean"].iloc[0] / r["median_abs_mean"].iloc[0]) for r in stream]
    threshold = (sorted(ratios)[1] + sorted(ratios)[2]) / 2  # some layers cross, some do not
    f = massive_findings(tables, threshold)
    crossing = next(i for i, r in enumerate(ratios) if r > threshold)
    assert f["first_massive"]["ratio"] == pytest.approx(ratios[crossing], rel=1e-12)
    assert f["first_massive"]["layer"] == min(crossing, adapter.n_layers - 1)
    assert f["first_massive"]["site"] == ("resid_pre" if crossing < adapter.n_layers else "resid_post")
    assert f["first_massive"]["max_dim_mode"] == int(stream[crossing]["max_dim_mode"].iloc[0])
    for layer in range(adapter.n_layers):
        ranked = top[(top.layer == layer) & (top.group == "position0")].sort_values("share", ascending=False)
        assert f["position0_top2_share"][layer] == pytest.approx(ranked["share"].iloc[:2].sum(), rel=1e-12)
        heads = sink[sink.layer == layer]
        mean = (heads.sink_mass_mean * heads["count"]).sum() / heads["count"].sum()
        assert f["sink_mass_by_layer"][layer] == pytest.approx(mean, rel=1e-12)
        pre = massive[(massive.site == "resid_pre") & (massive.layer == layer)]
        norm_ratio = pre[pre.position == 0].norm_mean.iloc[0] / np.median(pre[pre.position > 0].norm_mean)
        assert f["position0_norm_ratio"][layer] == pytest.approx(norm_ratio, rel=1e-12)
    layers = range(adapter.n_layers)
    x, y = [f["position0_norm_ratio"][l] for l in layers], [f["sink_mass_by_layer"][l] for l in layers]
    assert f["sink_vs_norm_ratio_pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert massive_findings(tables, 1e9)["first_massive"] is None
    queries = pre[pre.position > 0]  # the last layer's rows: every layer sees the same tokens
    uniform = sum(c / (p + 1) for p, c in zip(queries.position, queries["count"])) / queries["count"].sum()
    assert f["sink_mass_uniform"] == pytest.approx(uniform, rel=1e-12)


def _probe_over(adapter, windows, seq_len=64, **options):
    probe = MassiveProbe(**options)
    probe.setup(adapter, seq_len)
    return drive_by_hand(probe, adapter, windows, per_batch=2)


def _assert_tables_equal(a, b):
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=False, rtol=1e-12, atol=0)


def test_merge_of_halves_and_state_round_trip_equal_one_pass(family_adapter):
    from normprobe.batching import iter_windows

    adapter = family_adapter("llama")
    windows = list(iter_windows(DOCS, adapter.encode, 64, adapter.bos_token_id))
    whole = _probe_over(adapter, windows, massive_ratio=3.0)
    assert len(whole.result()["massive_tokens"]) > 0
    # split between batches of two, so each half sees the same forward passes as the whole
    first, second = _probe_over(adapter, windows[:2], massive_ratio=3.0), _probe_over(adapter, windows[2:], massive_ratio=3.0)
    restored = MassiveProbe(massive_ratio=3.0)
    restored.setup(adapter, 64)
    restored.load_state_dict(first.state_dict())
    first.merge(second)
    _assert_tables_equal(first.result(), whole.result())
    restored.merge(second)  # a checkpoint loaded back, then the rest of the corpus
    _assert_tables_equal(restored.result(), whole.result())


def test_streaming_batches_equal_one_batch(demo_adapter):
    one = _run(demo_adapter, batch_size=len(DOCS), massive_ratio=4.0)
    streamed = _run(demo_adapter, batch_size=1, massive_ratio=4.0)
    for name in one.tables:
        pd.testing.assert_frame_equal(one[name], streamed[name], check_exact=False, rtol=1e-5, atol=1e-7)


FLAKY = '''
from pathlib import Path
from normprobe import Probe

class FlakyProbe(Probe):
    """Fails once, at its third batch; a marker file beside it remembers that it did."""
    name = "flaky"
    seen = 0

    def hook_points(self):
        return [("resid_pre", 0)]

    def reduce(self, hook_name, activation, batch):
        return None

    def update(self, activations, batch):
        self.seen += 1
        marker = Path(__file__).with_suffix(".failed")
        if self.seen == 3 and not marker.exists():
            marker.touch()
            raise ValueError("boom")

    def merge(self, other):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def result(self):
        return {}
'''


def test_checkpoint_then_resume_equals_uninterrupted(demo_adapter, tmp_path):
    from normprobe import RunResult
    from normprobe.api import run_to_folder

    flaky = tmp_path / "flaky.py"
    flaky.write_text(FLAKY)
    options = dict(
        probes=["massive", str(flaky)],
        texts=DOCS,
        batch_size=1,
        checkpoint_every=2,
        massive_ratio=4.0,
        progress=False,
        plotlyjs="cdn",
    )
    with pytest.raises(NormprobeError, match="boom"):
        run_to_folder(demo_adapter, tmp_path / "run", **options)
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    run_to_folder(demo_adapter, tmp_path / "run", resume=True, **options)
    whole = run_to_folder(demo_adapter, tmp_path / "whole", **options)
    got, want = RunResult.load(tmp_path / "run"), RunResult.load(whole)
    assert got.meta["resumed"] == 1
    for name in ("massive", "top_dims", "attention_sink", "massive_tokens", "massive_replicates", "sink_replicates"):
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=False, rtol=1e-12, atol=0)
    with pytest.raises(NormprobeError, match="massive_ratio differs"):
        from normprobe.store import check_same_run

        check_same_run(got.meta["request"], {**got.meta["request"], "massive_ratio": 50.0})


def test_massive_ratio_is_validated(capsys, tmp_path):
    from normprobe.cli import main

    with pytest.raises(NormprobeError, match="--massive-ratio"):
        normprobe.run("demo", texts=["hello"], probes=["massive"], massive_ratio=0.5, progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["run", "demo", "--probe", "massive", "--text", "hi", "--massive-ratio", "nan", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1 and "--massive-ratio must be" in err[0]
    assert not (tmp_path / "x").exists()


def test_shards_merge_to_the_whole_run(demo_adapter, tmp_path):
    from normprobe import RunResult
    from normprobe.api import merge_shards, run_to_folder

    options = dict(probes=["massive"], texts=DOCS, batch_size=1, massive_ratio=4.0, progress=False, plotlyjs="cdn")
    whole = RunResult.load(run_to_folder(demo_adapter, tmp_path / "whole", **options))
    shards = [run_to_folder(demo_adapter, tmp_path / f"shard{i}", shard=(i, 2), **options) for i in range(2)]
    merged = RunResult.load(merge_shards(shards, tmp_path / "merged", device=TEST_DEVICE, plotlyjs="cdn"))
    assert len(whole["massive_tokens"]) > 0
    for name in ("massive", "top_dims", "attention_sink", "massive_tokens"):
        pd.testing.assert_frame_equal(merged[name], whole[name], check_exact=False, rtol=1e-12, atol=0)
    assert merged.findings["massive"]["massive_ratio"] == 4.0


def test_report_section_draws_and_says_why_when_empty(demo_adapter):
    from normprobe.report.massive import render_massive

    result = _run(demo_adapter, docs=DOCS[:3])
    section = render_massive(result.tables, result.findings["massive"], result.meta)
    figures = [b.figure for b in section.blocks if b.figure is not None]
    assert len(figures) == 3
    heat = figures[0].data[0]
    massive = result["massive"]
    row = massive[(massive.site == "resid_pre") & (massive.layer == 1) & (massive.position == 2)].iloc[0]
    assert heat.z[list(heat.y).index(1)][list(heat.x).index(2)] == pytest.approx(
        np.log10(row.max_abs_mean / row.median_abs_mean), rel=1e-5
    )
    again = render_massive(result.tables, result.findings["massive"], result.meta)
    assert [f.to_json() for f in figures] == [b.figure.to_json() for b in again.blocks if b.figure is not None]
    empty = {name: frame.iloc[:0] for name, frame in result.tables.items()}
    blank = render_massive(empty, massive_findings(empty), result.meta)
    notes = [a.text for b in blank.blocks if b.figure is not None for a in b.figure.layout.annotations]
    assert len(notes) == 3 and all(n.startswith("No data:") for n in notes)


def test_top_counts_exact_within_keep_and_within_the_bound_beyond():
    from normprobe.probes.massive import TopCounts

    rng = np.random.default_rng(0)
    cells = rng.integers(0, 20, 6000)
    few = rng.integers(0, 6, 6000)  # at most 6 distinct values per cell: exact with keep=8
    many = np.where(rng.random(6000) < 0.5, 3, rng.integers(0, 40, 6000))  # value 3 holds about half of each cell

    def counted(values, keep, chunks):
        top = TopCounts(40, keep)
        for part in np.array_split(np.arange(len(values)), chunks):
            other = TopCounts(40, keep)
            other.add(torch.tensor(cells[part] * 40 + values[part]), torch.ones(len(part), dtype=torch.float64))
            top.merge(other)
        return {(int(k) // 40, int(k) % 40): float(c) for k, c in zip(top.keys, top.counts)}, top.mode(20)

    exact, mode = counted(few, 8, 1)
    assert exact == {k: float(v) for k, v in Counter(zip(cells.tolist(), few.tolist())).items()}
    assert counted(few, 8, 7)[0] == exact
    assert mode.tolist() == [min(((-v, d) for (c, d), v in exact.items() if c == cell))[1] for cell in range(20)]
    truth = Counter(zip(cells.tolist(), many.tolist()))
    for chunks in (1, 9):
        approx, mode = counted(many, 4, chunks)
        assert mode.tolist() == [3] * 20
        for (cell, value), count in approx.items():
            n_cell = int((cells == cell).sum())
            assert truth[(cell, value)] - n_cell / 5 <= count <= truth[(cell, value)]

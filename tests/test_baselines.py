"""Null baselines (random-init, shuffled, no-bos) against independent computations, through save, resume and merge."""

from __future__ import annotations

import gc
import json
import weakref
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
import torch

import normprobe
from normprobe.baselines import random_init_hf_model, shuffle_tokens, view_windows
from normprobe.batching import iter_windows
from normprobe.errors import NormprobeError

from .conftest import DOCS
from .reference import hf_residuals, token_ids

# A norms probe that fails once, at the third batch of random-init seed 0's pass, while MARK does not exist:
# the interrupted run of the resume test, after the model's, the shuffled and the no-bos passes.
FLAKY = '''
import os
from normprobe.probes.norms import NormsProbe

MARK = {mark!r}


class FlakyNorms(NormsProbe):
    name = "flaky"

    def setup(self, model, seq_len):
        super().setup(model, seq_len)
        self.armed, self.calls = "random init, seed 0" in model.source.name, 0

    def update(self, activations, batch):
        self.calls += 1
        if self.armed and self.calls == 3 and not os.path.exists(MARK):
            open(MARK, "w").close()
            raise ValueError("boom")
        super().update(activations, batch)
'''
KINDS = ["random-init", "shuffled", "no-bos"]
SEEDS = 2


def _options(probe_file, **extra):
    return dict(
        probes=[str(probe_file)],
        texts=DOCS,
        batch_size=1,
        baselines=KINDS,
        baseline_seeds=SEEDS,
        progress=False,
        plotlyjs="cdn",
        **extra,
    )


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flaky")
    (folder / "flaky.py").write_text(FLAKY.format(mark=str(folder / "failed-once")))
    return folder


@pytest.fixture(scope="module")
def whole(flaky, family_dir, tmp_path_factory):
    """One uninterrupted run with every baseline, counting the model adapters alive when each is built."""
    from normprobe.adapter import ModelAdapter
    from normprobe.api import run_to_folder

    (flaky / "failed-once").touch()  # this run never fails
    alive: weakref.WeakSet = weakref.WeakSet()
    alive_at_build: list[int] = []
    original = ModelAdapter.__init__

    def counting(self, *args, **kwargs):
        gc.collect()
        alive_at_build.append(len(alive))
        original(self, *args, **kwargs)
        alive.add(self)

    ModelAdapter.__init__ = counting
    try:
        out = run_to_folder(str(family_dir("gpt2")), tmp_path_factory.mktemp("whole") / "run", **_options(flaky / "flaky.py"))
    finally:
        ModelAdapter.__init__ = original
    return out, alive_at_build


def test_shuffled_windows_keep_position0_and_permute_seeded_by_document(family_adapter):
    adapter = family_adapter("gpt2")
    for bos in (adapter.bos_token_id, None):

        def shuffled(docs, bos=bos):
            windows = list(iter_windows(docs, adapter.encode, 16, bos))
            return {
                (docs[w.doc_index], tuple(w.tokens)): s.tokens for w, s in zip(windows, view_windows("shuffled", windows, bos))
            }

        forward, backward = shuffled(DOCS), shuffled(DOCS[::-1])
        assert forward == backward  # the same document gets the same permutation wherever it stands
        moved = 0
        for (_, tokens), permuted in forward.items():
            assert permuted[0] == tokens[0] and sorted(permuted) == sorted(tokens)
            moved += permuted != list(tokens)
        assert moved >= len(forward) // 2
    assert shuffle_tokens([5, 1, 2, 3, 4, 9, 8]) != [5, 1, 2, 3, 4, 9, 8]


def test_random_init_is_hf_initialiser_for_the_seed(family_dir, hf_model):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(family_dir("llama"))
    trained = hf_model(family_dir("llama"))
    before = torch.random.get_rng_state()
    ours = random_init_hf_model(config, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is untouched
    torch.manual_seed(1)
    theirs = AutoModelForCausalLM.from_config(config)
    other_seed = random_init_hf_model(config, seed=2)
    for (name, p), q, r, t in zip(ours.named_parameters(), theirs.parameters(), other_seed.parameters(), trained.parameters()):
        assert torch.equal(p, q), name
        if p.numel() > 1 and p.std() > 0:
            assert not torch.equal(p, t) and not torch.equal(p, r), name


def _reference_norms(hf, windows) -> dict:
    """{(site, layer, position): mean norm} from HF hidden states, one window at a time."""
    sums, counts = defaultdict(float), defaultdict(int)
    for ids in windows:
        h = hf_residuals(hf, list(ids))
        last = len(h) - 2
        for layer, states in enumerate(h):
            key = ("resid_pre", layer) if layer <= last else ("resid_post", last)
            for position, vector in enumerate(states):
                sums[(*key, position)] += float(vector.norm())
                counts[(*key, position)] += 1
    return {k: sums[k] / counts[k] for k in sums}


def _assert_norms_match(table: pd.DataFrame, expected: dict, what: str) -> None:
    got = table.set_index(["site", "layer", "position"])["mean"]
    for key, want in expected.items():
        assert abs(got.loc[key] - want) <= 1e-5 * want + 1e-12, (what, key, got.loc[key], want)
    checked = {(site, layer) for site, layer, _ in expected}
    assert sum((site, layer) in checked for site, layer in zip(table.site, table.layer)) == len(expected), what


def test_baseline_tables_equal_independent_computations(whole, family_dir, family_adapter, hf_model):
    from transformers import AutoModelForCausalLM

    result = normprobe.RunResult.load(whole[0])
    tokenizer = family_adapter("gpt2").tokenizer
    bos_windows = [token_ids(tokenizer, d) for d in DOCS if d.strip()]
    trained = hf_model(family_dir("gpt2"))
    # shuffled: position 0 kept, the rest permuted (the permutation itself is checked above)
    shuffled = [shuffle_tokens(w) for w in bos_windows]
    _assert_norms_match(result.baselines["shuffled"]["norms"], _reference_norms(trained, shuffled), "shuffled")
    _assert_norms_match(result.baselines["no-bos"]["norms"], _reference_norms(trained, [w[1:] for w in bos_windows]), "no-bos")
    # random-init: both seeds' models, pooled over seeds (every seed sees the same tokens)
    per_seed = []
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        per_seed.append(_reference_norms(AutoModelForCausalLM.from_config(trained.config).eval(), bos_windows))
    pooled = {k: sum(r[k] for r in per_seed) / SEEDS for k in per_seed[0]}
    _assert_norms_match(result.baselines["random-init"]["norms"], pooled, "random-init")
    main = result.tables["norms"]
    assert not np.allclose(main["mean"], result.baselines["random-init"]["norms"]["mean"])
    # run.json says what each baseline is
    record = result.meta["baselines"]
    assert record["random-init"]["seeds"] == [0, 1] and "re-initialised" in record["random-init"]["description"]
    assert record["random-init"]["n_tokens"] == SEEDS * result.meta["n_tokens"]
    assert record["no-bos"]["n_tokens"] == result.meta["n_tokens"] - result.meta["n_windows"]


def test_one_model_resident_at_a_time(whole):
    # the model, then seed 0's and seed 1's random-init models: none built while another is alive
    assert whole[1] == [0, 0, 0]


def test_save_load_round_trip(whole, tmp_path):
    result = normprobe.RunResult.load(whole[0])
    assert set(result.baselines) == set(KINDS)
    again = normprobe.RunResult.load(result.save(tmp_path / "again", report=False))
    for kind in KINDS:
        assert again.baselines[kind].keys() == result.baselines[kind].keys()
        for name, frame in result.baselines[kind].items():
            pd.testing.assert_frame_equal(again.baselines[kind][name], frame, check_exact=True)
    assert again.run_json() == result.run_json()
    body = json.loads((whole[0] / "run.json").read_text())
    assert body["baselines"]["shuffled"]["tables"] == sorted(result.baselines["shuffled"]) == sorted(result.tables)
    (whole[0] / "baselines" / "shuffled" / "norms.parquet").rename(tmp_path / "gone.parquet")
    try:
        with pytest.raises(NormprobeError, match="norms.parquet is missing"):
            normprobe.RunResult.load(whole[0])
    finally:
        (tmp_path / "gone.parquet").rename(whole[0] / "baselines" / "shuffled" / "norms.parquet")
    body["baselines"] = {"../escape": {"tables": []}}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text(json.dumps(body))
    with pytest.raises(NormprobeError, match="baseline '../escape' is not one of"):
        normprobe.RunResult.load(tmp_path / "bad")


def _assert_same_baselines(got_folder, want_folder) -> None:
    got, want = normprobe.RunResult.load(got_folder), normprobe.RunResult.load(want_folder)
    for kind in KINDS:
        for name, frame in want.baselines[kind].items():
            other = got.baselines[kind][name]
            keys = [c for c in frame.columns if frame[c].dtype == object or c in ("layer", "position", "token_id")]
            a, b = (f.sort_values(keys).reset_index(drop=True) for f in (other, frame))
            pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-9)
        for key in ("n_tokens", "n_windows"):
            assert got.meta["baselines"][kind][key] == want.meta["baselines"][kind][key]


def test_failed_inside_a_baseline_then_resumed_equals_uninterrupted(whole, flaky, family_dir, tmp_path):
    from normprobe.api import run_to_folder

    (flaky / "failed-once").unlink()
    out = tmp_path / "run"
    with pytest.raises(NormprobeError, match="boom"):
        run_to_folder(str(family_dir("gpt2")), out, checkpoint_every=1, **_options(flaky / "flaky.py"))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["baselines"]["shuffled"]["complete"] and state["baselines"]["no-bos"]["complete"]
    assert state["baselines"]["random-init/seed=0"]["progress"]["batches"] == 2
    run_to_folder(str(family_dir("gpt2")), out, resume=True, checkpoint_every=1, **_options(flaky / "flaky.py"))
    _assert_same_baselines(out, whole[0])


def test_shards_then_merge_equal_single_run(whole, family_dir, tmp_path):
    from normprobe.api import merge_shards, run_to_folder

    shards = [
        run_to_folder(str(family_dir("gpt2")), tmp_path / f"shard{i}", shard=(i, 2), **_options(_probe_file(whole)))
        for i in range(2)
    ]
    code = [_probe_file(whole)]
    merged = merge_shards(shards, tmp_path / "merged", plotlyjs="cdn", probe_modules=code)
    _assert_same_baselines(merged, whole[0])
    state = shards[1] / "baselines" / "shuffled" / "state.pt"
    state.write_bytes((shards[0] / "baselines" / "shuffled" / "state.pt").read_bytes())
    with pytest.raises(NormprobeError, match="shuffled/state.pt belongs to another run"):
        merge_shards(shards, tmp_path / "again", plotlyjs="cdn", probe_modules=code)
    state.unlink()
    with pytest.raises(NormprobeError, match="shuffled/state.pt is missing"):
        merge_shards(shards, tmp_path / "again", plotlyjs="cdn", probe_modules=code)
    assert not (tmp_path / "again").exists()


def _probe_file(whole):
    return json.loads((whole[0] / "run.json").read_text())["request"]["probe_specs"][0]


def test_bad_baseline_requests_fail_before_loading():
    with pytest.raises(NormprobeError, match="unknown --baseline 'random'"):
        normprobe.run("demo", texts=["a b"], baselines=["random"])
    with pytest.raises(NormprobeError, match="--baseline-seeds must be at least 1"):
        normprobe.run("demo", texts=["a b"], baselines=["random-init"], baseline_seeds=0)
    with pytest.raises(NormprobeError, match="no-bos .* --no-prepend-bos"):
        normprobe.run("demo", texts=["a b"], baselines=["no-bos"], prepend_bos=False)


def test_report_draws_each_baseline_dashed_with_its_band(family_adapter):
    from normprobe.report import figures_by_title, sections_for
    from normprobe.report.common import pooled_by

    result = normprobe.run(
        family_adapter("gpt2"), texts=DOCS[:3], probes=["norms", "updates", "linesearch"], baselines=["shuffled"], progress=False
    )
    shuffled = result.baselines["shuffled"]

    def dashed(fig, name):
        found = [t for t in fig.data if t.name == name]
        assert len(found) == 1 and found[0].line.dash == "dash", name
        return found[0]

    figures = figures_by_title(sections_for(result))
    by_title = {title.split(" (")[0].split(",")[0]: fig for title, fig in figures.items()}
    pooled = pooled_by(shuffled["norms"], ["site", "layer"])
    want = pooled[pooled.site == "resid_pre"].sort_values("layer")["mean"]
    line = dashed(by_title["Mean norm per layer"], "resid_pre (shuffled)")
    np.testing.assert_allclose(line.y, want, rtol=1e-6)
    lens = shuffled["updates"].drop_duplicates("layer").sort_values("layer")["lens_loss_mean"]
    np.testing.assert_allclose(dashed(by_title["Logit-lens loss of the next token"], "lens loss (shuffled)").y, lens, rtol=1e-6)
    block = shuffled["updates"][shuffled["updates"].component == "block"]["descent_cos_mean"]
    np.testing.assert_allclose(dashed(by_title["Descent alignment cos(Δ"], "block (shuffled)").y, block, rtol=1e-6)
    from normprobe.probes.linesearch import line_search_findings

    stars = line_search_findings(result.baselines["shuffled"]["line_search"])["alpha_star"]["block"]
    np.testing.assert_allclose(dashed(by_title["Best step α* per layer"], "block (shuffled)").y, list(stars.values()), rtol=1e-6)
    # a baseline table with its own interval columns gets a band; without them, none
    assert not any(
        t.fill == "toself" and t.legendgroup == "baseline lens loss (shuffled)"
        for t in by_title["Logit-lens loss of the next token"].data
    )
    shuffled["updates"] = shuffled["updates"].assign(
        lens_loss_ci_low=lambda f: f.lens_loss_mean - 0.5, lens_loss_ci_high=lambda f: f.lens_loss_mean + 0.5
    )
    figures = figures_by_title(sections_for(result))
    fig = next(f for t, f in figures.items() if t.startswith("Logit-lens loss"))
    band = [t for t in fig.data if t.fill == "toself" and t.legendgroup == "baseline lens loss (shuffled)"]
    assert len(band) == 1
    np.testing.assert_allclose(band[0].y[: len(lens)], lens - 0.5, rtol=1e-6)


def test_cli_refuses_a_bad_baseline_in_one_line(tmp_path, capsys):
    from .test_cli import invoke

    code, _, err = invoke(
        ["run", "demo", "--baseline", "random-init", "--baseline", "bogus", "--out", str(tmp_path / "out")], capsys
    )
    assert code == 1 and err.strip() == "normprobe: error: unknown --baseline 'bogus'; choose from random-init, shuffled, no-bos"
    assert not (tmp_path / "out").exists()
    code, _, err = invoke(
        ["run", "demo", "--baseline", "random-init", "--baseline-seeds", "0", "--out", str(tmp_path / "out")], capsys
    )
    assert code == 1 and "--baseline-seeds must be at least 1" in err


def test_random_init_model_against_random_init_baseline_claims_almost_nothing(tmp_path, tokenizers_by_kind):
    """Acceptance (issue 21): on a model that learned nothing, at most 10% of norm_growth and descent claims hold."""
    from transformers import AutoModelForCausalLM

    from .conftest import family_configs

    factory, kind = family_configs()["gpt2"]
    torch.manual_seed(1234)  # not one of the baseline's seeds
    AutoModelForCausalLM.from_config(factory(kind)).save_pretrained(tmp_path / "untrained")
    tokenizers_by_kind[kind].save_pretrained(tmp_path / "untrained")
    result = normprobe.run(
        str(tmp_path / "untrained"),
        texts=DOCS,
        probes=["norms", "updates"],
        seq_len=32,
        baselines=["random-init"],
        progress=False,
    )
    claims = result.claims
    tested = claims[claims["claim"].isin(["norm_growth", "descent"])]
    assert len(tested) >= 10 and "random_init_difference" in tested
    assert (tested["verdict"] == "holds").mean() <= 0.10, tested[["claim", "layer", "component", "verdict"]]

"""`normprobe trace` against independent computations.

- the tuned-lens package's PredictionTrajectory (its LogitLens, a TunedLens it saved, one `lens train` wrote):
  every (layer, position) target log-prob and the top-k ids and log-probs;
- Hugging Face hidden_states for `norm`, and float64 autograd through HF's own final norm, head and
  logit soft-cap for `descent_cos` and `delta_loss`, on GPT-2, Llama, GPT-NeoX and Gemma 2;
- the `updates` probe of a run on the same text (trace and run read the same readout);
- round trips, the CLI's exit codes and one-line errors.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

import normprobe
from normprobe.adapter import DEMO_DIR
from normprobe.api import rerender
from normprobe.tracing import COLUMNS, Trace

from .conftest import DOCS, TEST_DEVICE
from .reference import assert_difference_close, assert_float32_close, difference_atol, final_norm_module, hf_residuals
from .test_cli import invoke
from .test_readouts import tuned_lens  # noqa: F401 - fixture

TEXT = DOCS[3]  # 36 tokens of the demo's tokenizer, BOS included
LOGPROB_ATOL = 1e-5


# -- against the tuned-lens package ------------------------------------------------------
def assert_matches_trajectory(table: pd.DataFrame, log_probs: np.ndarray, ids: list[int]) -> None:
    """log_probs [L + 1, T, V] from PredictionTrajectory; only exactly tied log-probs are not compared on order."""
    assert len(table) == log_probs.shape[0] * log_probs.shape[1]
    for row in table.itertuples(index=False):
        lp = log_probs[row.layer, row.position].astype(np.float64)
        k = len(row.top_ids)
        if row.position + 1 < len(ids):
            assert abs(row.target_logprob - lp[ids[row.position + 1]]) <= LOGPROB_ATOL, (row.layer, row.position)
            assert row.target_rank == int((lp > lp[ids[row.position + 1]]).sum())
        else:
            assert pd.isna(row.target_logprob) and pd.isna(row.target_id)
        order = np.argsort(-lp, kind="stable")[: k + 1]
        theirs = lp[order]
        np.testing.assert_allclose(row.top_logprobs, theirs[:k], rtol=0, atol=LOGPROB_ATOL)
        np.testing.assert_allclose(lp[np.asarray(row.top_ids)], row.top_logprobs, rtol=0, atol=LOGPROB_ATOL)
        for j in range(k):
            tied = theirs[j] == theirs[j + 1] or (j > 0 and theirs[j] == theirs[j - 1])
            if not tied:
                assert row.top_ids[j] == order[j], (row.layer, row.position, j)


def _trajectory(lens, hf, ids):
    from tuned_lens.plotting import PredictionTrajectory

    return PredictionTrajectory.from_lens_and_model(lens, hf, input_ids=ids).log_probs


def test_logit_lens_matches_tuned_lens_package(demo_adapter, hf_model, tuned_lens):  # noqa: F811
    result = normprobe.trace(demo_adapter, TEXT, top_k=5)
    ids = result.meta["token_ids"][0]
    assert list(result.table.columns) == list(COLUMNS) and len(ids) == 36
    hf = hf_model(DEMO_DIR)
    assert_matches_trajectory(result.table, _trajectory(tuned_lens.LogitLens.from_model(hf), hf, ids), ids)


def _double_readout(hf):
    """Per-token loss of h [n, d] in float64 through HF's final norm, head and soft-cap (after a translator (A, b))."""
    hf64 = copy.deepcopy(hf).double()
    norm, head = final_norm_module(hf64), hf64.get_output_embeddings()
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    cap = getattr(config, "final_logit_softcapping", None)

    def loss(h, targets, translator=None):
        y = h if translator is None else h + h @ translator[0].T + translator[1]
        z = head(norm(y))
        if cap:
            z = cap * torch.tanh(z / cap)
        return torch.nn.functional.cross_entropy(z, targets, reduction="none")

    return loss


def assert_steps_match_autograd(table: pd.DataFrame, hf, ids: list[int], loss_for_layer, rel: float = 5e-6) -> None:
    """norm against HF hidden states; descent_cos and delta_loss against float64 autograd, every (layer, position)."""
    hs = hf_residuals(hf, ids)  # float64 copies of HF's float32 states
    L, n = len(hs) - 1, len(ids) - 1
    targets = torch.tensor(ids[1:])
    got = table.set_index(["layer", "position"]).sort_index()
    want_norm = [float(v) for h in hs for v in h.norm(dim=-1)]
    assert_float32_close(got["norm"].to_numpy(), want_norm, what="norm")
    cos, change, update, scale = [], [], [], 0.0
    for layer in range(L):
        loss = loss_for_layer(layer)
        x = hs[layer][:n].clone().requires_grad_(True)
        before = loss(x, targets)
        scale = max(scale, float(before.detach().abs().max()))
        (grad,) = torch.autograd.grad(before.sum(), x)
        delta = hs[layer + 1] - hs[layer]
        cos += torch.nn.functional.cosine_similarity(delta[:n], -grad, dim=-1).tolist() + [np.nan]
        change += (loss(hs[layer + 1][:n], targets) - before).tolist() + [np.nan]
        update += delta.norm(dim=-1).tolist()
    steps = got.loc[list(range(L))]
    assert_float32_close(steps["update_norm"].to_numpy(), update, what="update_norm")
    assert_float32_close(steps["descent_cos"].to_numpy(), cos, rel=rel, what="descent_cos")
    # a difference of two float32 losses carries their rounding (about 1e-7 of each loss), however small it is
    np.testing.assert_allclose(steps["delta_loss"].to_numpy(), change, rtol=rel, atol=2e-6 * scale, equal_nan=True)
    assert got.loc[L, ["update_norm", "descent_cos", "delta_loss"]].isna().all().all()


def test_tuned_lens_saved_by_tuned_lens(tmp_path, demo_adapter, hf_model, tuned_lens):  # noqa: F811
    hf = hf_model(DEMO_DIR)
    lens = tuned_lens.TunedLens.from_model(hf)
    torch.manual_seed(5)
    with torch.no_grad():
        for t in lens:
            t.weight.normal_(0, 0.05)
            t.bias.normal_(0, 0.05)
    lens.save(tmp_path / "theirs")
    result = normprobe.trace(demo_adapter, TEXT, readout=f"tuned:{tmp_path / 'theirs'}", top_k=4)
    ids = result.meta["token_ids"][0]
    assert_matches_trajectory(result.table, _trajectory(lens, hf, ids), ids)
    # the steps through the tuned readout: layer l's translator reads h_l and h_{l+1} alike, as `updates` does
    state = {k: v.double() for k, v in torch.load(tmp_path / "theirs" / "params.pt", weights_only=True).items()}

    loss = _double_readout(hf)

    def loss_for_layer(layer):
        return lambda h, targets: loss(h, targets, (state[f"{layer}.weight"], state[f"{layer}.bias"]))

    assert_steps_match_autograd(result.table, hf, ids, loss_for_layer)


def test_lens_trained_by_normprobe(tmp_path, demo_adapter, hf_model, tuned_lens):  # noqa: F811
    from normprobe.lens_training import train_lens

    folder = train_lens(demo_adapter, tmp_path / "trained", steps=3, batch_size=1, seq_len=16, progress=False)
    hf = hf_model(DEMO_DIR)
    lens = tuned_lens.TunedLens.from_model_and_pretrained(hf, str(folder))
    result = normprobe.trace(demo_adapter, TEXT, readout=f"tuned:{folder}", top_k=3)
    ids = result.meta["token_ids"][0]
    assert_matches_trajectory(result.table, _trajectory(lens, hf, ids), ids)


# -- against Hugging Face and float64 autograd, per family -------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_steps_match_float64_autograd(family, family_adapter, family_dir, hf_model):
    adapter, hf = family_adapter(family), hf_model(family_dir(family))
    result = normprobe.trace(adapter, DOCS[1], top_k=3)
    ids = result.meta["token_ids"][0]
    loss = _double_readout(hf)
    assert_steps_match_autograd(result.table, hf, ids, lambda layer: loss)
    _assert_output_is_the_models(result.table, hf, ids)


def _assert_output_is_the_models(table, hf, ids):
    """Layer L's log-probs are the model's own logits' (soft-capped where the model caps them)."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].double()
    want = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    out = table[table["layer"] == table["layer"].max()].sort_values("position")
    np.testing.assert_allclose(out["target_logprob"].to_numpy()[:-1], want.numpy(), rtol=0, atol=LOGPROB_ATOL)


def test_gemma2_soft_capped_logits(tmp_path):
    from .test_model_types import tiny_pair, word_tokenizer_in

    adapter, hf = tiny_pair("gemma2", word_tokenizer_in(tmp_path))
    assert adapter.readout.logit_op is not None and adapter.readout.logit_op.kind == "softcap"
    result = normprobe.trace(adapter, "w5 w17 w3 w99 w250 w8 w8 w31 w77 w140", top_k=3)
    ids = result.meta["token_ids"][0]
    loss = _double_readout(hf)
    assert_steps_match_autograd(result.table, hf, ids, lambda layer: loss)
    _assert_output_is_the_models(result.table, hf, ids)


# -- trace and run agree; several texts; round trips --------------------------------------
def test_trace_agrees_with_an_updates_run(demo_adapter):
    """updates_by_position holds, per (layer, position), the lens loss and descent cos of the run's one window."""
    result = normprobe.trace(demo_adapter, TEXT)
    run = normprobe.run(demo_adapter, texts=[TEXT], probes=["updates"], progress=False)
    by_position = run["updates_by_position"].set_index(["layer", "position"]).sort_index()
    got = result.table.dropna(subset=["target_logprob"]).set_index(["layer", "position"]).sort_index()
    assert list(by_position.index) == list(got.index)
    assert_float32_close(-got["target_logprob"], by_position["lens_loss_mean"], what="lens loss")
    steps = got.loc[got.index.get_level_values(0) < demo_adapter.n_layers]
    assert_float32_close(steps["descent_cos"], by_position["descent_cos_mean"].loc[steps.index], what="descent cos")


def test_several_texts_are_traced_apart_and_round_trip(tmp_path, demo_adapter):
    both = normprobe.trace(demo_adapter, [DOCS[0], DOCS[2]], top_k=2)
    alone = normprobe.trace(demo_adapter, DOCS[2], top_k=2)
    assert sorted(both.table["doc"].unique()) == [0, 1] and both.meta["texts"] == [DOCS[0], DOCS[2]]
    second = both.table[both.table["doc"] == 1].drop(columns="doc").reset_index(drop=True)
    want = alone.table.drop(columns="doc")
    # padding and batching change the blocking of the matmuls and the readout's sums: float32 rounding,
    # relative ~1e-6 of O(1) values; the differences are judged on the size of their terms (below)
    differences = ["delta_loss", "update_norm", "descent_cos"]
    pd.testing.assert_frame_equal(
        second.drop(columns=differences), want.drop(columns=differences), check_exact=False, rtol=1e-5, atol=1e-6
    )
    rows = want.set_index(["layer", "position"])
    after = rows.groupby(level="position").shift(-1)  # layer l + 1 at each row's position
    # delta_loss = loss(h_{l+1}) - loss(h_l), the losses being -target_logprob
    loss_terms = difference_atol(rows["target_logprob"], after["target_logprob"])
    assert_difference_close(second["delta_loss"], want["delta_loss"], loss_terms, what="delta_loss")
    # update_norm = |h_{l+1} - h_l|: its rounding is that of the vectors, eps of |h_l| + |h_{l+1}|
    norm_terms = difference_atol(rows["norm"], after["norm"])
    assert_difference_close(second["update_norm"], want["update_norm"], norm_terms, what="update_norm")
    # descent_cos reads the same Δ: its rounding relative to |Δ|
    cos_terms = norm_terms / want["update_norm"].to_numpy()
    assert_difference_close(second["descent_cos"], want["descent_cos"], cos_terms, what="descent_cos")
    out = both.save(tmp_path / "t")
    assert {p.name for p in out.iterdir()} == {"trace.parquet", "trace.html", "run.json"}
    loaded = Trace.load(out)
    pd.testing.assert_frame_equal(loaded.table, both.table)
    assert loaded.meta["token_ids"] == both.meta["token_ids"]
    page = (out / "trace.html").read_text()
    rerender(out)
    assert (out / "trace.html").read_text() == page
    with pytest.raises(normprobe.NormprobeError, match="exists and is not empty"):
        both.save(out)
    both = loaded  # figures and the notebook view from the saved table
    fig = both.figure("descent_cos", doc=1)
    assert fig.data[0].colorbar.title.text == "descent cos"
    want = both.table.query("doc == 1 and layer == 1").sort_values("position")["descent_cos"]
    np.testing.assert_array_equal(np.array(fig.data[0].z, dtype=float)[1], want.to_numpy())
    assert "normprobe trace" in both._repr_html_()
    with pytest.raises(normprobe.NormprobeError, match="unknown metric"):
        both.figure("loss")


def test_a_failed_save_leaves_nothing(tmp_path, demo_adapter, monkeypatch):
    import normprobe.report.trace as page

    result = normprobe.trace(demo_adapter, DOCS[2], top_k=2)
    monkeypatch.setattr(page, "render_trace_page", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        result.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()


# -- the CLI ----------------------------------------------------------------------------------
def test_cli_writes_the_folder(tmp_path, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS[:3]) + "\n")
    out = tmp_path / "out"
    code, stdout, err = invoke(
        [
            "trace",
            "demo",
            "--input",
            str(docs),
            "--max-docs",
            "2",
            "--max-tokens",
            "6",
            "--top-k",
            "3",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            TEST_DEVICE,
        ],
        capsys,
    )
    assert code == 0, err
    assert stdout.endswith(f"wrote {out}/ (trace: {out / 'trace.html'})\n") and err == ""
    meta = json.loads((out / "run.json").read_text())
    assert meta["kind"] == "trace" and meta["n_docs"] == 2 and [len(i) for i in meta["token_ids"]] == [6, 6]
    assert meta["readout"]["kind"] == "logit" and meta["n_layers"] == 4 and meta["texts"] == DOCS[:2]
    table = pd.read_parquet(out / "trace.parquet")
    assert len(table) == 2 * 5 * 6 and all(len(t) == 3 for t in table["top_ids"])
    # what it printed: per position, the first layer whose top-1 is the output's (layer 4), by a plain loop
    lines = stdout.splitlines()
    assert lines[0] == "first layer whose top-1 prediction is the model's (layer 4 is the output), by position:"
    for doc in (0, 1):
        first = []
        for position in range(6):
            top1 = {
                int(r.layer): int(r.top_ids[0]) for r in table[(table.doc == doc) & (table.position == position)].itertuples()
            }
            first.append(min(layer for layer in range(5) if top1[layer] == top1[4]))
        assert f"  doc {doc}: {' '.join(map(str, first))}" in lines
        median = sorted(first)[2:4]
        assert any(line.startswith(f"  doc {doc}: median layer {sum(median) / 2:g} over 6 positions; ") for line in lines)
        assert f"{first.count(4)} match only at the output" in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--text", "  "], "text 1 is empty or only whitespace"),
        (["--text", "a", "--top-k", "0"], "--top-k must be a whole number of at least 1"),
        (["--text", "a", "--max-tokens", "0"], "--max-tokens must be"),
        (["--text", "a", "--top-k", "5000"], "--top-k 5000 is more than demo's vocabulary of 2048"),
        (["--input", "nowhere.txt"], "input file not found"),
        (["--text", "a", "--input", "x.txt"], "not both"),
        ([], "give the text to trace: --text TEXT (repeatable) or --input FILE\n"),
        (["--text", "a", "--readout", "tuned"], "logit or tuned:DIR"),
        (["--text", "a", "--dtype", "int8"], "unknown dtype"),
    ],
)
def test_cli_bad_input_is_one_line_before_loading(tmp_path, capsys, monkeypatch, args, message):
    import normprobe.adapter as adapter

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(adapter.ModelAdapter, "from_source", lambda *a, **k: pytest.fail("the model loaded"))
    code, stdout, err = invoke(["trace", "demo", *args, "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 1 and stdout == ""
    assert err.startswith("normprobe: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = invoke(["trace", "demo", "--text", "a b", "--out", str(out), "--no-progress"], capsys)
    assert code == 1 and "exists and is not empty; pass --overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

"""The lens probe against a float64 readout of Hugging Face's hidden states written in the test."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import normprobe
from normprobe.adapter import DEMO_DIR
from normprobe.bootstrap import poisson_weights, text_seed
from normprobe.readouts.tuned import new_translators, save_lens

from .conftest import DOCS
from .reference import final_norm_module, hf_residuals, token_ids

REPLICATES = 8
CONTINUOUS = ("lens_loss", "kl", "entropy")
DISCRETE = ("target_rank", "target_log_rank", "target_top1", "top1_agree")


def reference_rows(hf, tokenizer, docs, translate=None):
    """Per document and row (layers 0..L-1, then the output): the per-token metrics in float64."""
    hf64 = copy.deepcopy(hf).double()
    norm, head = final_norm_module(hf64), hf64.get_output_embeddings()
    per_doc = []
    for doc in docs:
        ids = token_ids(tokenizer, doc)
        if len(ids) < 2:
            continue
        residuals = hf_residuals(hf, ids)
        n_layers = len(residuals) - 1
        targets = torch.tensor(ids[1:])
        with torch.no_grad():

            def read(layer):
                h = residuals[layer][:-1]
                if translate is not None and layer < n_layers:
                    h = translate(h, layer)
                return head(norm(h))

            out = read(n_layers)
            log_q = out.log_softmax(-1)
            rows = []
            for layer in range(n_layers + 1):
                logits = read(layer)
                log_p = logits.log_softmax(-1)
                rank = (logits > logits.gather(1, targets[:, None])).sum(-1) + 1
                rows.append(
                    {
                        "lens_loss": -log_p.gather(1, targets[:, None])[:, 0],
                        "kl": (log_q.exp() * (log_q - log_p)).sum(-1),
                        "entropy": -(log_p.exp() * log_p).sum(-1),
                        "target_rank": rank.double(),
                        "target_log_rank": rank.double().log(),
                        "target_top1": (rank == 1).double(),
                        "top1_agree": (logits.argmax(-1) == out.argmax(-1)).double(),
                    }
                )
        per_doc.append((doc, rows))
    return per_doc


def check_against_reference(table, replicates, per_doc):
    n_rows = len(per_doc[0][1])
    assert list(table["layer"]) == list(range(n_rows))
    assert list(table["component"]) == ["resid_pre"] * (n_rows - 1) + ["output"]
    for row in range(n_rows):
        got = table.iloc[row]
        n = sum(len(rows[row]["lens_loss"]) for _, rows in per_doc)
        assert int(got["count"]) == n
        for metric in CONTINUOUS + DISCRETE:
            want = float(torch.cat([rows[row][metric] for _, rows in per_doc]).mean())
            if metric in CONTINUOUS:  # float32 terms of size ~log V: absolute floor from their size
                assert got[f"{metric}_mean"] == pytest.approx(want, rel=1e-5, abs=2e-5), (row, metric)
            else:  # a float32 near-tie may flip one token's comparison: at most one token's worth
                assert abs(got[f"{metric}_mean"] - want) * n <= 1.0 + 1e-9, (row, metric, got[f"{metric}_mean"], want)
        # the document bootstrap: replicate b is the Poisson(1)-weighted mean over documents
        weights = {doc: poisson_weights(text_seed(doc), REPLICATES) for doc, _ in per_doc}
        reps = replicates[replicates["layer"] == row].sort_values("replicate")
        for metric in CONTINUOUS:
            total = sum(weights[doc] * float(rows[row][metric].sum()) for doc, rows in per_doc)
            mass = sum(weights[doc] * len(rows[row][metric]) for doc, rows in per_doc)
            want = np.where(mass > 0, total / np.where(mass > 0, mass, 1), np.nan)
            np.testing.assert_allclose(reps[metric].to_numpy(), want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_logit_lens_matches_hf_hidden_states(family, family_adapter, family_dir, hf_model):
    adapter = family_adapter(family)
    result = normprobe.run(adapter, texts=DOCS, probes=["lens"], progress=False, batch_size=4, replicates=REPLICATES)
    per_doc = reference_rows(hf_model(family_dir(family)), adapter.tokenizer, DOCS)
    check_against_reference(result["lens"], result["lens_replicates"], per_doc)
    assert result["lens"].iloc[-1]["kl_mean"] == 0.0 and result["lens"].iloc[-1]["top1_agree_mean"] == 1.0


def test_tuned_lens_matches_translators_applied_by_hand(tmp_path, demo_adapter, hf_model):
    torch.manual_seed(0)
    translators = new_translators(demo_adapter.d_model, demo_adapter.n_layers)
    with torch.no_grad():
        for t in translators:
            t.weight.normal_(0, 0.05)
            t.bias.normal_(0, 0.05)
    lens = save_lens(tmp_path / "lens", translators, demo_adapter)
    state = {k: v.double() for k, v in torch.load(lens / "params.pt", weights_only=True).items()}

    def translate(h, layer):
        return h + h @ state[f"{layer}.weight"].T + state[f"{layer}.bias"]

    result = normprobe.run(
        demo_adapter, texts=DOCS[:4], probes=["lens"], progress=False, readout=f"tuned:{lens}", replicates=REPLICATES
    )
    per_doc = reference_rows(hf_model(DEMO_DIR), demo_adapter.tokenizer, DOCS[:4], translate)
    check_against_reference(result["lens"], result["lens_replicates"], per_doc)


def test_the_lens_read_in_blocks_of_a_few_rows_matches_hf_hidden_states(monkeypatch, family_adapter, family_dir, hf_model):
    """Blocks of 3 rows (and a ragged last block), so every row's statistics come from the block loop."""
    import normprobe.probes.lens as lens_probe

    adapter = family_adapter("gpt2")
    monkeypatch.setattr(lens_probe, "ROW_LOGITS", 3 * adapter.d_vocab)
    result = normprobe.run(adapter, texts=DOCS, probes=["lens"], progress=False, batch_size=4, replicates=REPLICATES)
    per_doc = reference_rows(hf_model(family_dir("gpt2")), adapter.tokenizer, DOCS)
    check_against_reference(result["lens"], result["lens_replicates"], per_doc)


def test_lens_state_round_trip_and_merge(demo_adapter):
    """Two halves merged equal one pass over both; a state_dict restores the statistics."""
    from normprobe.probes.lens import LensProbe

    whole = normprobe.run(demo_adapter, texts=DOCS, probes=["lens"], progress=False, replicates=REPLICATES)
    halves = [
        normprobe.run(demo_adapter, texts=part, probes=["lens"], progress=False, replicates=REPLICATES)
        for part in (DOCS[:3], DOCS[3:])
    ]
    want = whole["lens"].set_index("layer")
    counts = sum(h["lens"].set_index("layer")["count"] for h in halves)
    assert (counts == want["count"]).all()
    pooled = sum(h["lens"].set_index("layer")["lens_loss_mean"] * h["lens"].set_index("layer")["count"] for h in halves) / counts
    np.testing.assert_allclose(pooled.to_numpy(), want["lens_loss_mean"].to_numpy(), rtol=1e-6)
    probe = LensProbe(replicates=REPLICATES)
    probe.setup(demo_adapter, 16)
    other = LensProbe(replicates=REPLICATES)
    other.setup(demo_adapter, 16)
    other.moments["kl"].add(torch.tensor([0, 1]), torch.tensor([0.5, 2.0]))
    probe.load_state_dict(other.state_dict())
    probe.merge(other)
    assert probe.moments["kl"].count.tolist()[:2] == [2.0, 2.0]


def test_lens_section_draws_the_table(demo_adapter):
    from normprobe.report import render_report, renderer_for

    result = normprobe.run(demo_adapter, texts=DOCS[:3], probes=["lens"], progress=False, replicates=REPLICATES)
    section = renderer_for("lens")(result.tables, result.findings["lens"], result.meta)
    assert section.anchor == "lens"
    loss = section.blocks[0].figure.data[0]
    np.testing.assert_allclose(np.asarray(loss.y, dtype=float), result["lens"]["lens_loss_mean"].to_numpy(), rtol=1e-6)
    assert list(loss.x) == result["lens"]["layer"].tolist()
    again = renderer_for("lens")(result.tables, result.findings["lens"], result.meta)
    assert [b.figure.to_json() for b in again.blocks] == [b.figure.to_json() for b in section.blocks]
    assert "Every layer read out against the output" in render_report(result, plotlyjs="cdn")


def test_non_finite_rows_are_not_ranked():
    """A row of NaN logits gives NaN for every metric (counted apart by the moments), never rank 1."""
    from normprobe.lens_stats import block_statistics

    z = torch.tensor([[0.0, 1.0, 2.0], [float("nan"), 0.0, 1.0]])
    ref_z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    _, reference = block_statistics(ref_z.clone(), torch.tensor([0, 2]), None, torch.empty(2, 3))
    stats, _ = block_statistics(z.clone(), torch.tensor([0, 2]), reference, torch.empty(2, 3))
    log_p = torch.log_softmax(z[0].double(), -1)
    assert float(stats["lens_loss"][0]) == pytest.approx(float(-log_p[0]), rel=1e-6)
    assert float(stats["target_rank"][0]) == 3.0 and float(stats["top1_agree"][0]) == 0.0
    for name, values in stats.items():
        assert bool(torch.isnan(values[1])), name

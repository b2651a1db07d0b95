"""A tuned readout's diagnostics on the probe corpus (held-out CE, KL to the model's output) against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import normprobe
from normprobe.lens_training import train_lens

from .conftest import DOCS
from .reference import assert_difference_close, assert_float32_close, difference_atol, final_norm_module, token_ids

TRAIN, PROBE = DOCS[:3], DOCS[3:]


@pytest.fixture(scope="module")
def lens(tmp_path_factory, family_adapter):
    return train_lens(
        family_adapter("gpt2"),
        tmp_path_factory.mktemp("lens") / "lens",
        texts=TRAIN,
        steps=3,
        batch_size=2,
        seq_len=32,
        progress=False,
    )


@torch.no_grad()
def _by_hand(hf, tokenizer, lens_dir, docs):
    """Per layer: mean next-token CE through h + A h + b -> ln_f -> lm_head, KL(output || lens), and the mean size
    of KL's two terms (sum p log p and sum p log q), over all docs."""
    params = torch.load(lens_dir / "params.pt", weights_only=True)
    norm, head = final_norm_module(hf), hf.get_output_embeddings()
    ce, kl, terms = {}, {}, {}
    for doc in docs:
        ids = token_ids(tokenizer, doc)
        out = hf(torch.tensor([ids]), output_hidden_states=True)
        states = out.hidden_states
        n_layers = len(states) - 1
        targets = torch.tensor(ids[1:])
        output = torch.log_softmax(out.logits[0, :-1].double(), -1)
        for layer in range(n_layers + 1):
            h = states[layer][0, :-1] if layer < n_layers else None
            if layer < n_layers:
                h = h + h @ params[f"{layer}.weight"].T + params[f"{layer}.bias"]
                logp = torch.log_softmax(head(norm(h)).double(), -1)
            else:
                logp = output
            ce.setdefault(layer, []).extend((-logp[torch.arange(len(targets)), targets]).tolist())
            kl.setdefault(layer, []).extend((output.exp() * (output - logp)).sum(-1).tolist())
            terms.setdefault(layer, []).extend((output.exp() * (output.abs() + logp.abs())).sum(-1).tolist())
    return tuple({l: np.mean(v) for l, v in found.items()} for found in (ce, kl, terms))


def test_diagnostics_equal_hand_computation_and_flag_in_sample(lens, family_adapter, family_dir, hf_model, capfd):
    adapter = family_adapter("gpt2")
    held_out = normprobe.run(adapter, texts=PROBE, probes=["norms"], readout=f"tuned:{lens}", progress=False)
    assert "in-sample" not in capfd.readouterr().err
    found = held_out.meta["lens_diagnostics"]
    assert found["in_sample"] is False and found["lens_corpus_sha256"] != found["probe_corpus_sha256"]
    ce, kl, kl_terms = _by_hand(hf_model(family_dir("gpt2")), adapter.tokenizer, lens, PROBE)
    layers = sorted(ce)
    assert sorted(found["heldout_ce_by_layer"]) == layers
    assert_float32_close([found["heldout_ce_by_layer"][l] for l in layers], [ce[l] for l in layers], rel=1e-5)
    # KL is a difference of sums of log-probabilities of a few nats each, rounded in float32: its tolerance is
    # that of its terms, however small the KL itself
    got = [found["kl_to_output_by_layer"][l] for l in layers]
    atol = difference_atol([kl_terms[l] for l in layers])
    assert_difference_close(got, [kl[l] for l in layers], atol, rel=1e-5, what="kl_to_output_by_layer")
    assert found["kl_to_output_by_layer"][layers[-1]] == pytest.approx(0, abs=float(atol[-1]))
    in_sample = normprobe.run(adapter, texts=TRAIN, probes=["norms"], readout=f"tuned:{lens}", progress=False)
    warning = [line for line in capfd.readouterr().err.splitlines() if "in-sample" in line]
    assert len(warning) == 1 and warning[0].startswith("normprobe: warning: the tuned lens")
    assert in_sample.meta["lens_diagnostics"]["in_sample"] is True

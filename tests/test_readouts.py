"""Readouts: the tuned readout against autograd through Hugging Face modules, and the tuned-lens format both ways."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import normprobe
from normprobe import NormprobeError
from normprobe.adapter import DEMO_DIR
from normprobe.readouts import make_readout, parse_readout
from normprobe.readouts.tuned import new_translators, save_lens
from normprobe.runner import make_runner

from .conftest import DOCS


def _random_translators(adapter, seed=0, scale=0.05):
    torch.manual_seed(seed)
    translators = new_translators(adapter.d_model, adapter.n_layers)
    with torch.no_grad():
        for t in translators:
            t.weight.normal_(0, scale)
            t.bias.normal_(0, scale)
    return translators


@pytest.fixture(scope="module")
def random_lens(tmp_path_factory, demo_adapter):
    return save_lens(tmp_path_factory.mktemp("lens"), _random_translators(demo_adapter), demo_adapter)


def test_tuned_readout_matches_autograd(demo_adapter, hf_model, random_lens):
    """loss and dloss/dh of CE(lm_head(ln_f(h + A_l h + b_l))), in float64 autograd on the HF modules."""
    hf = copy.deepcopy(hf_model(DEMO_DIR)).double()
    readout = make_readout(demo_adapter, f"tuned:{random_lens}")
    state = torch.load(random_lens / "params.pt", weights_only=True)
    torch.manual_seed(3)
    h = torch.randn(11, demo_adapter.d_model) * 4
    targets = torch.randint(0, demo_adapter.d_vocab, (11,))
    device = demo_adapter.device  # the readout runs there; the float64 reference on the CPU
    for layer in (0, demo_adapter.n_layers - 1, demo_adapter.n_layers):
        x = h.double().requires_grad_(True)
        if layer < demo_adapter.n_layers:
            y = x + x @ state[f"{layer}.weight"].double().T + state[f"{layer}.bias"].double()
        else:
            y = x  # the output is read without a translator
        logits = hf.lm_head(hf.transformer.ln_f(y))
        want = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        (want_grad,) = torch.autograd.grad(want.sum(), x)
        loss, grad = (t.cpu() for t in readout.loss_and_grad(h.to(device), targets.to(device), layer))
        torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-6)
        again = readout.loss(h.to(device), targets.to(device), layer).cpu()
        torch.testing.assert_close(again.double(), want.detach(), rtol=1e-5, atol=1e-5)


def test_lens_for_another_model_is_refused(tmp_path, demo_adapter, random_lens):
    other = tmp_path / "other"
    other.mkdir()
    (other / "params.pt").write_bytes((random_lens / "params.pt").read_bytes())
    config = json.loads((random_lens / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] + 1}))
    with pytest.raises(NormprobeError, match="made for a model with d_model 128 and 5 layers") as info:
        make_readout(demo_adapter, f"tuned:{other}")
    assert "\n" not in str(info.value)
    with pytest.raises(NormprobeError, match="and 5 layers .*; demo has d_model 128 and 4 layers"):
        make_runner("demo", texts=DOCS, probes=["updates"], readout=f"tuned:{other}")  # before any model loads


def test_bad_readout_values_fail_before_loading(tmp_path):
    with pytest.raises(NormprobeError, match="logit or tuned:DIR"):
        parse_readout("tuned")
    with pytest.raises(NormprobeError, match="not found"):
        parse_readout(f"tuned:{tmp_path / 'nowhere'}")
    with pytest.raises(NormprobeError, match="has no config.json or params.pt"):
        parse_readout(f"tuned:{tmp_path}")
    with pytest.raises(NormprobeError, match="tuned lens folder not found"):
        make_runner("demo", texts=DOCS, probes=["updates"], readout=f"tuned:{tmp_path / 'x'}")


def test_params_are_loaded_without_executing_code(tmp_path, demo_adapter, random_lens):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    (tmp_path / "config.json").write_text((random_lens / "config.json").read_text())
    torch.save({"0.weight": Evil()}, tmp_path / "params.pt")
    with pytest.raises(NormprobeError, match="cannot read .*params.pt"):
        make_readout(demo_adapter, f"tuned:{tmp_path}")


def _tuned_lens_losses(lens, h, targets, layer):
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(lens(h, layer), targets, reduction="none")


@pytest.fixture
def tuned_lens(monkeypatch):
    """The tuned-lens package, told that TransformerLens is absent (it probes the HookedTransformer that TL 4 removed)."""
    lenses = pytest.importorskip("tuned_lens.nn.lenses")
    from tuned_lens import model_surgery
    from tuned_lens.nn import unembed

    monkeypatch.setattr(model_surgery, "_transformer_lens_available", False)
    monkeypatch.setattr(unembed, "_transformer_lens_available", False)
    return lenses


def test_tuned_lens_package_round_trip(tmp_path, demo_adapter, hf_model, tuned_lens):
    """A lens tuned-lens writes reads in normprobe with its losses, and one normprobe writes loads in tuned-lens."""
    hf = hf_model(DEMO_DIR)
    theirs = tuned_lens.TunedLens.from_model(hf)
    torch.manual_seed(5)
    with torch.no_grad():
        for t in theirs:
            t.weight.normal_(0, 0.05)
            t.bias.normal_(0, 0.05)
    theirs.save(tmp_path / "theirs")
    torch.manual_seed(6)
    h = torch.randn(9, demo_adapter.d_model) * 3
    targets = torch.randint(0, demo_adapter.d_vocab, (9,))
    readout = make_readout(demo_adapter, f"tuned:{tmp_path / 'theirs'}")
    on_device = h.to(demo_adapter.device), targets.to(demo_adapter.device)
    for layer in range(demo_adapter.n_layers):
        torch.testing.assert_close(
            readout.loss(*on_device, layer).cpu(), _tuned_lens_losses(theirs, h, targets, layer), rtol=1e-5, atol=1e-5
        )

    ours = save_lens(tmp_path / "ours", _random_translators(demo_adapter, seed=7), demo_adapter)
    loaded = tuned_lens.TunedLens.from_model_and_pretrained(hf, str(ours))
    assert loaded.config.unembed_hash == json.loads((ours / "config.json").read_text())["unembed_hash"]
    readout = make_readout(demo_adapter, f"tuned:{ours}")
    for layer in range(demo_adapter.n_layers):
        torch.testing.assert_close(
            readout.loss(*on_device, layer).cpu(), _tuned_lens_losses(loaded, h, targets, layer), rtol=1e-5, atol=1e-5
        )


def test_updates_with_tuned_readout_records_it(demo_adapter, random_lens, hf_model):
    """The lens loss at each layer is the mean tuned-readout loss of resid_pre (checked against the readout itself
    on hidden states from Hugging Face), and run.json names the readout."""
    result = normprobe.run(demo_adapter, texts=DOCS[:3], probes=["updates"], progress=False, readout=f"tuned:{random_lens}")
    assert result.meta["readout"]["kind"] == "tuned"
    assert result.meta["request"]["readout"] == f"tuned:{random_lens}"
    from .reference import hf_residuals, token_ids

    readout = make_readout(demo_adapter, f"tuned:{random_lens}")
    losses = {l: [] for l in range(demo_adapter.n_layers + 1)}
    for doc in DOCS[:3]:
        ids = token_ids(demo_adapter.tokenizer, doc)
        targets = torch.tensor(ids[1:], device=demo_adapter.device)
        for layer, h in enumerate(hf_residuals(hf_model(DEMO_DIR), ids)):
            losses[layer].extend(readout.loss(h[:-1].float().to(targets.device), targets, layer).tolist())
    table = result["updates"].drop_duplicates("layer").set_index("layer")
    for layer, values in losses.items():
        assert table.loc[layer, "lens_loss_mean"] == pytest.approx(sum(values) / len(values), rel=1e-5)


def test_resume_compares_the_readout():
    from normprobe.store import FINGERPRINT_DEFAULTS, check_same_run

    saved_before_readouts = {"model": "demo"}
    now = {**FINGERPRINT_DEFAULTS, "model": "demo", "readout": "logit", "readout_params_sha256": None, "alphas": None}
    check_same_run(saved_before_readouts, now)
    with pytest.raises(NormprobeError, match="cannot resume: readout differs"):
        check_same_run(saved_before_readouts, {**now, "readout": "tuned:/x", "readout_params_sha256": "ab"})
    with pytest.raises(NormprobeError, match="readout_params_sha256 differs"):
        check_same_run(
            {**now, "readout": "tuned:/x", "readout_params_sha256": "ab"},
            {**now, "readout": "tuned:/x", "readout_params_sha256": "cd"},
        )

"""`lens train`: a tiny trained lens beats the logit lens at layer 0, resumes exactly, loads in tuned-lens; the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import normprobe
from normprobe.adapter import DEMO_DIR
from normprobe.lens_training import CHECKPOINT_FILE, LensSettings, LensTrainer, _batches, train_lens
from normprobe.options import Corpus
from normprobe.readouts import make_readout

from .conftest import DOCS, TEST_DEVICE
from .test_cli import invoke
from .test_readouts import tuned_lens  # noqa: F401 - fixture

TINY = dict(steps=6, batch_size=2, seq_len=32, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_adapter):
    return train_lens(demo_adapter, tmp_path_factory.mktemp("trained"), **TINY)


def test_trained_lens_beats_logit_lens_at_layer_0(demo_adapter, trained):
    """Cross-entropy of the next token on documents the lens never saw (it trains on the built-in sample)."""
    losses = {}
    for readout in ("logit", f"tuned:{trained}"):
        table = normprobe.run(demo_adapter, texts=DOCS, probes=["updates"], progress=False, readout=readout)["updates"]
        losses[readout] = table.drop_duplicates("layer").set_index("layer")["lens_loss_mean"]
    tuned = losses[f"tuned:{trained}"]
    assert tuned[0] < losses["logit"][0] - 5.0  # 22 nats -> well under 15 even after six tiny steps
    assert tuned[demo_adapter.n_layers] == pytest.approx(losses["logit"][demo_adapter.n_layers], rel=1e-6)
    written = json.loads((trained / "training.json").read_text())
    assert written["steps"] == 6 and len(written["final_kl_by_layer"]) == demo_adapter.n_layers
    assert not (trained / CHECKPOINT_FILE).exists()


def test_resume_continues_exactly(tmp_path, demo_adapter, trained):
    out = tmp_path / "resumed"
    settings = LensSettings(steps=TINY["steps"], batch_size=TINY["batch_size"], seq_len=TINY["seq_len"])
    trainer = LensTrainer(demo_adapter, Corpus(), settings, out)
    batches = _batches(demo_adapter, Corpus(), settings, skip=0)
    for _ in range(3):  # stopped half-way, as a signal would leave it
        trainer.train_step(next(batches))
        trainer.step += 1
    trainer.save_checkpoint()
    with pytest.raises(normprobe.NormprobeError, match="cannot resume: lr differs"):
        train_lens(demo_adapter, out, resume=True, **{**TINY, "lr": 0.5})
    train_lens(demo_adapter, out, resume=True, **TINY)
    whole = torch.load(trained / "params.pt", weights_only=True)
    resumed = torch.load(out / "params.pt", weights_only=True)
    for key, value in whole.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-7)


def test_trained_lens_loads_in_tuned_lens(demo_adapter, trained, hf_model, tuned_lens):  # noqa: F811
    theirs = tuned_lens.TunedLens.from_model_and_pretrained(hf_model(DEMO_DIR), str(trained))
    readout = make_readout(demo_adapter, f"tuned:{trained}")
    torch.manual_seed(2)
    h = torch.randn(7, demo_adapter.d_model) * 3
    targets = torch.randint(0, demo_adapter.d_vocab, (7,))
    for layer in range(demo_adapter.n_layers):
        with torch.no_grad():
            want = torch.nn.functional.cross_entropy(theirs(h, layer), targets, reduction="none")
        got = readout.loss(h.to(demo_adapter.device), targets.to(demo_adapter.device), layer).cpu()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cli_trains_then_runs_linesearch_with_the_lens(tmp_path, capsys):
    lens = tmp_path / "lens"
    code, out, err = invoke(
        ["lens", "train", "demo", "--out", str(lens), "--steps", "2", "--batch-size", "1", "--seq-len", "16"]
        + ["--device", TEST_DEVICE],
        capsys,
    )
    assert code == 0, err
    # stderr is no terminal here: a loading line, then plain progress lines, never a redrawn bar
    assert "normprobe: loading demo (GPT-2" in err and "normprobe: loaded demo in " in err
    assert "\r" not in err and err.count("training lens: 2 steps of 2 (100%)") == 1
    assert {p.name for p in lens.iterdir()} == {"config.json", "params.pt", "training.json"}
    run = tmp_path / "run"
    code, out, err = invoke(
        [
            "run",
            "demo",
            "--probe",
            "linesearch",
            "--readout",
            f"tuned:{lens}",
            "--alphas",
            "0,1,2",
            "--max-docs",
            "3",
            "--out",
            str(run),
            "--no-progress",
            "--device",
            TEST_DEVICE,
        ],
        capsys,
    )
    assert code == 0, err
    meta = json.loads((run / "run.json").read_text())
    assert meta["readout"]["kind"] == "tuned" and meta["request"]["alphas"] == [0.0, 1.0, 2.0]
    assert "tuned lens" in (run / "report.html").read_text()
    code, out, err = invoke(["lens", "train", "demo", "--out", str(lens), "--steps", "2", "--no-progress"], capsys)
    assert code == 1 and "not empty" in err and len(err.strip().splitlines()) == 1
    code, out, err = invoke(
        ["run", "demo", "--probe", "updates", "--readout", f"tuned:{tmp_path / 'none'}", "--out", str(tmp_path / "x")], capsys
    )
    assert code == 1 and "tuned lens folder not found" in err and not (tmp_path / "x").exists()


def test_a_corpus_smaller_than_a_batch_fills_it_over_cycles(demo_adapter):
    """Two short documents and batches of four windows: each batch cycles through the corpus, never hangs."""
    corpus = Corpus(texts=["def add(a, b):", "return a + b"])
    settings = LensSettings(steps=3, batch_size=4, seq_len=16)
    batches = _batches(demo_adapter, corpus, settings, skip=0)
    first, second = next(batches), next(batches)
    one = demo_adapter.encode("def add(a, b):")
    assert first.tokens.shape[0] == 4 and second.tokens.shape[0] == 4
    # windows come in corpus order, cycling: document 0, 1, 0, 1, ...
    assert first.tokens[0, 1 : 1 + len(one)].tolist() == one and first.tokens[2, 1 : 1 + len(one)].tolist() == one

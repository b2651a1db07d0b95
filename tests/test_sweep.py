"""The outer loop: sweeps over training checkpoints of a tiny model trained inside the fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import normprobe
from normprobe.cli import main
from normprobe.errors import NormprobeError
from normprobe.sweep import plan, step_of

from .conftest import TEST_DEVICE
from .reference import assert_float32_close

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Assignment statements bind names to values.",
    "Every layer adds an update to the residual stream.",
    "A short one.",
]


@pytest.fixture(scope="session")
def trained_checkpoints(tmp_path_factory):
    """A 2-layer GPT-2 trained for 30 steps by the demo's own script, saved at steps 0, 10, 20 and 30."""
    root = tmp_path_factory.mktemp("training")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train_demo.py"),
            "--out",
            str(root / "final"),
            "--checkpoint-dir",
            str(root / "ckpts"),
            "--steps",
            "30",
            "--save-every",
            "10",
            "--n-layer",
            "2",
            "--d-model",
            "32",
            "--vocab-size",
            "300",
            "--batch-size",
            "4",
            "--seq-len",
            "32",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "ckpts"


def _invoke(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code or 0, capsys.readouterr()


def test_training_saved_ordered_checkpoints(trained_checkpoints):
    steps = sorted(step_of(p) for p in trained_checkpoints.iterdir())
    assert steps == [0, 10, 20, 30]
    losses = [json.loads((trained_checkpoints / f"step-{s}" / "training_state.json").read_text())["valid_loss"] for s in steps]
    assert losses[-1] < losses[0]  # it trained


def test_sweep_over_local_checkpoints_equals_single_runs(trained_checkpoints, tmp_path, capsys):
    folders = [trained_checkpoints / f"step-{s}" for s in (20, 0, 10)]  # out of order on purpose
    out = tmp_path / "sweep"
    args = ["--probe", "norms", "--probe", "updates", "--no-progress"] + sum((["--text", t] for t in TEXTS), [])
    code, io = _invoke(["run", *map(str, folders), "--out", str(out), *args], capsys)
    assert code == 0, io.err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["step-0", "step-10", "step-20"]
    evolution = json.loads((out / "evolution.json").read_text())
    assert evolution["steps"] == [0, 10, 20]
    html = (out / "report.html").read_text()
    kinds = pd.read_parquet(out / "claims.parquet")["claim"].nunique()
    assert "normprobe over training" in html and html.count("Plotly.newPlot") == 7 + kinds  # + a figure per claim
    for step in (0, 10, 20):
        single = normprobe.run(
            str(trained_checkpoints / f"step-{step}"), texts=TEXTS, probes=["norms", "updates"], progress=False
        )
        for name in ("norms", "updates"):
            saved = pd.read_parquet(out / f"step-{step}" / f"{name}.parquet")
            assert list(saved.columns) == list(single[name].columns) and len(saved) == len(single[name])
            for column in saved.columns:
                if saved[column].dtype.kind == "f":
                    assert_float32_close(saved[column], single[name][column], what=f"step {step} {name}:{column}")
                else:
                    assert (saved[column].to_numpy() == single[name][column].to_numpy()).all(), (step, name, column)
        loss = single["updates"].query("component == 'output'")["lens_loss_mean"].iloc[0]
        assert evolution["model_loss"][[0, 10, 20].index(step)] == pytest.approx(loss)


def test_resumed_sweep_skips_finished_checkpoints(trained_checkpoints, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["--checkpoints", "local", "--probe", "norms", "--text", TEXTS[0], "--text", TEXTS[1]]
    code, io = _invoke(["run", str(trained_checkpoints), "--out", str(out), "--no-progress", *args], capsys)
    assert code == 0, io.err
    # pretend the sweep stopped during step-20: its folder is incomplete, the others are done
    (out / "step-20" / "run.json").write_text(json.dumps({"status": "interrupted"}))
    before = {s: (out / f"step-{s}" / "run.json").stat().st_mtime_ns for s in (0, 10, 30)}
    code, io = _invoke(["run", str(trained_checkpoints), "--resume", str(out), *args], capsys)
    assert code == 0, io.err
    assert io.out.count("is complete; skipping") == 3
    assert {s: (out / f"step-{s}" / "run.json").stat().st_mtime_ns for s in (0, 10, 30)} == before
    assert json.loads((out / "step-20" / "run.json").read_text())["status"] == "complete"


def test_checkpoint_ordering_and_errors(tmp_path):
    for name, state in (("ckpt-2", None), ("ckpt-10", None), ("final", {"step": 5}), ("checkpoint_100", None)):
        folder = tmp_path / "ckpts" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        if state:
            (folder / "training_state.json").write_text(json.dumps(state))
    assert [c.step for c in plan([str(tmp_path / "ckpts")], "local")] == [2, 5, 10, 100]
    (tmp_path / "ckpts" / "mystery").mkdir()
    (tmp_path / "ckpts" / "mystery" / "config.json").write_text("{}")
    with pytest.raises(NormprobeError, match="cannot tell the training step"):
        plan([str(tmp_path / "ckpts")], "local")


def test_hub_checkpoint_specs_resolve_offline():
    assert [c.checkpoint_value for c in plan(["pythia-70m"], "0,512,1000")] == [0, 512, 1000]
    assert len(plan(["EleutherAI/pythia-160m"], "all")) == 154
    assert [c.step for c in plan(["pythia-70m"], "every:50000")] == [0, 50000, 100000]
    with pytest.raises(NormprobeError, match="has no checkpoint at step 3"):
        plan(["pythia-70m"], "3")
    with pytest.raises(NormprobeError, match="publishes no training checkpoints"):
        plan(["gpt2"], "all")


@pytest.fixture(scope="module")
def untrained_then_demo(tmp_path_factory):
    """step-0: a random-init model of the demo's architecture (its config and tokenizer); step-1500: the demo itself
    (trained for 1,500 steps, as its training_state.json says)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    demo = Path(normprobe.__file__).parent / "demo"
    root = tmp_path_factory.mktemp("untrained-then-trained")
    shutil.copytree(demo, root / "step-1500")
    torch.manual_seed(1234)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(demo)).save_pretrained(root / "step-0")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):  # one architecture, one tokenizer
        shutil.copy(demo / name, root / "step-0" / name)
    return root


def test_sweep_claims_by_step_name_the_first_step_each_holds(untrained_then_demo, tmp_path, capsys):
    from normprobe import RunResult
    from normprobe.corpus import pydoc_topic_documents
    from normprobe.report.common import esc
    from normprobe.sweep import Sweep

    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(d.replace("\n", " ")[:200] for d in pydoc_topic_documents()[:24]) + "\n")
    out = tmp_path / "sweep"
    argv = ["run", str(untrained_then_demo / "step-0"), str(untrained_then_demo / "step-1500"), "--out", str(out)]
    argv += ["--input", str(docs), "--seq-len", "24", "--probe", "norms", "--probe", "updates"]
    code, io = _invoke([*argv, "--baseline", "random-init", "--baseline-seeds", "1", "--device", TEST_DEVICE], capsys)
    assert code == 0, io.err
    # the random-init baseline ran once, with step 0, and step 1500 reuses its tables
    assert io.err.count("normprobe: baseline random-init") == 1
    reused = json.loads((out / "step-1500" / "run.json").read_text())["baselines"]["random-init"]
    assert reused["reused_from"] == "step-0"
    for table in RunResult.load(out / "step-0").baselines["random-init"]:
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / "step-1500" / "baselines" / "random-init" / f"{table}.parquet"),
            pd.read_parquet(out / "step-0" / "baselines" / "random-init" / f"{table}.parquet"),
        )
    # claims.parquet: every step's claims, equal to those its own folder recomputes
    claims = pd.read_parquet(out / "claims.parquet")
    assert sorted(set(claims["step"])) == [0, 1500]
    for step in (0, 1500):
        mine = claims[claims["step"] == step].drop(columns="step").reset_index(drop=True)
        want = RunResult.load(out / f"step-{step}").claims.reset_index(drop=True)
        pd.testing.assert_frame_equal(mine[want.columns], want)
    key = ["probe", "claim", "layer", "component"]
    last = claims[claims["step"] == 1500][[*key, "verdict"]]
    wide = last.merge(claims[claims["step"] == 0][[*key, "verdict"]], on=key, how="left", suffixes=("_last", "_first"))
    learned = wide[(wide["verdict_last"] == "holds") & (wide["verdict_first"] != "holds")]
    assert len(learned) >= 1, claims[["step", *key, "value", "ci_low", "ci_high", "verdict", "note"]].to_string()
    first = Sweep(out).first_holds()
    html = (out / "report.html").read_text()
    for row in learned.to_dict("records"):
        found = first[(first["claim"] == row["claim"]) & (first["component"] == row["component"])]
        found = found[found["layer"].isna()] if pd.isna(row["layer"]) else found[found["layer"] == row["layer"]]
        assert list(found["first_holds"]) == [1500] and list(found["holds_at_last"]) == [True]
        where = " ".join(([] if pd.isna(row["layer"]) else [f"layer {int(row['layer'])}"]) + [row["component"]])
        assert f"<td>{esc(row['probe'] + ': ' + row['claim'])}</td><td>{esc(where)}</td><td>1500</td>" in html
    held = int(first["first_holds"].notna().sum())
    assert f"claims over training: {held} of {len(first)} hold at some step" in io.out
    assert io.out.count(": holds from step ") == min(held, 15) and ": holds from step 1500" in io.out

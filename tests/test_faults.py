"""Long runs that survive faults: signals, resume, failing probes, partial folders, checkpoint round trips."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings

from normprobe.cli import main
from normprobe.stats import GroupedMoments

RUN = [
    sys.executable,
    "-m",
    "normprobe",
    "run",
    "demo",
    "--probe",
    "norms",
    "--probe",
    "updates",
    "--max-docs",
    "60",  # 60 one-window batches: the signal lands at the first checkpoint (batch 3), long before the end
    "--batch-size",
    "1",
    "--no-progress",
]


def _tables(folder):
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(RUN + ["--out", str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_then_resume_equals_uninterrupted(sig, tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        RUN + ["--out", str(out), "--checkpoint-every", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted" and signal.Signals(sig).name in meta["status_reason"]
    *_, said, advice = err.strip().splitlines()
    assert said.startswith(f"normprobe: interrupted: stopped by {signal.Signals(sig).name} after "), err
    assert advice.startswith("normprobe: to continue: normprobe run demo "), err
    assert not (out / "report.html").exists()

    # the advised command, as printed, continues the run
    command = shlex.split(advice.removeprefix("normprobe: to continue: "))
    assert command[-2:] == ["--resume", str(out)] and "--out" not in command
    resumed = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["resumed"] == 1
    assert not (out / "checkpoint.pt").exists()
    whole = json.loads((uninterrupted / "run.json").read_text())
    assert meta["n_tokens"] == whole["n_tokens"] and meta["n_batches"] == whole["n_batches"]
    got, want = _tables(out), _tables(uninterrupted)
    assert got.keys() == want.keys()
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True)
    assert meta["claims"] == whole["claims"]


def _invoke(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    return exc.value.code or 0, capsys.readouterr().err


FLAKY = '''
from normprobe.probes.norms import NormsProbe

class FlakyProbe(NormsProbe):
    name = "flaky"
    calls = 0

    def update(self, activations, batch):
        FlakyProbe.calls += 1
        if FlakyProbe.calls == 5:
            raise ValueError("boom at batch 5")
        super().update(activations, batch)
'''


def test_failing_probe_marks_run_failed_and_keeps_checkpoint(tmp_path, capsys):
    probe_file = tmp_path / "flaky.py"
    probe_file.write_text(FLAKY)
    out = tmp_path / "run"
    code, err = _invoke(
        [
            "run",
            "demo",
            "--probe",
            "updates",
            "--probe",
            str(probe_file),
            "--batch-size",
            "1",
            "--max-docs",
            "20",
            "--checkpoint-every",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 1
    assert err.strip().splitlines() == ["normprobe: error: probe 'flaky' raised ValueError: boom at batch 5"]
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "failed" and "flaky" in meta["status_reason"] and "boom" in meta["status_reason"]
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["progress"]["batches"] == 4 and set(state["probes"]) == {"updates", "flaky"}
    assert state["probes"]["updates"]["lens"]["count"].sum() > 0
    code, err = _invoke(["report", str(out)], capsys)
    assert code == 0 and "is failed, not complete" in err
    assert "Partial run" in (out / "report.html").read_text()


def test_resume_refuses_a_different_request(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    request = {
        "model": "demo",
        "resolved_model": "x",
        "revision": None,
        "dtype": "float32",
        "probe_specs": ["norms"],
        "corpus": "texts",
        "corpus_sha256": "0",
        "seq_len": None,
        "batch_size": None,
        "prepend_bos": True,
        "layers": None,
        "max_docs": 3,
        "max_tokens": None,
    }
    (out / "run.json").write_text(json.dumps({"status": "interrupted", "request": request}))
    torch.save({"probes": {}, "progress": {}}, out / "checkpoint.pt")
    code, err = _invoke(["run", "demo", "--text", "hello", "--resume", str(out), "--no-progress"], capsys)
    assert code == 1 and "cannot resume:" in err and "differs" in err
    (out / "run.json").write_text(json.dumps({"status": "complete", "request": request}))
    code, err = _invoke(["run", "demo", "--resume", str(out)], capsys)
    assert code == 1 and "already complete" in err


values = st.lists(st.tuples(st.integers(0, 4), st.floats(-1e6, 1e6, allow_nan=False, width=32)), min_size=1, max_size=60)


def _moments(pairs):
    m = GroupedMoments(5)
    if pairs:
        groups = torch.tensor([g for g, _ in pairs])
        m.add(groups, torch.tensor([v for _, v in pairs], dtype=torch.float32))
    return m


def _assert_same(a, b, rtol=1e-9):
    torch.testing.assert_close(a.count, b.count, rtol=0, atol=0)
    torch.testing.assert_close(a.mean(), b.mean(), rtol=rtol, atol=1e-6, equal_nan=True)  # NaN: an empty group
    torch.testing.assert_close(a.std(), b.std(), rtol=1e-6, atol=1e-3, equal_nan=True)
    torch.testing.assert_close(a.minimum, b.minimum)
    torch.testing.assert_close(a.maximum, b.maximum)


@settings(max_examples=60, deadline=None)
@given(values, values, values)
def test_merge_is_associative_and_commutative(x, y, z):
    left = _moments(x)
    left.merge(_moments(y))
    left.merge(_moments(z))
    right = _moments(y)
    yz = _moments(z)
    right.merge(_moments(x))  # y + x
    yz.merge(right)  # z + (y + x)
    _assert_same(left, yz)
    whole = _moments(x + y + z)
    _assert_same(left, whole)


@settings(max_examples=60, deadline=None)
@given(values, st.booleans())
def test_state_round_trip_changes_nothing(x, extremes):
    m = GroupedMoments(5, track_extremes=extremes)
    m.add(torch.tensor([g for g, _ in x]), torch.tensor([v for _, v in x]))
    path_state = m.state_dict()
    import io

    buffer = io.BytesIO()
    torch.save(path_state, buffer)
    buffer.seek(0)
    copy = GroupedMoments(5, track_extremes=extremes)
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    for key, value in m.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value)


def test_nonfinite_values_are_counted_not_averaged():
    m = GroupedMoments(2)
    m.add(torch.tensor([0, 0, 0, 1]), torch.tensor([1.0, float("inf"), 3.0, float("nan")]))
    assert m.count.tolist() == [2, 0] and m.nonfinite.tolist() == [1, 1]
    assert m.mean()[0] == 2.0 and np.isclose(float(m.std()[0]), 1.0)

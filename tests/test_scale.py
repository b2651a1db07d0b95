"""Scale-out: torchrun on the CPU (gloo) and --shard/merge equal a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from normprobe.cli import main

from .conftest import TEST_DEVICE
from .reference import assert_float32_close

# each rank takes one GPU: on two GPUs the ranks' tables must equal the single-GPU run's; with fewer, gloo on the CPU
TWO_GPUS = TEST_DEVICE.startswith("cuda") and torch.cuda.device_count() >= 2
RANKS_ON = "cuda" if TWO_GPUS else "cpu"
RANK_ENV = {**os.environ, "NORMPROBE_BACKEND": "nccl" if TWO_GPUS else "gloo"}
ARGS = ["demo", "--probe", "norms", "--probe", "updates", "--max-docs", "24", "--batch-size", "4", "--no-progress"]
ARGS += ["--device", RANKS_ON]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "normprobe", "run"]


def _invoke(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code or 0, capsys.readouterr().err


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", *ARGS, "--out", str(out)])
    assert exc.value.code == 0
    return out


def assert_same_run(got, want):
    for path in sorted(want.glob("*.parquet")):
        a, b = pd.read_parquet(path), pd.read_parquet(got / path.name)
        assert list(a.columns) == list(b.columns) and len(a) == len(b), path.name
        for column in a.columns:
            if column == "count" or a[column].dtype.kind in "iuOT":
                assert (a[column].to_numpy() == b[column].to_numpy()).all(), (path.name, column)
            else:
                # ranks run fewer threads than the single process, so float32 sums take another order
                assert_float32_close(b[column], a[column], what=f"{path.name}:{column}")
    meta_a, meta_b = json.loads((want / "run.json").read_text()), json.loads((got / "run.json").read_text())
    for key in ("n_tokens", "n_windows", "n_docs"):
        assert meta_a[key] == meta_b[key], key


def test_torchrun_two_processes_equal_single(single, tmp_path):
    out = tmp_path / "ranks"
    proc = subprocess.run(TORCHRUN + ARGS + ["--out", str(out)], capture_output=True, text=True, timeout=300, env=RANK_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert_same_run(out, single)


FAILS_ON_RANK_1 = '''
import os
from normprobe.probes.norms import NormsProbe

class RankOneFails(NormsProbe):
    name = "rank_one_fails"

    def update(self, activations, batch):
        if os.environ.get("RANK") == "1":
            raise RuntimeError("disk on fire")
        super().update(activations, batch)
'''


def test_failing_rank_is_named_not_hung(tmp_path):
    probe = tmp_path / "fails.py"
    probe.write_text(FAILS_ON_RANK_1)
    out = tmp_path / "out"
    proc = subprocess.run(
        TORCHRUN + ["demo", "--probe", str(probe), "--max-docs", "12", "--no-progress", "--device", RANKS_ON, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=RANK_ENV,
    )
    assert proc.returncode != 0
    assert (
        "normprobe: error: rank 1 failed: RuntimeError: disk on fire" in proc.stderr
        or "normprobe: error: probe 'rank_one_fails' raised RuntimeError: disk on fire" in proc.stderr
    )
    assert "rank 1 failed" in proc.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_shards_then_merge_equal_single(single, tmp_path, capsys):
    folders = []
    for i in range(3):
        folders.append(tmp_path / f"shard{i}")
        code, err = _invoke(["run", *ARGS, "--shard", f"{i}/3", "--out", str(folders[-1])], capsys)
        assert code == 0, err
        # each shard counts its own documents: 24 sample documents, every third one
        assert json.loads((folders[-1] / "run.json").read_text())["n_docs"] == 8
    code, err = _invoke(["merge", str(folders[0]), str(folders[2]), "--out", str(tmp_path / "bad")], capsys)
    assert code == 1 and "shards must be 0/N..N-1/N once each" in err
    code, err = _invoke(["merge", *map(str, folders), "--out", str(tmp_path / "merged")], capsys)
    assert code == 0, err
    assert_same_run(tmp_path / "merged", single)
    merged = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert merged["n_docs"] == 24 and merged["request"]["shard"] is None and merged["options"]["shard"] is None


def test_max_tokens_refused_with_shards(tmp_path, capsys):
    code, err = _invoke(["run", "demo", "--shard", "0/2", "--max-tokens", "100", "--out", str(tmp_path / "x")], capsys)
    assert code == 1 and "--max-tokens cannot be split" in err
    code, err = _invoke(["run", "demo", "--shard", "2/2", "--out", str(tmp_path / "x")], capsys)
    assert code == 1 and "invalid --shard '2/2'" in err

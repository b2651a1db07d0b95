"""Saved tables are checked before they are believed, and absurd input stays bounded (issue 32).

One test (or more) per numbered item of the issue. Each builds its payload here and asserts the exact
outcome: a correct result, or exit 1 with one line on stderr and nothing saved before changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from .conftest import DOCS, TEST_DEVICE
from .test_saved_data import cli, make_lens, one_line

SMALL = dict(texts=DOCS, seq_len=16, batch_size=2, progress=False, plotlyjs="cdn", replicates=20)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes (links as their targets' names): what 'unchanged' means."""
    return {
        str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


def redigest(folder: Path, name: str, kind: str | None = None) -> None:
    """Record a changed table's sha256 in run.json, as a tamperer who knows the format would."""
    meta = json.loads((folder / "run.json").read_text())
    where = meta if kind is None else meta["baselines"][kind]
    path = folder / (f"baselines/{kind}/" if kind else "") / f"{name}.parquet"
    where["table_sha256"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "run.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_adapter):
    """A run with the shuffled and no-bos baselines, another over other texts, and two shards of the first."""
    from normprobe.api import run_to_folder

    root = tmp_path_factory.mktemp("checked")
    options = dict(probes=["norms"], baselines=["shuffled", "no-bos"], **SMALL)
    main = run_to_folder(demo_adapter, root / "main", **options)
    other = run_to_folder(demo_adapter, root / "other", **{**options, "texts": DOCS[:3]})
    shards = [run_to_folder(demo_adapter, root / f"shard{i}", shard=(i, 2), **options) for i in range(2)]
    return main, other, shards


# -- 1. an empty cell is never a zero ---------------------------------------------------------------
def test_a_layer_non_finite_at_every_token_is_nan_recorded_and_undetermined(demo_adapter, monkeypatch, capsys):
    from normprobe.probes.updates import UpdatesProbe
    from normprobe.runner import run

    original = UpdatesProbe._loss_grad_and_steps

    def overflowing_at_layer_2(self, h, deltas, targets, layer):
        loss, grad, steps = original(self, h, deltas, targets, layer)
        if layer == 2:  # as a lens that overflows there would: every token's readout is infinite
            return loss * float("inf"), grad * float("nan"), [s * float("inf") for s in steps]
        return loss, grad, steps

    monkeypatch.setattr(UpdatesProbe, "_loss_grad_and_steps", overflowing_at_layer_2)
    result = run(demo_adapter, DOCS, ["updates"], seq_len=16, batch_size=2, replicates=20, progress=False)
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "non-finite" in line]
    assert len(said) == 1 and "updates layer(s) 2" in said[0], err
    assert result.meta["nonfinite_layers"]["updates"] == [2]
    updates = result.tables["updates"]
    steps = updates[updates["component"] != "output"]
    at_2 = steps[steps["layer"] == 2]
    assert (at_2["count"] == 0).all() and (at_2["n_nonfinite"] > 0).all()
    # what the readout gave at layer 2 is NaN, never 0.0 (the update's own size, read without it, stays)
    readout_means = ["lens_loss_mean", "descent_cos_mean", "descent_cos_std", "step_eta_mean", "predicted_change_mean"]
    assert at_2[readout_means].isna().all().all()
    assert np.isfinite(at_2["update_norm_mean"]).all()
    for name, frame in result.tables.items():  # no table has a count-0 row holding a mean of exactly 0.0
        if "count" in frame.columns:
            means = [c for c in frame.columns if c.endswith("_mean") or c == "mean"]
            assert not (frame.loc[frame["count"] == 0, means] == 0.0).any().any(), name
    assert np.isfinite(steps[steps["layer"] != 2]["descent_cos_mean"]).all()
    claims = result.claims
    mine = claims[(claims["layer"] == 2) & claims["claim"].isin(["descent", "lens_loss_drop"])]
    assert len(mine) and (mine["verdict"] == "undetermined").all()
    assert mine["note"].str.contains("every value read at layer 2 was non-finite").all()
    assert json.loads(result.run_json())["nonfinite_layers"] == {"updates": [2]}


def test_grouped_moments_of_an_empty_group_are_nan():
    from normprobe.stats import GroupedMoments, mean_or_nan

    moments = GroupedMoments(3)
    moments.add(torch.tensor([0, 0, 2]), torch.tensor([1.0, 3.0, float("inf")]))
    assert moments.mean().tolist()[0] == 2.0 and moments.std().tolist()[0] == 1.0
    assert all(v != v for v in moments.mean().tolist()[1:]) and all(v != v for v in moments.std().tolist()[1:])
    assert np.isnan(mean_or_nan(np.array([5.0, 0.0]), np.array([0, 0]))).all()


# -- 2. lenses are checked as they will be used --------------------------------------------------------
def _lens_run(lens: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    return cli(
        ["run", "demo", "--probe", "updates", "--readout", f"tuned:{lens}", "--text", "a b c", "--out", str(out)]
        + ["--no-progress", "--device", TEST_DEVICE, "--replicates", "20", *extra],
        capsys,
    )


def test_a_lens_is_checked_in_the_dtype_the_readout_computes_in(demo_adapter, tmp_path, capsys):
    def float64_huge(state):
        state = {k: v.double() for k, v in state.items()}
        state["2.weight"][3, 5] = 1e300  # finite in float64, infinite in float32
        return state

    def all_huge(state):
        return {k: torch.full_like(v, 1e30) for k, v in state.items()}  # finite in float32, overflows every readout

    for name, change, phrase in [
        ("f64", float64_huge, "2.weight holds 1 values that are infinite in float32"),
        ("huge", all_huge, "0.weight holds a weight of magnitude 1e+30, beyond the 1e+06"),
    ]:
        out = tmp_path / f"run-{name}"
        code, err = _lens_run(make_lens(tmp_path / name, demo_adapter, change), out, capsys)
        assert code == 1 and phrase in one_line(err), (name, err)
        assert not out.exists()


def test_a_lens_for_another_model_of_the_same_shape_needs_the_override(demo_adapter, tmp_path, capsys):
    from normprobe.baselines import random_init_adapter
    from normprobe.readouts.tuned import new_translators, save_lens

    twin = random_init_adapter(demo_adapter.hf_model.config, demo_adapter.tokenizer, 7, "twin", "cpu", "float32")
    lens = save_lens(tmp_path / "twin-lens", new_translators(twin.d_model, twin.n_layers), twin)
    code, err = _lens_run(lens, tmp_path / "refused", capsys)
    assert code == 1 and "was trained for another model" in one_line(err) and "--allow-foreign-lens" in err
    assert not (tmp_path / "refused").exists()
    unmarked = make_lens(tmp_path / "unmarked", demo_adapter)
    config = json.loads((unmarked / "config.json").read_text())
    (unmarked / "config.json").write_text(json.dumps({**config, "unembed_hash": None}))
    code, err = _lens_run(unmarked, tmp_path / "unmarked-run", capsys)
    assert code == 1 and "records no model identity" in one_line(err)
    out = tmp_path / "allowed"
    code, err = _lens_run(lens, out, capsys, "--allow-foreign-lens")
    assert code == 0, err
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["readout"]["foreign_lens_allowed"] is True
    assert meta["request"]["allow_foreign_lens"] is True


# -- 3. every table that feeds a claim is verified on load --------------------------------------------------
def _swap_kinds(folder: Path, other: Path) -> None:
    b = folder / "baselines"
    os.rename(b / "shuffled", b / "x")
    os.rename(b / "no-bos", b / "shuffled")
    os.rename(b / "x", b / "no-bos")


def _cut_replicates(folder: Path, other: Path) -> None:
    path = folder / "norms_replicates.parquet"
    table = pd.read_parquet(path)
    table[table["replicate"] < 10].to_parquet(path, index=False)
    redigest(folder, "norms_replicates")


def _double_replicates(folder: Path, other: Path) -> None:
    path = folder / "baselines" / "shuffled" / "norms_replicates.parquet"
    table = pd.read_parquet(path)
    pd.concat([table, table]).to_parquet(path, index=False)
    redigest(folder, "norms_replicates", "shuffled")


def _foreign_baseline(folder: Path, other: Path) -> None:
    shutil.rmtree(folder / "baselines" / "shuffled")
    shutil.copytree(other / "baselines" / "shuffled", folder / "baselines" / "shuffled")
    meta = json.loads((folder / "run.json").read_text())  # its digests too, so only the identity tells
    meta["baselines"]["shuffled"]["table_sha256"] = json.loads((other / "run.json").read_text())["baselines"]["shuffled"][
        "table_sha256"
    ]
    (folder / "run.json").write_text(json.dumps(meta))


def _link_out(folder: Path, other: Path) -> None:
    (folder / "norms.parquet").unlink()
    os.symlink(other / "norms.parquet", folder / "norms.parquet")


def _edited_table(folder: Path, other: Path) -> None:
    path = folder / "baselines" / "no-bos" / "norms.parquet"
    table = pd.read_parquet(path)
    table["mean"] = table["mean"] * 2
    table.to_parquet(path, index=False)


TAMPERED = {
    "swapped kinds": (_swap_kinds, "baselines/shuffled/baseline.json belongs to another baseline or run: its kind ('no-bos')"),
    "cut replicates": (_cut_replicates, "norms_replicates.parquet is damaged or not this run's: it does not hold replicates"),
    "doubled replicates": (_double_replicates, "shuffled/norms_replicates.parquet is damaged or not this run's"),
    "another run's baseline": (_foreign_baseline, "belongs to another baseline or run: its corpus (sha256)"),
    "link out": (_link_out, "norms.parquet links outside its folder"),
    "edited table": (_edited_table, "no-bos/norms.parquet is not the table this run wrote"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_tables_and_baselines_are_one_line_in_report_and_compare(case, runs, tmp_path, capsys):
    from normprobe import RunResult
    from normprobe.errors import NormprobeError

    main, other, _ = runs
    folder = tmp_path / "run"
    shutil.copytree(main, folder)
    change, phrase = TAMPERED[case]
    change(folder, other)
    before = snapshot(folder)
    with pytest.raises(NormprobeError) as info:
        RunResult.load(folder)
    assert phrase in str(info.value) and "\n" not in str(info.value)
    code, err = cli(["report", str(folder)], capsys)
    assert code == 1 and phrase in one_line(err)
    code, err = cli(["compare", str(main), str(folder), "--out", str(tmp_path / "cmp")], capsys)
    assert code == 1 and phrase in one_line(err)
    assert snapshot(folder) == before and not (tmp_path / "cmp").exists()


def test_an_untampered_run_loads_with_its_baselines(runs):
    from normprobe import RunResult

    main, _, _ = runs
    loaded = RunResult.load(main)
    assert sorted(loaded.baselines) == ["no-bos", "shuffled"]
    for kind in loaded.baselines:
        identity = json.loads((main / "baselines" / kind / "baseline.json").read_text())
        assert identity["kind"] == kind and identity["model"] == "demo"


# -- 4. a shard's baseline state names its kind; 3. merge checks the tables too --------------------------------
@pytest.mark.parametrize(
    "source, phrase",
    [
        ("baselines/no-bos/state.pt", "holds the statistics of the 'no-bos' pass, not of the 'shuffled' pass"),
        ("state.pt", "holds the statistics of the 'model' pass, not of the 'shuffled' pass"),
    ],
)
def test_merge_refuses_a_baseline_state_of_another_pass(source, phrase, runs, tmp_path, capsys):
    _, _, shards = runs
    copies = [tmp_path / s.name for s in shards]
    for shard, copy in zip(shards, copies):
        shutil.copytree(shard, copy)
    shutil.copy(copies[1] / source, copies[1] / "baselines" / "shuffled" / "state.pt")
    code, err = cli(["merge", *map(str, copies), "--out", str(tmp_path / "merged")], capsys)
    assert code == 1 and phrase in one_line(err)
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_a_shard_with_a_tampered_replicate_table(runs, tmp_path, capsys):
    _, _, shards = runs
    copies = [tmp_path / s.name for s in shards]
    for shard, copy in zip(shards, copies):
        shutil.copytree(shard, copy)
    _cut_replicates(copies[0], copies[1])
    code, err = cli(["merge", *map(str, copies), "--out", str(tmp_path / "merged")], capsys)
    assert code == 1 and "norms_replicates.parquet is damaged or not this run's" in one_line(err)


# -- 5. overwrite is atomic -----------------------------------------------------------------------------
def _trace_args(out: Path, *extra: str) -> list[str]:
    return ["trace", "demo", "--text", "hello world", "--out", str(out), "--no-progress", "--device", TEST_DEVICE, *extra]


def test_trace_overwrite_replaces_a_run_folder_whole_or_leaves_it_whole(runs, tmp_path, capsys, monkeypatch):
    from normprobe.tracing import Trace

    main, _, _ = runs
    folder = tmp_path / "run"
    shutil.copytree(main, folder)
    before = snapshot(folder)

    def disk_full(self, path, plotlyjs="inline"):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Trace, "to_html", disk_full)
        code, err = cli(_trace_args(folder, "--overwrite"), capsys)
    assert code == 1 and "No space left on device" in one_line(err)
    assert snapshot(folder) == before  # the old folder whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no half-written sibling left
    code, err = cli(_trace_args(folder, "--overwrite"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["run.json", "trace.html", "trace.parquet"]  # nothing of the run
    assert json.loads((folder / "run.json").read_text())["kind"] == "trace"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _run_args(out: Path, *extra: str) -> list[str]:
    return ["run", "demo", "--probe", "norms", "--text", "a b c d", "--text", "e f g", "--seq-len", "16"] + [
        "--out",
        str(out),
        "--no-progress",
        "--plotlyjs",
        "cdn",
        "--device",
        TEST_DEVICE,
        *extra,
    ]


def _disk_full_on_save(patch) -> None:
    from normprobe import RunResult

    def disk_full(self, out, report, plotlyjs):
        (Path(out) / "norms.parquet").write_bytes(b"half")  # a table half-written before the disk filled
        raise OSError(28, "No space left on device")

    patch.setattr(RunResult, "_write", disk_full)


def test_run_overwrite_leaves_the_old_run_whole_until_the_new_one_is_complete(runs, tmp_path, capsys, monkeypatch):
    main, _, _ = runs
    folder = tmp_path / "run"
    shutil.copytree(main, folder)
    (folder / "notes.txt").write_text("the user's own file, from before")
    before = snapshot(folder)
    with monkeypatch.context() as patch:
        _disk_full_on_save(patch)
        code, err = cli(_run_args(folder, "--overwrite"), capsys)
    line = one_line(err)
    assert code == 1 and "No space left on device" in line and f"{folder} is unchanged" in line
    assert snapshot(folder) == before  # neither the failed run's status nor its half table reached the old folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no checkpoint was due: nothing kept beside it

    code, err = cli(_run_args(folder, "--overwrite", "--replicates", "30"), capsys)
    assert code == 0, err
    meta = json.loads((folder / "run.json").read_text())
    assert meta["status"] == "complete" and meta["request"]["replicates"] == 30
    assert not (folder / "notes.txt").exists() and not (folder / "baselines").exists()  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_overwrite_that_stops_after_a_checkpoint_keeps_it_beside_the_old_run(runs, tmp_path, capsys, monkeypatch):
    main, _, _ = runs
    folder = tmp_path / "run"
    shutil.copytree(main, folder)
    before = snapshot(folder)
    with monkeypatch.context() as patch:
        _disk_full_on_save(patch)
        code, err = cli(_run_args(folder, "--overwrite", "--checkpoint-every", "1"), capsys)
    line = one_line(err)
    assert snapshot(folder) == before
    [kept] = [p for p in tmp_path.iterdir() if p.name != "run"]
    assert code == 1 and line.endswith(f"{folder} is unchanged and the new run is in {kept}")
    assert json.loads((kept / "run.json").read_text())["status"] == "failed" and (kept / "checkpoint.pt").is_file()
    resume = ["run", "demo", "--probe", "norms", "--text", "a b c d", "--text", "e f g", "--seq-len", "16"]
    code, err = cli([*resume, "--resume", str(kept), "--no-progress", "--plotlyjs", "cdn", "--device", TEST_DEVICE], capsys)
    assert code == 0, err
    assert json.loads((kept / "run.json").read_text())["status"] == "complete"
    assert snapshot(folder) == before


def test_lens_train_overwrite_leaves_the_old_lens_whole(tmp_path, capsys, monkeypatch, demo_adapter):
    import normprobe.readouts.tuned as tuned

    lens = make_lens(tmp_path / "lens", demo_adapter)
    before = snapshot(lens)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    args = ["lens", "train", "demo", "--out", str(lens), "--steps", "2", "--batch-size", "1", "--seq-len", "16"]
    args += ["--text", "a b c d e", "--no-progress", "--device", TEST_DEVICE, "--overwrite"]
    with monkeypatch.context() as patch:
        patch.setattr(tuned, "save_lens", disk_full)
        code, err = cli(args, capsys)
    line = one_line(err)
    assert snapshot(lens) == before
    # the finished training is kept resumable beside the old lens, and the line says where
    [kept] = [p for p in tmp_path.iterdir() if p.name not in ("lens", "zero-lens")]
    assert code == 1 and "No space left on device" in line
    assert line.endswith(f"{lens} is unchanged and the new training is in {kept}")
    assert sorted(p.name for p in kept.iterdir() if p.name != ".normprobe.lock") == ["lens_checkpoint.pt"]
    code, err = cli(args, capsys)  # again, with room: the old lens is replaced whole
    assert code == 0, err
    assert sorted(p.name for p in lens.iterdir()) == ["config.json", "params.pt", "training.json"]
    assert snapshot(lens) != before


def test_a_run_of_two_models_with_overwrite_replaces_its_folder_whole(runs, tmp_path, capsys, monkeypatch):
    import normprobe.runner as runner

    main, _, _ = runs
    folder = tmp_path / "both"
    shutil.copytree(main, folder)
    before = snapshot(folder)
    args = ["run", "demo", "demo", "--probe", "norms", "--text", "a b c", "--text", "d e", "--seq-len", "16"]
    args += ["--out", str(folder), "--overwrite", "--no-progress", "--plotlyjs", "cdn", "--device", TEST_DEVICE]
    calls = []
    real = runner.Runner.execute

    def second_fails(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    with monkeypatch.context() as patch:
        patch.setattr(runner.Runner, "execute", second_fails)
        code, err = cli(args, capsys)
    assert code == 1 and "No space left on device" in one_line(err) and len(calls) == 2
    assert snapshot(folder) == before  # the first model's finished run never reached the old folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both"]
    code, err = cli(args, capsys)
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["1-demo", "2-demo", "claims.parquet", "report.html"]


def test_compare_overwrite_into_a_run_folder_replaces_it_whole(runs, tmp_path, capsys):
    main, other, _ = runs
    folder = tmp_path / "run"
    shutil.copytree(main, folder)
    code, err = cli(["compare", str(main), str(other), "--out", str(folder)], capsys)
    assert code == 1 and "exists and is not empty; pass --overwrite" in one_line(err)
    code, err = cli(["compare", str(main), str(other), "--out", str(folder), "--overwrite", "--plotlyjs", "cdn"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["claims.parquet", "report.html"]  # nothing of the run is left


# -- 6. absurd sizes are refused before they allocate ----------------------------------------------------------
def test_replicates_beyond_the_memory_budget_are_refused_before_allocating(tmp_path):
    from normprobe.memory import replicate_bound

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "normprobe", "run", "demo", "--probe", "norms", "--replicates", "10000000", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert proc.returncode == 1 and "--replicates 10000000 needs more memory than the run may use" in one_line(proc.stderr)
    assert not out.exists()
    assert peak_kib < 3 << 20  # no child of this test process grew past 3 GiB (it took 21 GB before)
    bound, _ = replicate_bound(4, 1, 1 << 30)
    assert 200 < bound < 10_000_000  # the default fits a 1 GiB budget; ten million does not


def test_files_read_from_a_folder_are_size_limited_and_regular(runs, tmp_path, capsys):
    main, _, _ = runs
    zero = tmp_path / "zero"
    shutil.copytree(main, zero)
    (zero / "run.json").unlink()
    os.symlink("/dev/zero", zero / "run.json")
    huge = tmp_path / "huge"
    shutil.copytree(main, huge)
    with open(huge / "run.json", "r+b") as fh:
        fh.truncate(65 << 20)  # sparse: 65 MiB that take no disk
    lens = tmp_path / "lens"
    lens.mkdir()
    (lens / "params.pt").write_bytes(b"")
    os.symlink("/dev/zero", lens / "config.json")
    for argv, phrase in [
        (["report", str(zero)], "run.json is not a regular file"),
        (["report", str(huge)], f"run.json is {65 << 20} bytes, more than the {64 << 20} normprobe reads"),
        (
            ["run", "demo", "--readout", f"tuned:{lens}", "--out", str(tmp_path / "x")],
            "has no config.json",
        ),  # a device is no file
    ]:
        code, err = cli(argv, capsys)
        assert code == 1 and phrase in one_line(err), (argv, err)


@pytest.fixture(scope="module")
def trace_folder(tmp_path_factory, demo_adapter):
    from normprobe.tracing import trace_documents

    folder = tmp_path_factory.mktemp("trace") / "trace"
    traced = trace_documents(demo_adapter, ["hello world", "a b"], readout="logit", top_k=3, max_tokens=None, prepend_bos=True)
    traced.save(folder)
    return folder


def _tampered_trace(folder: Path, tmp_path: Path, name: str, meta_change=None, table_change=None) -> Path:
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    if meta_change is not None:
        meta = json.loads((copy / "run.json").read_text())
        (copy / "run.json").write_text(json.dumps(meta_change(meta)) if callable(meta_change) else meta_change)
    if table_change is not None:
        table = pd.read_parquet(copy / "trace.parquet")
        table_change(table).to_parquet(copy / "trace.parquet", index=False)
    return copy


def _set(column, value, row=0):
    def change(table):
        table[column] = table[column].astype(object) if isinstance(value, str) else table[column]
        table.loc[row, column] = value
        return table

    return change


TRACES = {  # 6 and 7: a tampered trace is one line, and never a grid of tens of GB
    "position 10^9": (None, _set("position", 10**9), "a position lies beyond its document's tokens"),
    "n_layers 10^8": (lambda m: {**m, "n_layers": 10**8}, None, "it has 50 rows, not (n_layers + 1) x n_tokens"),
    "negative layer": (None, _set("layer", -1), "a doc or layer lies outside"),
    "layer out of range": (None, _set("layer", 5), "a doc or layer lies outside"),
    "layer as text": (None, lambda t: t.assign(layer=t["layer"].astype(str)), "its layer column holds"),
    "readout a string": (lambda m: {**m, "readout": "logit"}, None, "'readout' is a string, not an object"),
    "n_layers -2": (lambda m: {**m, "n_layers": -2}, None, "'n_layers' is -2, not a count"),
    "nested run.json": ("[" * 100_000 + "]" * 100_000, None, "run.json is not valid JSON (RecursionError"),
    "duplicated row": (None, lambda t: pd.concat([t.iloc[:-1], t.iloc[:1]], ignore_index=True), "appears twice"),
}


@pytest.mark.parametrize("case", list(TRACES))
def test_a_tampered_trace_folder_is_one_line(case, trace_folder, tmp_path, capsys):
    meta_change, table_change, phrase = TRACES[case]
    folder = _tampered_trace(trace_folder, tmp_path, "t", meta_change, table_change)
    before = snapshot(folder)
    code, err = cli(["report", str(folder)], capsys)
    assert code == 1 and phrase in one_line(err), err
    assert snapshot(folder) == before


def test_an_untampered_trace_reports(trace_folder, tmp_path, capsys):
    folder = _tampered_trace(trace_folder, tmp_path, "t")
    code, err = cli(["report", str(folder)], capsys)
    assert code == 0, err


# -- 8. messages that name the real cause ------------------------------------------------------------------
def test_a_readout_sample_too_small_to_keep_a_token_says_so(tmp_path, capsys):
    code, err = cli(["run", "demo", "--probe", "updates", "--readout-sample", "1e-300", "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and "--readout-sample 1e-300 samples no token at all" in one_line(err)
    assert not (tmp_path / "r").exists()


def test_report_on_nan_tables_prints_no_python_warnings(runs, tmp_path, capsys):
    main, _, _ = runs
    folder = tmp_path / "nan"
    shutil.copytree(main, folder)
    meta = json.loads((folder / "run.json").read_text())
    for name in meta["tables"]:
        table = pd.read_parquet(folder / f"{name}.parquet")
        for column in table.columns:
            if table[column].dtype.kind == "f":
                table[column] = np.nan
        if "count" in table.columns:
            table["count"] = 0
        table.to_parquet(folder / f"{name}.parquet", index=False)
        redigest(folder, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = cli(["report", str(folder)], capsys)
        assert code == 0 and err == "", err
        code, err = cli(["compare", str(main), str(folder), "--out", str(tmp_path / "cmp")], capsys)
        assert code == 0 and err == "", err
    assert [str(w.message) for w in caught] == []


def test_a_literal_bos_string_in_text_is_text(demo_adapter):
    from normprobe.tracing import trace_documents

    bos = demo_adapter.bos_token_id
    assert bos not in demo_adapter.encode("a <|endoftext|> b")
    assert demo_adapter.tokenizer.decode(demo_adapter.encode("a <|endoftext|> b")) == "a <|endoftext|> b"
    traced = trace_documents(demo_adapter, ["<|endoftext|> x"], readout="logit", top_k=1, max_tokens=None, prepend_bos=False)
    assert bos not in traced.meta["token_ids"][0]  # with no BOS asked for, position 0 holds none


def test_many_baseline_seeds_print_their_cost_first(capsys):
    from normprobe.runner import make_runner

    make_runner("demo", texts=DOCS, probes=["norms"], baselines=["random-init", "shuffled"], baseline_seeds=40)
    err = capsys.readouterr().err
    assert err.strip() == (
        "normprobe: warning: --baseline-seeds 40: each random-init seed is one more model built and one more full pass "
        "over the corpus, so this run makes 42 passes, about 42 times the time of the run alone"
    )
    make_runner("demo", texts=DOCS, probes=["norms"], baselines=["random-init"], baseline_seeds=3)
    assert capsys.readouterr().err == ""


# -- 9. the second signal -------------------------------------------------------------------------------------
BUSY = '''
from pathlib import Path

import torch

from normprobe.probes.norms import NormsProbe


class BusyProbe(NormsProbe):
    name = "busy"
    calls = 0

    def update(self, activations, batch):
        BusyProbe.calls += 1
        if BusyProbe.calls == 3:  # the third batch is one long torch call, which holds no Python bytecode
            Path(__file__).with_name("busy.started").write_text("")
            torch.linalg.matrix_power(torch.eye(2048) * 0.5, 2**62)  # ~1 TFLOP: seconds on any CPU
        super().update(activations, batch)
'''


def test_a_second_sigterm_during_a_long_batch_stops_the_run_as_interrupted(tmp_path):
    from normprobe.store import load_checkpoint

    probe = tmp_path / "busy.py"
    probe.write_text(BUSY)
    out = tmp_path / "run"
    argv = ["run", "demo", "--probe", str(probe), "--max-docs", "20", "--batch-size", "1", "--checkpoint-every", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "normprobe", *argv, "--out", str(out), "--no-progress"], stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while not (tmp_path / "busy.started").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    time.sleep(0.2)  # inside the long call now
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)  # generous: speed is not what this test measures
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "normprobe: second signal: stopped during the batch; the last checkpoint is kept"
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted" and "aborted by a second signal" in meta["status_reason"]
    assert load_checkpoint(out / "checkpoint.pt")["progress"]["batches"] == 2

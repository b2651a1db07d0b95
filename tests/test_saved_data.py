"""A saved run, lens or shard is data, never code; lenses, shards and lens training are checked as run folders are.

Every case ends in a correct result or one line on stderr, through the CLI where a user meets it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from .conftest import DOCS, TEST_DEVICE
from .test_hostile import Planted, mount_tmpfs

REPO = Path(__file__).resolve().parents[1]
ENTROPY = str(REPO / "probes" / "attention_entropy.py")
ENTROPY_FIGURE = "Attention entropy per head"
EVIL = (
    "open({marker!r}, 'w').close()\nfrom normprobe.probes.norms import NormsProbe\n\n"
    "class Evil(NormsProbe):\n    name = 'attention_entropy'\n"
)


def cli(argv: list[str], capsys) -> tuple[int, str]:
    from normprobe.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    return exc.value.code or 0, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normprobe: error: "), err
    return lines[0]


def plant(folder: Path, marker: Path) -> None:
    """Code that, if anything imported it, would leave `marker`: as a file and as an importable module."""
    for path in (folder / "evil.py", folder / "evil_module.py"):
        path.write_text(EVIL.format(marker=str(marker)))


def rewrite_request(folder: Path, **changes) -> None:
    meta = json.loads((folder / "run.json").read_text())
    meta["request"].update(changes)
    (folder / "run.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def entropy_runs(tmp_path_factory, demo_adapter):
    """A custom-probe run over DOCS, and the same as two shards (the probe's code named on the command line)."""
    from normprobe.api import run_to_folder

    root = tmp_path_factory.mktemp("entropy")
    options = dict(probes=[ENTROPY], texts=DOCS, seq_len=16, batch_size=2, progress=False, plotlyjs="cdn")
    whole = run_to_folder(demo_adapter, root / "whole", **options)
    shards = [run_to_folder(demo_adapter, root / f"shard{i}", shard=(i, 2), **options) for i in range(2)]
    # the same shard and counts, asked for with another option: only the request tells them apart
    other = run_to_folder(demo_adapter, root / "other", shard=(0, 2), layers=[0, 1], **options)
    return whole, shards, other


# -- 1. a folder never names code that is run ------------------------------------------
@pytest.mark.parametrize("spec", ["evil.py", "{dir}/evil.py", "evil.py:Evil", "evil_module:Evil"])
def test_report_and_figures_never_import_what_run_json_names(spec, entropy_runs, tmp_path, capsys, monkeypatch):
    from normprobe import RunResult

    marker = tmp_path / "PWNED"
    folder = tmp_path / "run"
    shutil.copytree(entropy_runs[0], folder)
    plant(tmp_path, marker)
    rewrite_request(folder, probe_specs=[spec.format(dir=tmp_path)])
    monkeypatch.chdir(tmp_path)  # a relative spec next to the folder, and a module on the path
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = cli(["report", str(folder), "--plotlyjs", "cdn"], capsys)
    figures = RunResult.load(folder).figures()
    assert code == 0 and err == "", err
    assert not marker.exists()
    page = (folder / "report.html").read_text()
    assert "Probe: attention_entropy" in page and "Drawn from the saved tables only" in page
    assert ENTROPY_FIGURE not in page and figures == {}


def test_a_custom_probes_renderer_only_when_the_user_names_it(entropy_runs, tmp_path, capsys, monkeypatch):
    from importlib.metadata import EntryPoint

    import normprobe.registry as registry
    from normprobe import RunResult

    whole = entropy_runs[0]
    page = tmp_path / "page.html"
    code, err = cli(["report", str(whole), "--out", str(page), "--probe-module", ENTROPY, "--plotlyjs", "cdn"], capsys)
    assert code == 0, err
    assert ENTROPY_FIGURE in page.read_text()
    named = RunResult.load(whole, probe_modules=[ENTROPY]).figures()
    assert len(named) == 1 and next(iter(named)).startswith(ENTROPY_FIGURE)
    # it draws the saved table: the mean entropy ratio per (layer, head) over positions >= 1, by a plain loop
    table = RunResult.load(whole)["attention_entropy"]
    heatmap = next(iter(named.values())).data[0]
    for layer in range(4):
        for head in range(len(heatmap.x)):
            rows = table[(table["layer"] == layer) & (table["head"] == head) & (table["position"] > 0)]
            assert heatmap.z[layer][head] == pytest.approx(sum(rows["entropy_ratio"]) / len(rows), rel=1e-9)
    code, err = cli(["report", str(whole), "--out", str(tmp_path / "x.html"), "--probe-module", "no_such_mod:P"], capsys)
    assert code == 1 and "cannot import probe 'no_such_mod:P'" in one_line(err)
    # an entry point installed in the environment is code the user installed: its renderer is used
    monkeypatch.syspath_prepend(str(REPO / "probes"))
    installed = [EntryPoint("attention_entropy", "attention_entropy:AttentionEntropyProbe", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: installed if group == registry.ENTRY_POINT_GROUP else [])
    assert len(RunResult.load(whole).figures()) == 1


def test_merge_never_imports_what_shards_name_and_takes_probe_module(entropy_runs, tmp_path, capsys):
    from normprobe import RunResult

    whole, shards, _ = entropy_runs
    marker = tmp_path / "PWNED"
    plant(tmp_path, marker)
    planted = []
    for shard in shards:
        planted.append(tmp_path / shard.name)
        shutil.copytree(shard, planted[-1])
        rewrite_request(planted[-1], probe_specs=[str(tmp_path / "evil.py")])
    for folders in (shards, planted):  # its own spec or a planted one: neither is imported
        code, err = cli(["merge", *map(str, folders), "--out", str(tmp_path / "refused")], capsys)
        assert code == 1 and "normprobe never imports code that a saved folder names" in one_line(err)
        assert "--probe-module" in err
    assert not marker.exists() and not (tmp_path / "refused").exists()
    code, err = cli(
        ["merge", *map(str, shards), "--out", str(tmp_path / "merged"), "--probe-module", ENTROPY, "--plotlyjs", "cdn"], capsys
    )
    assert code == 0, err
    merged, single = RunResult.load(tmp_path / "merged"), RunResult.load(whole)
    pd.testing.assert_frame_equal(
        merged["attention_entropy"], single["attention_entropy"], check_exact=False, rtol=1e-6, atol=1e-6
    )


def test_a_shard_state_must_be_its_own_runs(entropy_runs, tmp_path, capsys):
    _, shards, other = entropy_runs
    copies = [tmp_path / s.name for s in shards]
    for shard, copy in zip(shards, copies):
        shutil.copytree(shard, copy)

    def merge() -> str:
        code, err = cli(["merge", *map(str, copies), "--out", str(tmp_path / "m"), "--probe-module", ENTROPY], capsys)
        assert code == 1 and not (tmp_path / "m").exists()
        return one_line(err)

    shutil.copy(shards[1] / "state.pt", copies[0] / "state.pt")  # shard 1's statistics in shard 0's folder
    assert "state.pt belongs to another run: its shard ([1, 2])" in merge()
    shutil.copy(other / "state.pt", copies[0] / "state.pt")  # shard 0 of another request
    assert "state.pt belongs to another run: its request" in merge()
    state = torch.load(shards[0] / "state.pt", weights_only=True)
    torch.save(state["probes"], copies[0] / "state.pt")  # the bare statistics, without their run's identity
    assert "carries no run identity" in merge()
    shutil.copy(shards[0] / "state.pt", copies[0] / "state.pt")
    meta = json.loads((copies[0] / "run.json").read_text())
    (copies[0] / "run.json").write_text(json.dumps({**meta, "n_tokens": meta["n_tokens"] + 1}))
    assert "its n_tokens" in merge()


# -- lenses ---------------------------------------------------------------------------
_LENS: dict[str, Path] = {}


def make_lens(folder: Path, demo_adapter, change=None) -> Path:
    """A copy of one zero lens for the demo model (saved once), with `change` applied to its params."""
    from normprobe.readouts.tuned import new_translators, save_lens

    if "zero" not in _LENS:
        _LENS["zero"] = save_lens(
            folder.parent / "zero-lens", new_translators(demo_adapter.d_model, demo_adapter.n_layers), demo_adapter
        )
    shutil.copytree(_LENS["zero"], folder)
    if change is not None:
        state = torch.load(folder / "params.pt", weights_only=True)
        torch.save(change(state), folder / "params.pt")
    return folder


def _poisoned(value):
    def change(state):
        state["2.weight"][3, 5] = value
        return state

    return change


def test_lens_files_that_are_not_a_lens_are_one_line(demo_adapter, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    lenses = {
        "nan": (_poisoned(float("nan")), "2.weight holds 1 non-finite values (NaN or infinity)"),
        "inf": (_poisoned(float("inf")), "2.weight holds 1 non-finite values (NaN or infinity)"),
        "complex": (lambda s: {k: v.to(torch.complex64) for k, v in s.items()}, "holds complex64 values, not real"),
        "list": (lambda s: list(s.values()), "does not hold translator tensors (it holds list)"),
        "size": (lambda s: {**s, "0.weight": torch.zeros(3, 3)}, "0.weight has shape (3, 3), not (128, 128)"),
        "pickle": (lambda s: {"0.weight": Planted(marker)}, "cannot read"),
    }
    for name, (change, phrase) in lenses.items():
        lens = make_lens(tmp_path / name, demo_adapter, change)
        out = tmp_path / f"run-{name}"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a complex lens once printed torch's casting warning
            code, err = cli(
                [
                    "run",
                    "demo",
                    "--probe",
                    "updates",
                    "--readout",
                    f"tuned:{lens}",
                    "--text",
                    "a b c",
                    "--out",
                    str(out),
                    "--no-progress",
                    "--device",
                    TEST_DEVICE,
                ],
                capsys,
            )
        assert code == 1 and phrase in one_line(err), (name, err)
        assert not out.exists()  # nothing written, nothing left `running`
    assert not marker.exists()
    deep = make_lens(tmp_path / "deep", demo_adapter)
    (deep / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    loop = tmp_path / "loop"
    os.symlink(tmp_path / "loop2", loop)
    os.symlink(loop, tmp_path / "loop2")
    for lens, phrase in [(deep, "config.json is not valid JSON (RecursionError"), (loop, "cannot be opened")]:
        code, err = cli(
            ["run", "demo", "--probe", "updates", "--readout", f"tuned:{lens}", "--text", "a", "--out", str(tmp_path / "x")],
            capsys,
        )
        assert code == 1 and phrase in one_line(err), err
    assert not (tmp_path / "x").exists()


def test_merge_reads_a_saved_lens_path_only_if_it_is_the_lens_the_run_used(demo_adapter, tmp_path):
    from normprobe.errors import NormprobeError
    from normprobe.readouts import parse_readout
    from normprobe.store import check_lens_digest

    lens = make_lens(tmp_path / "lens", demo_adapter)
    request = {"readout": f"tuned:{lens}", "readout_params_sha256": parse_readout(f"tuned:{lens}").describe()["params_sha256"]}
    check_lens_digest(request)  # the same params.pt: read, as data
    make_lens(tmp_path / "other", demo_adapter, _poisoned(1.0))
    shutil.copy(tmp_path / "other" / "params.pt", lens / "params.pt")
    with pytest.raises(NormprobeError, match="has changed since"):
        check_lens_digest(request)


def test_rows_that_are_all_non_finite_are_kept_with_their_count(demo_adapter):
    """A (layer, component[, α]) whose every value was NaN keeps its row: count 0, n_nonfinite as added."""
    from normprobe.probes.linesearch import COMPONENTS, LineSearchProbe
    from normprobe.probes.updates import UpdatesProbe

    search = LineSearchProbe(alphas=[0.0, 1.0])
    search.setup(demo_adapter, 8)
    # group 0 only NaN; group 1 one finite value and one infinity; group 5 one finite value; the rest nothing
    search.losses.add(torch.tensor([0, 1, 1, 5]), torch.tensor([float("nan"), 2.0, float("inf"), 3.0]))

    def key(group: int) -> tuple:  # the probe's layout: layers x components x alphas
        n_a, n_c = len(search.alphas), len(COMPONENTS)
        return (search._layers[group // (n_c * n_a)], COMPONENTS[(group // n_a) % n_c], search.alphas[group % n_a])

    table = search.result()["line_search"]
    got = {(int(r.layer), r.component, float(r.alpha)): (int(r.count), int(r.n_nonfinite)) for r in table.itertuples()}
    assert got == {key(0): (0, 1), key(1): (1, 1), key(5): (1, 0)}
    assert search.findings(search.result())["n_nonfinite"] == 2

    updates = UpdatesProbe()
    updates.setup(demo_adapter, 8)
    updates.moments["descent_cos"].add(torch.tensor([0, 0]), torch.tensor([float("nan"), float("-inf")]))
    frame = updates.result()["updates"]
    steps = frame[frame["component"] != "output"]
    assert list(zip(steps["layer"], steps["count"], steps["n_nonfinite"])) == [(0, 0, 2)]
    assert UpdatesProbe.findings(updates.result())["n_nonfinite"] == 2


# -- lens training ------------------------------------------------------------------------
LENS_ARGS = ["--steps", "4", "--batch-size", "1", "--seq-len", "16", "--no-progress", "--device", TEST_DEVICE]


def checkpoint_for(out: Path, demo_adapter, corpus) -> None:
    from normprobe.lens_training import LensSettings, LensTrainer

    LensTrainer(demo_adapter, corpus, LensSettings(steps=4, batch_size=1, seq_len=16), out).save_checkpoint()


def test_lens_resume_refuses_another_corpus_and_damaged_checkpoints(demo_adapter, tmp_path, capsys):
    from normprobe.corpus import InputSpec
    from normprobe.options import Corpus

    texts = tmp_path / "texts"
    checkpoint_for(texts, demo_adapter, Corpus(texts=["one text", "two texts"]))
    code, err = cli(
        ["lens", "train", "demo", "--out", str(texts), "--resume", "--text", "one text", "--text", "other", *LENS_ARGS], capsys
    )
    assert code == 1 and "cannot resume: the corpus differs (texts" in one_line(err)
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("first line\nsecond line\n")
    from_file = tmp_path / "file"
    checkpoint_for(from_file, demo_adapter, Corpus(input=InputSpec(corpus_file)))
    corpus_file.write_text("first line\nsecond line, edited\n")
    code, err = cli(
        ["lens", "train", "demo", "--out", str(from_file), "--resume", "--input", str(corpus_file), *LENS_ARGS], capsys
    )
    assert code == 1 and "cannot resume: the corpus differs" in one_line(err)
    wrong_size = tmp_path / "wrong-size"
    checkpoint_for(wrong_size, demo_adapter, Corpus(texts=["one text"]))
    state = torch.load(wrong_size / "lens_checkpoint.pt", weights_only=True)
    state["translators"]["0.weight"] = torch.zeros(3, 3)
    torch.save(state, wrong_size / "lens_checkpoint.pt")
    code, err = cli(["lens", "train", "demo", "--out", str(wrong_size), "--resume", "--text", "one text", *LENS_ARGS], capsys)
    assert code == 1 and "0.weight has shape (3, 3), not (128, 128)" in one_line(err), err
    marker = tmp_path / "PWNED"
    for name, content, phrase in [
        ("list", [1, 2], "is not a normprobe lens checkpoint"),
        ("pickle", {"identity": Planted(marker)}, "loaded as data only"),
    ]:
        out = tmp_path / name
        out.mkdir()
        torch.save(content, out / "lens_checkpoint.pt")
        code, err = cli(["lens", "train", "demo", "--out", str(out), "--resume", *LENS_ARGS], capsys)
        assert code == 1 and phrase in one_line(err), err
    assert not marker.exists()


def test_lens_train_takes_the_folder_lock(demo_adapter, tmp_path, capsys):
    out = make_lens(tmp_path / "lens", demo_adapter)  # a lens folder that a live `lens train` is writing
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from normprobe.lock import FolderLock; "
            f"FolderLock.acquire({str(out)!r}); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".normprobe.lock"}
        code, err = cli(["lens", "train", "demo", "--out", str(out), "--overwrite", *LENS_ARGS], capsys)
        assert code == 1 and f"being written by another normprobe process (pid {holder.pid})" in one_line(err)
        code, err = cli(
            ["run", "demo", "--probe", "updates", "--readout", f"tuned:{out}", "--text", "a", "--out", str(tmp_path / "run")],
            capsys,
        )
        assert code == 1 and f"is being written by another normprobe process (pid {holder.pid})" in one_line(err)
    finally:
        holder.communicate("")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".normprobe.lock"} == before
    assert not (tmp_path / "run").exists()


def test_lens_train_on_a_full_disk_is_one_line_and_keeps_its_last_checkpoint(tmp_path, capsys):
    from normprobe.store import load_state_file

    disk = tmp_path / "disk"
    mount_tmpfs(disk, "900k")  # one checkpoint (~530 KB) fits; a second beside it does not
    try:
        out = disk / "lens"
        code, err = cli(["lens", "train", "demo", "--out", str(out), "--checkpoint-every", "1", *LENS_ARGS], capsys)
        assert code == 1 and "No space left on device" in one_line(err) and "last checkpoint" in err
        assert sorted(p.name for p in out.iterdir()) == ["lens_checkpoint.pt"]  # no temp files, no half lens
        state = load_state_file(out / "lens_checkpoint.pt", "lens checkpoint")
        assert state["step"] == 1 and set(state["translators"]) == {f"{l}.{p}" for l in range(4) for p in ("weight", "bias")}
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -- signals --------------------------------------------------------------------------
SIGNALLED = '''
import os
import signal
from normprobe.probes.norms import NormsProbe

class SignalledProbe(NormsProbe):
    name = "signalled"
    calls = 0

    def update(self, activations, batch):
        SignalledProbe.calls += 1
        if SignalledProbe.calls == 3:  # in the middle of the third batch, as from `kill` twice
            os.kill(os.getpid(), signal.SIGTERM)
            SignalledProbe.said = True  # the handler has run: the batch goes on
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("the second signal did not stop the run at once")
        super().update(activations, batch)
'''


def test_first_signal_is_answered_at_once_and_a_second_stops_now(tmp_path, capfd):
    from normprobe.store import load_checkpoint

    probe = tmp_path / "signalled.py"
    probe.write_text(SIGNALLED)
    out = tmp_path / "run"
    code, err = cli(
        [
            "run",
            "demo",
            "--probe",
            str(probe),
            "--max-docs",
            "20",
            "--batch-size",
            "1",
            "--checkpoint-every",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ],
        capfd,
    )
    assert code == 130, err
    assert err.splitlines()[0] == ("normprobe: SIGTERM received: will stop after the current batch; a second signal stops it now")
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted" and "aborted by a second signal" in meta["status_reason"]
    assert load_checkpoint(out / "checkpoint.pt")["progress"]["batches"] == 2  # the last whole batch's checkpoint
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "run.json"]


# -- 7. a run.json that cannot describe a model ---------------------------------------------
def test_zero_layers_in_run_json_is_one_line(entropy_runs, tmp_path, capsys):
    folder = tmp_path / "zero"
    shutil.copytree(entropy_runs[0], folder)
    meta = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**meta, "n_layers": 0}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, err = cli(["compare", str(entropy_runs[0]), str(folder), "--out", str(tmp_path / "cmp")], capsys)
    assert code == 1 and "'n_layers' is 0" in one_line(err)

"""Run folders that never lie, tried as a hostile user would: every case through the real CLI in a subprocess.

Each case ends in a correct result or one line on stderr, and no run.json says `running` after its
process is gone, except after SIGKILL, where the dropped lock marks the run as dead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

NORMPROBE = [sys.executable, "-m", "normprobe"]
# long enough (the sample corpus has 200 documents: short windows and three probes) that a quiet, fast
# machine is still inside the run, its signal handlers installed, when a test signals it
LONG_RUN = ["run", "demo", "-p", "norms", "-p", "updates", "-p", "linesearch"]
LONG_RUN += ["--seq-len", "32", "--batch-size", "1", "--no-progress"]


def start(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*NORMPROBE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode("utf-8", "replace")


def cli(*args) -> tuple[int, str]:
    return finish(start(*args))


def in_process(argv: list[str], capsys) -> tuple[int, str]:
    """The CLI's `main` in this process: the same code path, without a fresh interpreter's import time."""
    from normprobe.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    return exc.value.code or 0, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normprobe: error: "), err
    return lines[0]


def status(folder: Path) -> str:
    return json.loads((folder / "run.json").read_text())["status"]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, finish(proc)
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == ".normprobe.lock")


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("complete") / "run"
    code, err = cli("run", "demo", "--probe", "norms", "--max-docs", "4", "--out", str(out), "--no-progress")
    assert code == 0, err
    return out


# -- two writers, one folder --------------------------------------------------
def test_two_runs_started_together_into_one_folder(tmp_path):
    out = tmp_path / "run"
    args = ["run", "demo", "--probe", "norms", "--max-docs", "40", "--batch-size", "1", "--out", str(out), "--no-progress"]
    procs = [start(*args), start(*args)]
    (code_a, err_a), (code_b, err_b) = [finish(p) for p in procs]
    assert sorted([code_a, code_b]) == [0, 1], (err_a, err_b)
    winner, loser_err = (procs[0], err_b) if code_a == 0 else (procs[1], err_a)
    line = one_line(loser_err)
    # the loser is refused by the lock (naming the winner) or, if it came later, by the non-empty folder
    assert f"being written by another normprobe process (pid {winner.pid})" in line or "is not empty" in line, line
    assert status(out) == "complete" and json.loads((out / "run.json").read_text())["n_docs"] == 40
    assert leftovers(out) == []


def test_a_live_run_refuses_writers_and_resume_and_report_says_it_runs(tmp_path):
    out = tmp_path / "run"
    live = start(*LONG_RUN, "--checkpoint-every", "1", "--out", str(out))
    wait_for(out / "checkpoint.pt", live)
    others = [
        start("run", "demo", "--text", "hello", "--out", str(out), "--overwrite", "--no-progress"),
        start(*LONG_RUN, "--checkpoint-every", "1", "--resume", str(out)),
        start("report", str(out)),
    ]
    (w_code, w_err), (r_code, r_err), (p_code, p_err) = [finish(p) for p in others]
    assert live.poll() is None, "the live run ended before the others were refused; give it more documents"
    assert w_code == 1 and f"being written by another normprobe process (pid {live.pid})" in one_line(w_err)
    assert r_code == 1 and f"(pid {live.pid})" in one_line(r_err)
    assert p_code == 1 and f"still running (pid {live.pid})" in one_line(p_err)
    live.send_signal(signal.SIGTERM)
    code, err = finish(live)
    assert code == 130 and status(out) == "interrupted", err
    assert leftovers(out) == []


def test_sigkill_leaves_running_that_the_lock_marks_dead_and_resume_takes_over(tmp_path):
    out = tmp_path / "run"
    short_run = ["run", "demo", "--probe", "norms", "--max-docs", "30", "--batch-size", "1", "--no-progress"]
    victim = start(*short_run, "--checkpoint-every", "1", "--out", str(out))
    wait_for(out / "checkpoint.pt", victim)
    victim.kill()
    victim.wait()
    assert status(out) == "running"  # SIGKILL cannot be caught; the lock is what tells
    code, err = cli("report", str(out), "--out", str(tmp_path / "page.html"))
    assert code == 0 and "is running, not complete" in err, err
    page = (tmp_path / "page.html").read_text()
    assert "Partial run" in page and "no process holds its lock" in page
    code, err = cli(*short_run, "--checkpoint-every", "50", "--resume", str(out))
    assert code == 0, err
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["resumed"] == 1 and meta["n_docs"] == 30
    assert leftovers(out) == [] and not (out / "checkpoint.pt").exists()


# -- signals ----------------------------------------------------------------
def test_sigterm_the_moment_run_json_appears_leaves_interrupted(tmp_path):
    out = tmp_path / "run"
    proc = start(*LONG_RUN, "--out", str(out))
    wait_for(out / "run.json", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 130, err
    assert err.strip().splitlines()[-2].startswith("normprobe: interrupted: stopped by SIGTERM"), err
    assert status(out) == "interrupted" and (out / "checkpoint.pt").is_file()
    assert leftovers(out) == []


# -- unsafe loading -----------------------------------------------------------
class Planted:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_planted_pickles_never_run(tmp_path, capsys):
    from normprobe.results import _json_safe
    from normprobe.runner import make_runner

    marker = tmp_path / "PWNED"
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    request = _json_safe(make_runner("demo", texts=["hi"]).request())  # what `run demo --text hi` asks for
    (interrupted / "run.json").write_text(json.dumps({"status": "interrupted", "request": request}))
    torch.save({"probes": Planted(marker), "progress": {}}, interrupted / "checkpoint.pt")
    wrong_shape = tmp_path / "wrong"
    shutil.copytree(interrupted, wrong_shape)
    torch.save({"probes": [1, 2], "progress": {"batches": "x"}}, wrong_shape / "checkpoint.pt")
    shards = []
    for index in range(2):
        shard = tmp_path / f"shard-{index}"
        shard.mkdir()
        request = {"model": "demo", "dtype": "float32", "probe_specs": ["norms"], "shard": [index, 2]}
        (shard / "run.json").write_text(
            json.dumps(
                {
                    "status": "complete",
                    "tables": [],
                    "probes": ["norms"],
                    "findings": {},
                    "request": request,
                    "seq_len": 64,
                    "n_tokens": 1,
                    "n_windows": 1,
                    "n_batches": 1,
                    "n_docs": 1,
                }
            )
        )
        torch.save({"norms": Planted(marker)}, shard / "state.pt")
        shards.append(str(shard))
    procs = [
        start("run", "demo", "--text", "hi", "--resume", str(interrupted), "--no-progress"),
        start("merge", *shards, "--out", str(tmp_path / "merged")),
    ]
    b_code, b_err = in_process(["run", "demo", "--text", "hi", "--resume", str(wrong_shape), "--no-progress"], capsys)
    (a_code, a_err), (c_code, c_err) = [finish(p) for p in procs]
    assert not marker.exists()
    assert a_code == 1 and "as a normprobe checkpoint (it is loaded as data only" in one_line(a_err)
    assert b_code == 1 and "is not a normprobe checkpoint" in one_line(b_err)
    assert c_code == 1 and "as a normprobe shard state" in one_line(c_err)
    assert not (tmp_path / "merged" / "run.json").exists()


# -- a full disk ----------------------------------------------------------------
def mount_tmpfs(mount: Path, size: str) -> None:
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()}); needs root")


@pytest.mark.may_skip  # mounting a tmpfs needs root with CAP_SYS_ADMIN, which a CI container may lack
@pytest.mark.parametrize(
    "size, extra, where",
    [
        ("48k", ["--checkpoint-every", "1"], "checkpoint"),  # norms' checkpoint (~70 KB) does not fit mid-run
        ("1m", [], "report"),  # the tables fit, report.html (~4.7 MB with plotly.js) does not: the save fails
    ],
)
def test_disk_full_is_one_line_marks_failed_and_leaves_no_temp_files(tmp_path, size, extra, where):
    disk = tmp_path / "disk"
    mount_tmpfs(disk, size)
    try:
        out = disk / "run"
        code, err = cli(
            "run", "demo", "--probe", "norms", "--max-docs", "3", "--batch-size", "1", *extra, "--out", str(out), "--no-progress"
        )
        assert code == 1 and "No space left on device" in one_line(err)
        meta = json.loads((out / "run.json").read_text())
        assert meta["status"] == "failed" and "No space left on device" in meta["status_reason"]
        left = sorted(p.name for p in out.iterdir())
        assert left == (
            ["run.json"]
            if where == "checkpoint"
            else ["norms.parquet", "norms_by_token.parquet", "norms_replicates.parquet", "run.json"]
        )
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -- tampered or corrupt folders ------------------------------------------------
def test_tampered_folders_are_one_line_never_a_wrong_page(tmp_path, complete_run, capsys):
    def copy(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(complete_run, folder)
        (folder / "report.html").unlink()
        return folder

    listed = copy("listed")
    (listed / "run.json").write_text("[1, 2]")
    tables_text = copy("tables-text")
    meta = json.loads((tables_text / "run.json").read_text())
    (tables_text / "run.json").write_text(json.dumps({**meta, "tables": "norms"}))
    escape = copy("escape")
    (escape / "run.json").write_text(json.dumps({**meta, "tables": ["../listed/norms"]}))
    truncated = copy("truncated")
    data = (truncated / "norms.parquet").read_bytes()
    (truncated / "norms.parquet").write_bytes(data[: len(data) // 2])
    deleted = copy("deleted")
    (deleted / "norms_by_token.parquet").unlink()
    columns = copy("columns")
    pd.DataFrame({"x": [1.0]}).to_parquet(columns / "norms.parquet")
    # two through a fresh interpreter, the rest through the same `main` in this process (cheaper)
    procs = {
        "truncated": start("report", str(truncated)),
        "compare": start("compare", str(complete_run), str(deleted), "--out", str(tmp_path / "cmp")),
    }
    said = {
        name: in_process(["report", str(folder)], capsys)
        for name, folder in [
            ("listed", listed),
            ("tables-text", tables_text),
            ("escape", escape),
            ("deleted", deleted),
            ("columns", columns),
        ]
    }
    said.update({name: finish(proc) for name, proc in procs.items()})
    expected = {
        "listed": "it holds a list, not an object",
        "tables-text": "'tables' must be a list of table names",
        "escape": "'tables' must be a list of table names",
        "truncated": "norms.parquet is not the table this run wrote (its sha256 differs",
        "deleted": "names table 'norms_by_token' but norms_by_token.parquet is missing",
        "columns": "norms.parquet is not the table this run wrote (its sha256 differs",
        "compare": "names table 'norms_by_token' but norms_by_token.parquet is missing",
    }
    for name, phrase in expected.items():
        code, err = said[name]
        assert code == 1 and phrase in one_line(err), (name, err)
    for folder in (listed, tables_text, escape, truncated, deleted, columns):
        assert not (folder / "report.html").exists()
    assert not (tmp_path / "cmp" / "report.html").exists()


def test_compare_and_report_out_ask_before_overwriting(tmp_path, complete_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(complete_run, run)
    before = (run / "report.html").read_bytes()
    page = tmp_path / "page.html"
    page.write_text("mine")
    compare = start("compare", str(run), str(complete_run), "--out", str(run))
    r_code, r_err = in_process(["report", str(run), "--out", str(page)], capsys)
    d_code, d_err = in_process(["report", str(run), "--out", str(tmp_path)], capsys)
    c_code, c_err = finish(compare)
    assert c_code == 1 and "exists and is not empty; pass --overwrite" in one_line(c_err)
    assert r_code == 1 and "exists; pass --overwrite" in one_line(r_err)
    assert d_code == 1 and "is a folder" in one_line(d_err)
    assert (run / "report.html").read_bytes() == before and page.read_text() == "mine"
    code, err = in_process(["report", str(run), "--out", str(page), "--overwrite"], capsys)
    assert code == 0 and "Plotly.newPlot" in page.read_text(), err


# -- inputs that pass a glance but break a run -----------------------------------
def test_hostile_inputs_are_one_line_before_the_model_loads(tmp_path, capsys):
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"text": "fine"}\n{"text": "ab\\ud800cd"}\n')
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b'text\n"caf\xe9"\n')
    numbers = tmp_path / "numbers.parquet"
    pd.DataFrame({"text": [1, 2, 3]}).to_parquet(numbers)
    cases = {
        "fifo": (["--input", str(fifo)], "is not a regular file"),
        "deep": (["--input", str(deep)], "line 1 is nested too deeply"),
        "surrogate": (["--input", str(surrogate)], "line 2 field 'text' holds \\ud800"),
        "argv": ([b"--text", b"caf\xff"], "text 1 holds \\udcff"),
        "csv": (["--input", str(latin)], "is not valid utf-8; pass --encoding ENCODING or --errors replace"),
        "numbers": (["--input", str(numbers)], "column 'text' holds int64 values, not text"),
    }
    # the FIFO (which must not hang) and argv bytes through a fresh interpreter, the rest in this process
    procs = {
        name: start("run", "demo", *cases[name][0], "--out", str(tmp_path / name), "--no-progress") for name in ("fifo", "argv")
    }
    for name, (args, phrase) in cases.items():
        if name in procs:
            code, err = finish(procs[name], timeout=60)
        else:
            code, err = in_process(["run", "demo", *args, "--out", str(tmp_path / name), "--no-progress"], capsys)
        assert code == 1 and phrase in one_line(err), (name, err)
        assert not (tmp_path / name).exists()


def test_tokenizer_rejection_mid_run_names_the_document():
    from normprobe.batching import iter_windows
    from normprobe.errors import NormprobeError

    def encode(text):
        if "bad" in text:
            raise TypeError("TextEncodeInput must be Union[...]")
        return list(range(len(text)))

    with pytest.raises(NormprobeError, match=r"^document 2 cannot be tokenised \(TypeError: TextEncodeInput"):
        list(iter_windows(["good", "bad", "good"], encode, 8, bos=0))


def test_errors_replace_holds_for_csv_and_jsonl(tmp_path):
    from normprobe.corpus import InputSpec, iter_documents

    latin = tmp_path / "latin.csv"
    latin.write_bytes(b'text,n\n"caf\xe9 au lait",1\n12,2\n')
    assert list(iter_documents(InputSpec(latin, errors="replace"))) == ["caf\ufffd au lait", "12"]
    assert list(iter_documents(InputSpec(latin, encoding="latin-1"))) == ["caf\xe9 au lait", "12"]
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"text": "ab\\ud800cd"}\n')
    assert list(iter_documents(InputSpec(surrogate, errors="replace"))) == ["ab\ufffdcd"]


# -- bounded work -----------------------------------------------------------------
def test_max_tokens_bounds_the_text_tokenised():
    from normprobe.batching import PIECE_CHARS, iter_windows

    seen = []

    def encode(text):
        seen.append(len(text))
        return [ord(c) % 97 for c in text]  # one token per character

    document = "word " * 10_000_000  # 50 MB on one line
    windows = list(iter_windows([document], encode, 64, bos=0, max_tokens=500))
    assert sum(len(w.tokens) for w in windows) == 500
    assert sum(seen) <= PIECE_CHARS  # one piece tokenised, not 50 MB
    # pieces cut before a space: concatenated, they are the document
    from normprobe.batching import text_pieces

    text = "ab cd " * 40_000 + "x" * 200_000
    assert "".join(text_pieces(text)) == text
    assert all(len(p) <= PIECE_CHARS for p in text_pieces(text))


def test_a_50_mb_line_with_max_tokens_is_fast_and_small(tmp_path):
    corpus = tmp_path / "line.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog " * 1_190_000 + "\n")  # 52 MB, one line
    started = time.time()
    proc = start(
        "run",
        "demo",
        "--probe",
        "norms",
        "--input",
        str(corpus),
        "--max-tokens",
        "500",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    )
    _, wait_status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - started
    err = proc.stderr.read().decode()
    assert os.waitstatus_to_exitcode(wait_status) == 0, err
    peak_mb = usage.ru_maxrss / 1024
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["n_tokens"] == 500
    print(f"50 MB line, --max-tokens 500: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 1500 and seconds < 60  # before: 76 s and 7.4 GB


def test_lock_is_exclusive_reentrant_and_taken_over_when_stale(tmp_path):
    from normprobe.lock import LOCK_FILE, FolderLock, live_holder

    folder = tmp_path / "f"
    folder.mkdir()
    # a lock file left by a dead process (SIGKILL): nobody holds it, so it is taken over
    (folder / LOCK_FILE).write_text("999999999\n")
    assert live_holder(folder) is None
    outer = FolderLock.acquire(folder)
    inner = FolderLock.acquire(folder)  # the same process again: a multi-run locks OUT, then compares into it
    assert live_holder(folder) == os.getpid() and (folder / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    holder = subprocess.run(
        [sys.executable, "-c", f"from normprobe.lock import FolderLock; import sys; FolderLock.acquire({str(folder)!r})"],
        capture_output=True,
        text=True,
    )
    assert holder.returncode == 1 and f"(pid {os.getpid()})" in holder.stderr.strip().splitlines()[-1]
    inner.release()
    assert (folder / LOCK_FILE).exists()
    outer.release()
    assert not (folder / LOCK_FILE).exists() and live_holder(folder) is None


def test_deeply_nested_run_json_is_one_line(tmp_path):
    from normprobe import RunResult
    from normprobe.errors import NormprobeError

    (tmp_path / "run.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(NormprobeError, match="run.json is not valid JSON \\(RecursionError"):
        RunResult.load(tmp_path)


def test_statistics_that_do_not_fit_the_probe_are_one_line(demo_adapter):
    from normprobe.errors import NormprobeError
    from normprobe.probes.norms import NormsProbe
    from normprobe.store import restore_probe

    probe = NormsProbe()
    probe.setup(demo_adapter, 16)
    good = probe.state_dict()
    restore_probe(probe, {"norms": good}, Path("checkpoint.pt"))  # its own statistics fit
    for tampered, phrase in [
        ({"norms": {"by_position": good["by_position"]}}, "KeyError: 'by_token'"),
        ({"norms": {**good, "by_position": {"count": torch.zeros(3)}}}, "ValueError"),
        ({"updates": good}, "holds no statistics for probe 'norms'"),
    ]:
        with pytest.raises(NormprobeError, match=r"^checkpoint\.pt") as caught:
            restore_probe(probe, tampered, Path("checkpoint.pt"))
        assert phrase in str(caught.value) and "\n" not in str(caught.value)

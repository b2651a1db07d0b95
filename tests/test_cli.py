"""The CLI end to end on the demo model, and every bad input: one line, non-zero exit, nothing written."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import normprobe
from normprobe.cli import main, resume_command
from normprobe.console import LogProgress


def invoke(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, err


def test_help_is_fast_and_lazy():
    import subprocess
    import sys

    started = time.time()
    code = (
        "import sys\nfrom normprobe.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformer_lens' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "Usage" in proc.stdout
    assert proc.stdout.strip().endswith("False False")
    assert time.time() - started < 5  # generous; typically ~0.3 s


def test_run_demo_writes_everything_and_report_rerenders(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = invoke(
        ["run", "demo", "--probe", "norms", "--probe", "updates", "--max-docs", "12", "--out", str(out), "--no-progress"], capsys
    )
    assert code == 0, err
    assert err == "" and stdout == f"wrote {out}/ (report: {out / 'report.html'})\n"  # --no-progress: quiet
    names = {p.name for p in out.iterdir()}
    assert names == {
        "run.json",
        "report.html",
        "norms.parquet",
        "norms_by_token.parquet",
        "updates.parquet",
        "updates_by_position.parquet",
        "updates_hist.parquet",
        "norms_replicates.parquet",
        "updates_replicates.parquet",
        "lens_loss_replicates.parquet",
    }
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["n_docs"] == 12 and meta["model"] == "demo"
    assert meta["n_layers"] == 4 and meta["family"] == "GPT-2" and "findings" not in meta
    assert {c["claim"] for c in meta["claims"]} == {
        "norm_growth",
        "position0_ratio",
        "frequency",
        "descent",
        "removal_raises_loss",
        "lens_loss_drop",
    }
    first = (out / "report.html").read_text()
    assert '<h2 id="claims">Claims</h2>' in first
    assert first.count("Plotly.newPlot") == 9
    code, _, err = invoke(["report", str(out)], capsys)
    assert code == 0, err
    assert (out / "report.html").read_text() == first
    # in a process of its own, re-rendering never loads torch (the probes' modules only import it)
    script = (
        f"import sys\nfrom normprobe.cli import main\ntry:\n    main(['report', {str(out)!r}])\nexcept SystemExit:\n    pass\n"
        "from normprobe.deferred_imports import is_deferred\nprint(is_deferred('torch'), 'transformer_lens' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().endswith("True False"), proc.stderr[-2000:]
    assert (out / "report.html").read_text() == first


def test_probes_and_models_list(capsys):
    code, out, _ = invoke(["probes"], capsys)
    assert code == 0 and "norms" in out and "updates" in out and "built-in" in out
    code, out, _ = invoke(["models"], capsys)
    assert code == 0 and "gpt2-small" in out and "GPT-NeoX" in out and "Gemma" in out
    from normprobe.families import REFUSED, model_type_rows

    lines: dict[str, str] = {}
    last = ""
    for line in out.splitlines():  # a refusal reason wraps onto lines indented past the model type
        if line.startswith(" " * 23) and lines:
            lines[last] += " " + line.strip()
        elif line.startswith("  ") and line.split():
            last = line.split()[0]
            lines[last] = line
    for row in model_type_rows():  # every supported type with the facts the model-type tests check
        line = lines[row["model_type"]]
        assert all(value in line for value in row.values()), line
    for model_type, reason in REFUSED.items():
        assert reason in lines[model_type]  # whole, never cut


def _bad_folders(tmp_path):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    from normprobe.adapter import DEMO_DIR

    for f in DEMO_DIR.iterdir():
        if f.suffix == ".json":
            (corrupt / f.name).write_text(f.read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    bloom = tmp_path / "bloom"
    bloom.mkdir()
    (bloom / "config.json").write_text(json.dumps({"model_type": "mamba"}))  # a refused type
    (bloom / "model.safetensors").write_bytes(b"x")
    return no_weights, corrupt, bloom


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n \n")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\x00\x00\x01")
    (tmp_path / "latin.txt").write_bytes(b"ok\ncaf\xe9\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    (tmp_path / "nofield.jsonl").write_text('{"body": "a"}\n')
    (tmp_path / "nocol.csv").write_text("body,id\nhello,1\n")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("precious")
    return tmp_path


CASES = [
    (["--probe", "nope"], "unknown probe 'nope'"),
    (["--input", "{d}/missing.txt"], "input file not found"),
    (["--input", "{d}/empty.txt"], "holds no documents"),
    (["--input", "{d}/blank.txt"], "holds no documents"),
    (["--input", "{d}/bin.txt"], "looks binary"),
    (["--input", "{d}/latin.txt"], "line 2 is not valid utf-8"),
    (["--input", "{d}/bad.jsonl"], "line 2 is not valid JSON"),
    (["--input", "{d}/nofield.jsonl"], "line 1 has no field 'text'"),
    (["--input", "{d}/nocol.csv"], "columns found: body, id"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--max-docs", "-3"], "--max-docs must be at least 1"),
    (["--seq-len", "1"], "--seq-len must be at least 2"),
    (["--dtype", "float8"], "unknown dtype"),
    (["--layers", "a,b"], "invalid --layers"),
    (["--layers", "7"], "invalid layer index 7"),
    (["--errors", "ignore"], "--errors must be strict or replace"),
    (["--batch-size", "many"], "Invalid value for '--batch-size'"),
    (["--out", "{d}/occupied"], "exists and is not empty"),
]


@pytest.mark.parametrize("extra, message", CASES, ids=[c[1][:30] for c in CASES])
def test_bad_input_one_line_error(extra, message, inputs, capsys):
    out = inputs / "out"
    argv = ["run", "demo", "--no-progress"] + [a.format(d=inputs) for a in extra]
    if "--out" not in extra:
        argv += ["--out", str(out)]
    code, stdout, err = invoke(argv, capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normprobe: error:"), err
    assert message in lines[0]
    assert not out.exists()
    assert (inputs / "occupied" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "which, message",
    [
        ("no-weights", "has no weights"),
        ("corrupt", "looks corrupt"),
        ("bloom", "architecture 'mamba' is not supported: state-space model (no attention blocks)"),
        ("hub", "is not a local folder and is not in the Hugging Face cache"),
    ],
)
def test_bad_models(which, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    no_weights, corrupt, bloom = _bad_folders(tmp_path)
    model = {"no-weights": str(no_weights), "corrupt": str(corrupt), "bloom": str(bloom), "hub": "no-such-org/no-such-model-xyz"}[
        which
    ]
    code, _, err = invoke(["run", model, "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out").exists()


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = invoke(["run", "demo", "--out", str(blocker / "sub"), "--no-progress"], capsys)
    assert code == 1 and "cannot be written" in err and len(err.strip().splitlines()) == 1


def test_version(capsys):
    code, out, err = invoke(["--version"], capsys)
    assert code == 0 and out.strip() == f"normprobe {normprobe.__version__}", err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_output_where_nothing_can_be_created_fails_before_loading(capsys, monkeypatch):
    # root passes every permission check, but /proc takes no new folders
    import normprobe.adapter as adapter

    monkeypatch.setattr(adapter.ModelAdapter, "from_source", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    started = time.time()
    code, _, err = invoke(["run", "demo", "--out", "/proc/normprobe-out", "--no-progress"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "output folder /proc/normprobe-out cannot be written" in err
    assert time.time() - started < 5  # typically ~0.1 s in process


def test_console_announces_loading_warns_once_and_logs_progress_once(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = invoke(["run", "demo", "--seq-len", "4096", "--max-docs", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert err.count("warning: --seq-len 4096 is longer than demo's context of 128 tokens; using 128") == 1
    assert "normprobe: loading demo (GPT-2, 1.07M parameters): float32 on cpu" in err
    assert "normprobe: loaded demo in " in err and ": 4 layers, d_model 128, on cpu" in err
    assert err.count("probing: ") == 1  # stderr is no terminal here: one plain final line
    meta = json.loads((out / "run.json").read_text())
    assert meta["seq_len"] == 128
    import math

    from safetensors import safe_open

    from normprobe.adapter import pick_device

    with safe_open(Path(normprobe.__file__).parent / "demo" / "model.safetensors", "pt") as weights:
        n_params = sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
    assert err.splitlines()[0] == (
        f"normprobe: loading demo (GPT-2, {n_params / 1e6:.2f}M parameters): float32 on {pick_device('auto')} ..."
    )
    summary = err.splitlines()[err.splitlines().index(next(l for l in err.splitlines() if l.startswith("probing: "))) + 1 :]
    # the summary is run.json's claims as a short table: the counts, what they were tested against, ...
    verdicts = [c["verdict"] for c in meta["claims"]]
    held, failed = verdicts.count("holds"), verdicts.count("does not hold")
    assert summary[0] == f"normprobe: claims: {held} hold, {failed} do not hold, {len(verdicts) - held - failed} undetermined"
    assert summary[1].startswith("normprobe:   each tested against the null only (no baseline); 95% intervals over")
    assert all(len(line) <= 120 for line in summary if str(out) not in line)  # a path is printed whole, however long


def test_log_progress_prints_the_last_line_once():
    stream = io.StringIO()
    bar = LogProgress(100, stream, every=0.0)
    bar.update(40)
    bar.update(60)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("probing: 40 tokens of 100 (40%)")
    assert lines[1].startswith("probing: 100 tokens of 100 (100%)")


def test_progress_total_becomes_what_the_corpus_held(tmp_path, capsys):
    """--max-tokens past the corpus: the last line counts what there was, not the limit asked for."""
    code, _, err = invoke(
        ["run", "demo", "--text", "a short text", "--max-tokens", "100000", "--out", str(tmp_path / "run")], capsys
    )
    assert code == 0, err
    n_tokens = json.loads((tmp_path / "run" / "run.json").read_text())["n_tokens"]
    line = next(l for l in err.splitlines() if l.startswith("probing: "))
    assert line.startswith(f"probing: {n_tokens:,} tokens of {n_tokens:,} (100%)"), line


def test_log_progress_names_its_unit_and_postfix():
    stream = io.StringIO()
    bar = LogProgress(10, stream, every=3600.0, unit="step", desc="training lens")
    bar.update(10)
    bar.set_postfix(kl="0.123")
    bar.close()
    assert stream.getvalue().startswith("training lens: 10 steps of 10 (100%), ")
    assert stream.getvalue().rstrip().endswith("step/s, kl 0.123") and "\r" not in stream.getvalue()


def test_resume_command_swaps_out_for_resume():
    argv = ["run", "demo", "--probe", "norms", "--out", "runs/a b", "--overwrite", "--max-docs", "3"]
    assert resume_command(argv, Path("ignored")) == "normprobe run demo --probe norms --max-docs 3 --resume 'runs/a b'"
    assert resume_command(["run", "demo"], Path("reports/demo-1")) == "normprobe run demo --resume reports/demo-1"


def test_run_two_models_writes_runs_and_comparison(tmp_path, capsys, family_dir):
    out = tmp_path / "both"
    code, stdout, err = invoke(
        [
            "run",
            "demo",
            str(family_dir("llama")),
            "--probe",
            "norms",
            "--probe",
            "updates",
            "--max-docs",
            "4",
            "--out",
            str(out),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs[0] == "1-demo" and runs[1].startswith("2-") and len(runs) == 2
    for run in runs:
        assert json.loads((out / run / "run.json").read_text())["status"] == "complete"
    page = (out / "report.html").read_text()
    assert "normprobe comparison: 1: demo vs 2: " in page and page.count("Plotly.newPlot") == 5
    # a 3-layer model is not subtracted layer by layer from the 4-layer demo
    assert "Left out, being of another depth than the first run: 2: " in page
    code, _, err = invoke(["compare", str(out / runs[0]), "--out", str(tmp_path / "c")], capsys)
    assert code == 1 and "at least two run folders" in err


def test_bad_format_is_refused_before_loading(tmp_path, capsys):
    code, _, err = invoke(["run", "demo", "--format", "gif", "--out", str(tmp_path / "x")], capsys)
    assert code == 1 and "--format must be html, png or svg" in err and not (tmp_path / "x").exists()


def test_hub_name_without_network_fails_fast(tmp_path, capsys, monkeypatch):
    import socket

    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    started = time.time()
    code, _, err = invoke(["run", "gpt2-small", "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 1 and time.time() - started < 10
    assert err.strip().splitlines() == [err.strip()] and "HF_HOME" in err and "HF_HUB_OFFLINE" in err


def test_parameter_count_is_the_checkpoints(demo_adapter, hf_model):
    from normprobe.adapter import DEMO_DIR

    # the bridge holds split q/k/v copies beside GPT-2's fused qkv; they are not the model's parameters
    assert demo_adapter.n_params == sum(p.numel() for p in hf_model(DEMO_DIR).parameters()) == 1_071_872

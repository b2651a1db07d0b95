"""Mistakes are refused before torch is imported: model names, options, probes, corpora (issue 33, item 6)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from normprobe.adapter import check_model_name, resolve_source
from normprobe.errors import NormprobeError

HEAVY = ("torch", "transformers", "transformer_lens")

# Each mistake, and what its one-line error must say. All are run in one process (below), in turn.
MISTAKES = [
    (["run", "demmo"], "did you mean demo?"),
    (["run", "pythia70m"], "did you mean pythia-70m?"),
    (["run", "demo", "--baseline", "random"], "did you mean random-init?"),
    (["run", "demo", "--max-docs", "-3"], "--max-docs must be at least 1 (got -3)"),
    (["run", "demo", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["run", "demo", "--seq-len", "1"], "--seq-len must be at least 2"),
    (["run", "demo", "--replicates", "1"], "--replicates must be an integer of at least 2"),
    (["run", "demo", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["run", "demo", "--probe", "norm"], "did you mean norms?"),
    (["run", "demo", "--readout", "lens"], "--readout must be model, logit or tuned:DIR"),
    (["run", "demo", "--readout", "tuned:/no/such/lens"], "tuned lens folder not found"),
    (["run", "demo", "--ablate"], "--ablate reruns the network"),
    (["run", "demo", "--massive-ratio", "0.5"], "--massive-ratio must be a finite number of at least 1"),
    (["run", "demo", "--readout-sample", "2"], "--readout-sample must be a fraction"),
    (["run", "demo", "--alphas", "x"], "invalid --alphas"),
    (["run", "demo", "--layers", "-1"], "invalid layer index -1"),
    (["run", "demo", "--shard", "3/2"], "invalid --shard"),
    (["run", "demo", "--device-map", "everywhere"], "--device-map must be one of"),
    (["run", "demo", "--max-memory", "lots"], "max-memory"),
    (["run", "demo", "--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
    (["run", "demo", "--baseline-seeds", "0", "--baseline", "random-init"], "--baseline-seeds must be at least 1"),
    (["run", "demo", "--input", "/no/such/file.txt"], "input file not found"),
    (["run", "demo", "--text", "  "], "every text given is empty"),
    (["trace", "demmo", "--text", "a"], "did you mean demo?"),
    (["trace", "demo"], "give the text to trace: --text TEXT (repeatable) or --input FILE"),
    (["trace", "demo", "--text", "a", "--top-k", "0"], "--top-k must be a whole number of at least 1"),
    (["trace", "demo", "--text", "a", "--readout", "model"], "--readout model has none"),
    (["lens", "train", "demmo", "--out", "lens"], "did you mean demo?"),
]

SCRIPT = """
import json, sys
from normprobe.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv + ["--no-progress"] if argv[0] != "lens" else argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    results.append([code, sorted(m for m in {heavy} if m in sys.modules)])
print(json.dumps(results))
""".replace("{heavy}", repr(HEAVY))


def test_each_mistake_is_one_line_before_torch_is_imported(tmp_path):
    argvs = [argv + ["--out", str(tmp_path / "out")] if argv[0] != "lens" else argv for argv, _ in MISTAKES]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(argvs)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("normprobe: error: ")]
    assert len(errors) == len(MISTAKES), proc.stderr  # one line each, no traceback
    for (argv, message), (code, heavy), line in zip(MISTAKES, results, errors):
        assert code == 1, (argv, line)
        assert message in line, (argv, line)
        assert heavy == [], (argv, heavy)  # validated without torch, transformers or TransformerLens
    assert not (tmp_path / "out").exists() and not (tmp_path / "lens").exists()


def test_options_are_data():
    """options.py checks a run without torch, and without the readouts or the run store."""
    code = (
        "import sys\nfrom normprobe.options import RunOptions, check_run\n"
        "RunOptions(max_docs=2, baselines=['shuffled'], readout='model', ablate=True).validate()\n"
        "check_run(['demo'], ['norms', 'updates'], texts=['a b'], max_docs=2, readout='logit')\n"
        "print(sorted(m for m in sys.modules if m in ('torch', 'transformers', 'transformer_lens', "
        "'normprobe.readouts', 'normprobe.store')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "name", ["demo", "gpt2", "gpt2-small", "distilgpt2", "EleutherAI/pythia-70m", "pythia-70m", "openai-gpt", "tiny-gpt2"]
)
def test_real_names_are_not_mistaken_for_typos(name):
    check_model_name(name)  # a Hub id without '/' far from every short name is left to the Hub


def test_a_typo_is_refused_but_a_folder_of_that_name_is_a_model(tmp_path, monkeypatch):
    with pytest.raises(NormprobeError, match="did you mean demo"):
        resolve_source("dmo")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dmo").mkdir()
    assert resolve_source("dmo").kind == "local"


def test_models_lists_demo_among_the_short_names(capsys):
    from normprobe.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["models"])
    assert exc.value.code == 0
    after = capsys.readouterr().out.split("Short names:\n", 1)[1].splitlines()
    assert after[0].split()[0] == "demo" and "built in" in after[0]
    assert after[1].split()[0] == "gpt2-small"

"""Regenerate the measured figures that the README and the docs quote, so none is typed by hand.

    .venv/bin/python scripts/docs_figures.py                 # the demo's quick start: time, console, claims
    .venv/bin/python scripts/docs_figures.py --bench NAME    # also run benchmarks/NAME.py and keep what it prints
    .venv/bin/python scripts/docs_figures.py --no-quickstart --suite 3   # time the README's test command
    .venv/bin/python scripts/docs_figures.py --no-quickstart --probe-examples   # only each probe page's example
    .venv/bin/python scripts/docs_figures.py --no-quickstart --gpu-check DIR   # what gpu_check.sh wrote to DIR

Each figure goes to docs/generated/<name>.md, which the docs include; the README's quick-start time
is rewritten between its `quickstart-time` markers. Every file names the machine it was measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "docs" / "generated"
BIN = Path(sys.executable).parent
# benchmark name -> its arguments; what it prints on stdout is kept as it printed it
BENCHMARKS: dict[str, list[str]] = {
    "bench_scaling": ["--quick"],
    "bench_readouts": [],
    "bench_trace": [],
}


def machine() -> str:
    import torch

    return (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), "
        f"{'a GPU' if torch.cuda.is_available() else 'no GPU'}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, measured {date.today().isoformat()} by scripts/docs_figures.py"
    )


def timed(command: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU (user + sys of the child) seconds of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}\n{done.stdout[-6000:]}")
    return wall, cpu, done


def write(name: str, text: str) -> None:
    GENERATED.mkdir(parents=True, exist_ok=True)
    (GENERATED / f"{name}.md").write_text(text)
    print(f"wrote docs/generated/{name}.md")


def quickstart() -> None:
    """Time the quick start's demo run as a newcomer would meet it, and keep its console and claims."""
    work = Path(tempfile.mkdtemp(prefix="normprobe-docs-"))
    try:
        out = work / "demo"
        command = [str(BIN / "normprobe"), "run", "demo", "--probe", "norms", "--probe", "updates", "--out", str(out)]
        wall, cpu, done = timed(command, work)
        sentence = (
            f"On a {os.cpu_count()}-core machine with nothing else running, the demo run took "
            f"**{wall:.0f} s** of wall time ({cpu:.0f} s of CPU) after the install "
            f"({machine()}).\n"
        )
        write("quickstart-time", sentence)
        console = (done.stderr.strip() + "\n" + done.stdout.strip()).replace(str(out), "reports/demo")
        command_line = "$ normprobe run demo --probe norms --probe updates --out reports/demo"
        write("demo-console", f"```\n{command_line}\n{console.replace(str(work), '.')}\n```\n")
        meta = json.loads((out / "run.json").read_text())
        if meta.get("claims"):
            write("demo-claims", claims_table(meta["claims"], command=shown(command, out, "reports/demo")))
        readme = ROOT / "README.md"
        start, end = "<!-- quickstart-time:start -->\n", "<!-- quickstart-time:end -->"
        text = readme.read_text()
        readme.write_text(text[: text.index(start) + len(start)] + sentence + text[text.index(end) :])
        print("rewrote the README's quick-start time")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _number(value) -> str:
    return "–" if value is None or value != value else f"{value:.3g}"


def _interval(row: dict, prefix: str = "") -> str:
    value = row.get(f"{prefix}value" if prefix else "value")
    low, high = row.get(f"{prefix}ci_low"), row.get(f"{prefix}ci_high")
    return f"{_number(value)} [{_number(low)}, {_number(high)}]"


def shown(command: list[str], out: Path, shown_out: str) -> str:
    """The command as a reader would type it: `normprobe ...`, the output folder under reports/, no --no-progress."""
    words = ["normprobe", *command[1:]]
    return shlex.join(shown_out if w == str(out) else w for w in words if w != "--no-progress")


def claims_table(claims: list[dict], kinds: list[str] = (), keep=lambda row: True, command: str = "") -> str:
    """Claims as a markdown table: claim, layer, component, value [CI], each baseline and the difference, verdict;
    after the command that produced them, where given."""
    head = ["claim", "layer", "component", "value [95% CI]"]
    for kind in kinds:
        head += [f"{kind} [CI]", f"model − {kind} [CI]"]
    lines = ["| " + " | ".join(head + ["verdict"]) + " |", "|" + " --- |" * (len(head) + 1)]
    for row in filter(keep, claims):
        cells = [
            str(row.get("claim")),
            "" if row.get("layer") is None else str(row["layer"]),
            str(row.get("component") or ""),
            _interval(row),
        ]
        for kind in kinds:
            key = kind.replace("-", "_") + "_"
            cells += [
                _interval(row, key),
                f"{_number(row.get(key + 'difference'))} "
                f"[{_number(row.get(key + 'difference_ci_low'))}, {_number(row.get(key + 'difference_ci_high'))}]",
            ]
        lines.append("| " + " | ".join(cells + [str(row.get("verdict"))]) + " |")
    made_by = f"From `{command}`:\n\n" if command else ""
    return made_by + "\n".join(lines) + f"\n\n({machine()}.)\n"


def headline(row: dict) -> bool:
    """The rows the README shows: norm growth per step, position 0's norm, the block's descent, the lens-loss drop."""
    return (
        row.get("claim") in ("norm_growth", "position0_ratio")
        or (row.get("claim") == "descent" and row.get("component") == "block")
        or (row.get("claim") == "lens_loss_drop" and row.get("component") == "to output")
    )


def with_baselines() -> None:
    """The demo against its random-init, shuffled and no-bos baselines: the table the README and the claims page show."""
    work = Path(tempfile.mkdtemp(prefix="normprobe-docs-"))
    try:
        out = work / "demo"
        command = [
            str(BIN / "normprobe"),
            "run",
            "demo",
            "--probe",
            "norms",
            "--probe",
            "updates",
            "--baseline",
            "random-init",
            "--baseline",
            "shuffled",
            "--baseline",
            "no-bos",
            "--max-docs",
            "80",
            "--no-progress",
            "--out",
            str(out),
        ]
        timed(command, work)
        claims = json.loads((out / "run.json").read_text())["claims"]
        kinds = ["random-init", "shuffled", "no-bos"]
        made_by = shown(command, out, "reports/demo-baselines")
        write("demo-claims-baselines", claims_table(claims, kinds, command=made_by))
        table = claims_table(claims, kinds, keep=headline, command=made_by)
        readme = ROOT / "README.md"
        start, end = "<!-- demo-claims:start -->\n", "<!-- demo-claims:end -->"
        text = readme.read_text()
        readme.write_text(text[: text.index(start) + len(start)] + table + text[text.index(end) :])
        print("rewrote the README's demo claims")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# probe -> (its main table, the rows a probe page shows, as a pandas query, and the columns)
PROBE_EXAMPLES: dict[str, tuple[str, str, list[str]]] = {
    "norms": ("norms", "site == 'resid_pre' and position == 1", ["site", "layer", "position", "count", "mean", "std"]),
    "updates": (
        "updates",
        "component == 'block'",
        ["layer", "component", "count", "update_norm_mean", "lens_loss_mean", "descent_cos_mean", "actual_change_mean"],
    ),
    "linesearch": (
        "line_search",
        "component == 'block' and layer == 1",
        ["layer", "component", "alpha", "count", "lens_loss_mean"],
    ),
    "massive": (
        "massive",
        "site == 'resid_pre' and position == 0",
        ["site", "layer", "position", "max_abs_mean", "median_abs_mean", "max_dim_mode", "norm_mean"],
    ),
}


def load_note() -> str:
    """'; a load average of L on N cores: ...' where other work shared the machine, else ''."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load < cores:
        return ""
    return f"; a load average of {load:.1f} on {cores} cores: the timings printed are not representative"


def probe_examples() -> None:
    """Each probe page's example: one probe on the demo, what the run prints, and rows of its main table."""
    import pandas as pd

    work = Path(tempfile.mkdtemp(prefix="normprobe-docs-"))
    try:
        for probe, (table, query, columns) in PROBE_EXAMPLES.items():
            out = work / probe
            command = [str(BIN / "normprobe"), "run", "demo", "--probe", probe, "--max-docs", "40", "--out", str(out)]
            _, _, done = timed(command, work)
            folder = f"reports/demo-{probe}"
            console = (done.stderr.strip() + "\n" + done.stdout.strip()).replace(str(out), folder)
            rows = pd.read_parquet(out / f"{table}.parquet").query(query)[columns]
            code = f'pandas.read_parquet("{folder}/{table}.parquet").query("{query}")'
            write(
                f"probe-{probe}",
                f"```\n$ {shown(command, out, folder)}\n{console}\n```\n\n"
                f"Rows of its main table, `{code}`:\n\n"
                f"```\n{rows.to_string(index=False, float_format=lambda v: f'{v:.4g}')}\n```\n\n"
                f"({machine()}{load_note()}.)\n",
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def suite(repeats: int) -> None:
    """The README's test command in fresh clones of this checkout's HEAD, `repeats` times: wall and CPU time each."""
    import re

    runs = []
    for _ in range(repeats):
        clone = Path(tempfile.mkdtemp(prefix="normprobe-suite-")) / "clone"
        try:
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            readme = (clone / "README.md").read_text()
            command = readme.split("<!-- test-command -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip()
            wall, cpu, done = timed(["bash", "-euo", "pipefail", "-c", command], clone)
            counts = re.findall(r"^(\d+ passed.*) in [0-9.]+s", done.stdout, re.M)
            runs.append(f"{wall:.0f} s wall, {cpu:.0f} s CPU ({counts[-1] if counts else 'no test count found'})")
            print(runs[-1])
        finally:
            shutil.rmtree(clone.parent, ignore_errors=True)
    sentence = (
        f"The README's test command (install, lint, format, types, docs and tests) from a fresh clone, "
        f"{repeats} time{'s' if repeats > 1 else ''} in a row: " + "; ".join(runs) + f" ({machine()}).\n"
    )
    write("suite-cost", sentence)
    readme = ROOT / "README.md"
    start, end = "<!-- suite-cost:start -->\n", "<!-- suite-cost:end -->"
    text = readme.read_text()
    readme.write_text(text[: text.index(start) + len(start)] + sentence + text[text.index(end) :])


def benchmark(name: str) -> None:
    script = ROOT / "benchmarks" / f"{name}.py"
    if not script.exists():
        sys.exit(f"no benchmark {script}")
    command = [sys.executable, str(script), *BENCHMARKS.get(name, [])]
    wall, _, done = timed(command, ROOT)
    shown = " ".join(["benchmarks/" + script.name, *BENCHMARKS.get(name, [])])
    write(name, f"```\n$ python {shown}\n{done.stdout.strip()}\n```\n\n({machine()}; it took {wall:.0f} s.)\n")


GPU_LOG_KEEP = ("==", "date ", "torch ", "packages ", "FAILED", "ERROR", "done with")


def gpu_check(folder: Path) -> None:
    """docs/generated/gpu-check.md from benchmarks/gpu_check.sh's output folder (run on the GPU machine, fetched)."""
    import re

    log = folder / "gpu_check.log"
    if not log.exists():
        sys.exit(f"no {log}: run benchmarks/gpu_check.sh with OUT={folder} first")
    kept = [
        line.rstrip()
        for line in log.read_text().splitlines()
        if line.startswith(GPU_LOG_KEEP) or re.search(r"\d+ (passed|failed|error)", line) and " in " in line
    ]
    text = "`benchmarks/gpu_check.sh` as it printed (its summary lines; every failing test is named):\n\n```\n"
    text += "\n".join(kept) + "\n```\n"
    table = folder / "bench_throughput.md"
    text += f"\n{table.read_text()}" if table.exists() else "\nThe throughput benchmark wrote no table.\n"
    write("gpu-check", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="append", default=[], help="also run benchmarks/NAME.py (repeatable; 'all')")
    parser.add_argument("--no-quickstart", action="store_true")
    parser.add_argument("--suite", type=int, default=0, metavar="N", help="also time the README's test command N times")
    parser.add_argument("--probe-examples", action="store_true", help="also each probe page's example on the demo")
    parser.add_argument("--gpu-check", type=Path, metavar="DIR", help="write gpu-check.md from benchmarks/gpu_check.sh's DIR")
    args = parser.parse_args()
    if not args.no_quickstart:
        quickstart()
        with_baselines()
    if args.probe_examples or not args.no_quickstart:
        probe_examples()
    if args.suite:
        suite(args.suite)
    for name in list(BENCHMARKS) if args.bench == ["all"] else args.bench:
        benchmark(name)
    if args.gpu_check:
        gpu_check(args.gpu_check)


if __name__ == "__main__":
    main()

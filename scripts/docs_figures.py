"""Regenerate the measured figures that the README and the docs quote, so none is typed by hand.

    .venv/bin/python scripts/docs_figures.py                 # the demo's quick start: time, console, claims
    .venv/bin/python scripts/docs_figures.py --bench NAME    # also run benchmarks/NAME.py and keep what it prints

Each figure goes to docs/generated/<name>.md, which the docs include; the README's quick-start time
is rewritten between its `quickstart-time` markers. Every file names the machine it was measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
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
        console = done.stderr.replace(str(out), "reports/demo").replace(str(work), ".")
        write(
            "demo-console",
            "```\n$ normprobe run demo --probe norms --probe updates --out reports/demo\n"
            + console.strip()
            + "\n"
            + done.stdout.strip()
            + "\n```\n",
        )
        meta = json.loads((out / "run.json").read_text())
        if meta.get("claims"):
            write("demo-claims", claims_table(meta["claims"]))
        readme = ROOT / "README.md"
        start, end = "<!-- quickstart-time:start -->\n", "<!-- quickstart-time:end -->"
        text = readme.read_text()
        readme.write_text(text[: text.index(start) + len(start)] + sentence + text[text.index(end) :])
        print("rewrote the README's quick-start time")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def claims_table(claims: list[dict]) -> str:
    """The demo's claims as a markdown table: claim, where, value [CI], verdict."""
    lines = ["| claim | layer | component | value [95% CI over documents] | verdict |", "| --- | --- | --- | --- | --- |"]
    for row in claims:

        def number(key: str) -> str:
            value = row.get(key)
            return "–" if value is None else f"{value:.4g}"

        where = "" if row.get("layer") is None else str(row["layer"])
        lines.append(
            f"| {row.get('claim')} | {where} | {row.get('component') or ''} | "
            f"{number('value')} [{number('ci_low')}, {number('ci_high')}] | {row.get('verdict')} |"
        )
    return "\n".join(lines) + f"\n\n({machine()}.)\n"


def benchmark(name: str) -> None:
    script = ROOT / "benchmarks" / f"{name}.py"
    if not script.exists():
        sys.exit(f"no benchmark {script}")
    command = [sys.executable, str(script), *BENCHMARKS.get(name, [])]
    wall, _, done = timed(command, ROOT)
    shown = " ".join(["benchmarks/" + script.name, *BENCHMARKS.get(name, [])])
    write(name, f"```\n$ python {shown}\n{done.stdout.strip()}\n```\n\n({machine()}; it took {wall:.0f} s.)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="append", default=[], help="also run benchmarks/NAME.py (repeatable; 'all')")
    parser.add_argument("--no-quickstart", action="store_true")
    args = parser.parse_args()
    if not args.no_quickstart:
        quickstart()
    for name in list(BENCHMARKS) if args.bench == ["all"] else args.bench:
        benchmark(name)


if __name__ == "__main__":
    main()

"""Write every table of four small demo runs, or check that two such folders hold bit-identical tables.

    .venv/bin/python scripts/golden_tables.py OUT                 # run the four runs into OUT/<name>/
    .venv/bin/python scripts/golden_tables.py --compare A B       # every table of A equals B bit for bit

The runs: the demo with every probe, the same with every baseline, a trace, and `--readout model --ablate`.
A restructuring that must not change any number is checked by running this before and after it (the code
imported is the checkout this script sits in). Floats are compared by their bytes, NaN included.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--max-docs", "3", "--seq-len", "24", "--batch-size", "2", "--replicates", "8", "--no-progress", "--plotlyjs", "cdn"]
PROBES = ["-p", "norms", "-p", "updates", "-p", "linesearch", "-p", "massive"]
RUNS: dict[str, list[str]] = {
    "demo": ["run", "demo", *PROBES, *SMALL],
    "baselines": [
        "run",
        "demo",
        *PROBES,
        *SMALL,
        "--baseline",
        "random-init",
        "--baseline",
        "shuffled",
        "--baseline",
        "no-bos",
        "--baseline-seeds",
        "2",
    ],
    "trace": ["trace", "demo", "--text", "The return statement leaves the current function call.", "--plotlyjs", "cdn"],
    "model-ablate": ["run", "demo", "-p", "updates", "-p", "linesearch", "--readout", "model", "--ablate", *SMALL],
}


def write(out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    for name, args in RUNS.items():
        cmd = [sys.executable, "-m", "normprobe", *args, "--out", str(out / name)]
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def tables(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*.parquet"))}


def same_frame(a, b) -> str | None:
    """None when a and b are equal bit for bit, else what differs."""
    import numpy as np

    if list(a.columns) != list(b.columns) or list(a.dtypes) != list(b.dtypes) or len(a) != len(b):
        return f"schema or length: {list(zip(a.columns, a.dtypes))} ({len(a)}) vs {list(zip(b.columns, b.dtypes))} ({len(b)})"
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind in "fiub":
            if x.tobytes() != y.tobytes():
                differs = ~((x == y) | (np.isnan(x) & np.isnan(y))) if x.dtype.kind == "f" else x != y
                return f"column {col}: {int(differs.sum())} values differ, e.g. {x[differs][:3]} vs {y[differs][:3]}"
        elif list(map(repr, x)) != list(map(repr, y)):
            return f"column {col} differs"
    return None


# run.json keys that name the checkout, the clock or the machine rather than a result
VOLATILE = {"resolved_model", "created", "versions", "seconds", "request", "memory_budget_bytes"}


def run_json(path: Path) -> dict:
    import json

    return {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k not in VOLATILE}


def compare(a: Path, b: Path) -> int:
    import pandas as pd

    ta, tb = tables(a), tables(b)
    bad = sorted(set(ta) ^ set(tb))
    for name in bad:
        print(f"only in one folder: {name}")
    for name in sorted(set(ta) & set(tb)):
        why = same_frame(pd.read_parquet(ta[name]), pd.read_parquet(tb[name]))
        if why:
            bad.append(name)
            print(f"{name}: {why}")
    for path in sorted(a.rglob("run.json")):
        name = str(path.relative_to(a))
        other = b / name
        if not other.exists() or run_json(path) != run_json(other):
            bad.append(name)
            print(f"{name}: differs (keys other than {sorted(VOLATILE)})")
    print(f"{len(ta)} tables in {a}, {len(tb)} in {b}: {'identical' if not bad else f'{len(bad)} differ'}")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, help="folder to write the four runs into")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        parser.error("give OUT or --compare A B")
    write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

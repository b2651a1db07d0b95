"""What a trace costs against a plain `run --probe norms` on the same tokens (the issue's target: at most 1.5x).

Three comparisons, each measured within this one process run so that their ratio holds on a busy machine:
  - compute, with the model loaded once: `normprobe.trace(model, docs)` against
    `normprobe.run(model, texts=docs, probes=["norms"])` (each document fits one window, so both read the same tokens);
  - compute and the folder: the same, then `.save()` (trace.html against report.html);
  - the command end to end in a fresh interpreter (imports, model load, folder): `normprobe trace` against
    `normprobe run --probe norms`, the same --text arguments.
Times are the median of --repeats runs after one warm-up (the commands: --cli-repeats, no warm-up).
Run from the repository root:

    .venv/bin/python benchmarks/bench_trace.py                      # the demo model, about a minute
    .venv/bin/python benchmarks/bench_trace.py --shape quick        # a random GPT-2, d 256, vocabulary 8192
    .venv/bin/python benchmarks/bench_trace.py --shape gpt2-small   # GPT-2 small's shape (vocabulary 50257)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_probe import SHAPES, build_model, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a random GPT-2 of this shape instead of the demo")
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=96, help="tokens per document, BOS included")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli-repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import normprobe
    from normprobe.corpus import sample_documents

    work = Path(tempfile.mkdtemp(prefix="normprobe-bench-trace-"))
    name = str(build_model(args.shape, work / "model")) if args.shape else "demo"
    model = normprobe.load_model(name, device=args.device)
    # documents of exactly --tokens tokens (BOS + body), each one window of the run
    body = model.encode(" ".join(sample_documents(None)))
    step = args.tokens - 1
    docs = [model.tokenizer.decode(body[i * step : (i + 1) * step]) for i in range(args.docs)]
    docs = [model.tokenizer.decode(model.encode(d)[:step]) for d in docs]  # round-trip: re-encoding may differ

    def run():
        return normprobe.run(model, texts=docs, probes=["norms"], progress=False, device=args.device)

    def trace():
        return normprobe.trace(model, docs, device=args.device)

    n_run = run().meta["n_tokens"]
    n_trace = trace().meta["n_tokens"]
    rows = []
    t_run, _ = timed(run, args.repeats)
    t_trace, _ = timed(trace, args.repeats)
    rows.append(("compute, model loaded", t_run, t_trace))
    counter = iter(range(10**6))
    t_run_s, _ = timed(lambda: run().save(work / f"run{next(counter)}"), args.repeats)
    t_trace_s, _ = timed(lambda: trace().save(work / f"trace{next(counter)}"), args.repeats)
    rows.append(("compute + save folder", t_run_s, t_trace_s))

    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    texts = [a for d in docs for a in ("--text", d)]
    common = [name, *texts, "--no-progress", "--device", args.device, "--overwrite"]

    def command(kind: str) -> float:
        extra = ["--probe", "norms"] if kind == "run" else []
        times = []
        for i in range(args.cli_repeats):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "normprobe", kind, *common, *extra, "--out", str(work / f"cli-{kind}{i}")],
                check=True,
                env=env,
                capture_output=True,
            )
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    rows.append(("command end to end", command("run"), command("trace")))
    print(
        f"model {name if not args.shape else args.shape}: {model.n_layers} layers, d_model {model.d_model}, "
        f"vocabulary {model.d_vocab}; {args.docs} documents, tokens run {n_run} / trace {n_trace}"
    )
    print(f"{'measure':<26}{'run norms (s)':>15}{'trace (s)':>12}{'ratio':>8}")
    for label, a, b in rows:
        print(f"{label:<26}{a:>15.3f}{b:>12.3f}{b / a:>7.2f}x")


if __name__ == "__main__":
    main()

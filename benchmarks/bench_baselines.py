"""What null baselines cost: `--baseline random-init --baseline-seeds 3` and `--baseline shuffled` against the model alone.

Each configuration runs in its own process (so its peak RSS is its own) on a locally built GPT-2-shaped model
with random weights and the demo tokenizer, over the first --docs documents of the built-in sample. Reported:
  - the run's CPU time (model load included; on a shared machine CPU time is steadier than wall time, which
    is shown too) and its ratio to the plain run, against the target (1 + baseline passes) x plain + 10%
    (random-init with 3 seeds is 3 passes, shuffled 1);
  - peak RSS and its ratio to the plain run's, against the target of one model plus its probes + 10%
    (the plain run's own peak is exactly that).
Times are the median of --repeats runs. Run from the repository root:

    .venv/bin/python benchmarks/bench_baselines.py                        # a small shape, about a minute
    .venv/bin/python benchmarks/bench_baselines.py --d-model 1024 --layers 24   # GPT-2-medium's shape
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import normprobe
from normprobe.corpus import sample_documents
args = json.loads(sys.argv[1])
docs = sample_documents()[: args["docs"]]
started, cpu = time.perf_counter(), time.process_time()
normprobe.run(args["model"], texts=docs, probes=args["probes"], seq_len=args["seq_len"], progress=False,
              device="cpu", baselines=args["baselines"], baseline_seeds=args["seeds"])
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

CONFIGS = [
    ("model alone", [], 0),
    ("--baseline shuffled", ["shuffled"], 1),
    ("--baseline random-init --baseline-seeds 3", ["random-init"], 3),
]


def build_model(folder: Path, d_model: int, layers: int) -> Path:
    from random_model import save_random_model
    from transformers import AutoTokenizer, GPT2Config

    from normprobe.adapter import DEMO_DIR

    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=d_model,
        n_layer=layers,
        n_head=max(1, d_model // 64),
        n_positions=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return save_random_model(config, folder, tokenizer=tokenizer)


def measure(args, model: str, baselines: list[str]) -> dict[str, float]:
    runs = []
    for _ in range(args.repeats):
        spec = {
            "model": model,
            "docs": args.docs,
            "probes": args.probes,
            "seq_len": args.seq_len,
            "baselines": baselines,
            "seeds": 3,
        }
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(spec)],
            capture_output=True,
            text=True,
            env={
                "OMP_NUM_THREADS": str(args.threads),
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            },
        )
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "cpu": statistics.median(r["cpu"] for r in runs),
        "peak_rss": statistics.median(r["peak_rss"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--probes", nargs="+", default=["norms", "updates"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_model(Path(tmp), args.d_model, args.layers))
        found = {label: measure(args, model, baselines) for label, baselines, _ in CONFIGS}
    plain = found["model alone"]
    print(
        f"GPT-2 shape d_model {args.d_model}, {args.layers} layers; {args.docs} documents, seq_len {args.seq_len}; "
        f"probes {' '.join(args.probes)}; {args.threads} thread(s); median of {args.repeats}"
    )
    print(
        f"{'configuration':45} {'wall s':>7} {'CPU s':>7} {'x plain':>8} {'target':>8} {'peak RSS':>10} "
        f"{'x plain':>8} {'target':>7}"
    )
    for label, _, passes in CONFIGS:
        row = found[label]
        time_ratio, rss_ratio = row["cpu"] / plain["cpu"], row["peak_rss"] / plain["peak_rss"]
        target = (1 + passes) * 1.1
        print(
            f"{label:45} {row['seconds']:7.2f} {row['cpu']:7.2f} {time_ratio:8.2f} {'≤' + format(target, '.2f'):>8} "
            f"{row['peak_rss'] / 2**20:8.0f}MB {rss_ratio:8.2f} {'≤1.10':>7}"
            f"{'' if time_ratio <= target and rss_ratio <= 1.1 else '  (over target)'}"
        )


if __name__ == "__main__":
    main()

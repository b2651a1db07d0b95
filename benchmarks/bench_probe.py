"""normprobe against the forward-only floor: wall time, peak memory, throughput, and where the time goes.

Each measure runs the same windows (same batch size, dtype and device) on a GPT-2-small-shaped model
built from its config (random weights; speed does not depend on them). Times are the median of
--repeats runs after one warm-up; memory is the peak resident-set growth during one pass, sampled
every millisecond. Run from the repository root:

    .venv/bin/python benchmarks/bench_probe.py            # GPT-2 small shape, about 10 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_probe.py --quick    # a small model, under a minute

It prints a table and writes benchmarks/results/<shape>-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from random_model import GPT2_SMALL

SHAPES = {
    "gpt2-small": dict(**GPT2_SMALL, n_positions=1024),
    "quick": dict(n_embd=256, n_layer=4, n_head=4, vocab_size=8192, n_positions=512),
}


class PeakRSS:
    """Peak resident-set growth (bytes) over a block, sampled from /proc every millisecond."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = False
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.growth = self.peak - self.start


def build_model(shape: str, folder: Path) -> Path:
    """A random GPT-2 of the given shape, saved with the demo model's tokenizer."""
    from random_model import save_random_model
    from transformers import GPT2Config

    return save_random_model(GPT2Config(**SHAPES[shape], bos_token_id=0, eos_token_id=0), folder)


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model instead of the GPT-2-small shape")
    parser.add_argument("--docs", type=int, default=24)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    shape = "quick" if args.quick else "gpt2-small"

    import normprobe
    from normprobe.batching import iter_batches, iter_windows
    from normprobe.corpus import sample_documents

    work = Path(tempfile.mkdtemp(prefix="normprobe-bench-"))
    folder = build_model(shape, work / "model")
    model = normprobe.load_model(str(folder), device=args.device)
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").to(args.device).eval()
    # long documents so every window is full: the same windows for every measure
    long_docs = [" ".join(sample_documents(None)[i :: args.docs]) for i in range(args.docs)]
    windows = list(iter_windows(long_docs, model.encode, args.seq_len, model.bos_token_id, max_docs=args.docs))
    windows = [w for w in windows if len(w.tokens) == args.seq_len][: args.docs]
    texts = [model.tokenizer.decode(w.tokens[1:]) for w in windows]
    batches = list(iter_batches(windows, args.batch_size, model.pad_token_id, args.device))
    n_tokens = sum(b.n_tokens for b in batches)
    results: dict[str, dict] = {}

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def hf_forward():
        with torch.inference_mode():
            for b in batches:
                hf(b.tokens, attention_mask=b.mask.long())
        sync()

    def bridge_forward():
        with torch.inference_mode():
            for b in batches:
                model.forward(b.tokens, b.mask.long(), [])
        sync()

    readout = model.readout

    def readout_floor():
        """One forward, then final norm + unembedding + cross-entropy at each of h_0..h_L, in float32."""
        with torch.inference_mode():
            for b in batches:
                out = hf.transformer(b.tokens, attention_mask=b.mask.long(), output_hidden_states=True)
                targets = b.next_tokens[b.has_next]
                states = list(out.hidden_states[:-1])
                for h in states:
                    readout.loss(h[b.has_next].float(), targets)
                # hidden_states[-1] is after the final norm; the last readout uses the block output
                readout.loss(states[-1][b.has_next].float(), targets)
        sync()

    def gradient_floor():
        """The readout floor plus the backward through the readout: the exact gradient at h_0..h_L."""
        with torch.inference_mode():
            for b in batches:
                out = hf.transformer(b.tokens, attention_mask=b.mask.long(), output_hidden_states=True)
                targets = b.next_tokens[b.has_next]
                for h in out.hidden_states[:-1]:
                    readout.loss_and_grad(h[b.has_next].float(), targets)
                readout.loss(out.hidden_states[-2][b.has_next].float(), targets)
        sync()

    def probe(names):
        def go():
            normprobe.run(model, texts=texts, probes=names, batch_size=args.batch_size, seq_len=args.seq_len, progress=False)
            sync()

        return go

    def run_with_cache_norms():
        with torch.inference_mode():
            for b in batches:
                _, cache = model.bridge.run_with_cache(b.tokens, attention_mask=b.mask.long())
                for name, act in cache.items():
                    if any(name.endswith(f"hook_{s}") for s in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")):
                        act.float().norm(dim=-1)[b.mask].cpu().numpy()
                del cache
        sync()

    def tokenise():
        list(iter_windows(texts, model.encode, args.seq_len, model.bos_token_id))

    def save_results():
        result = normprobe.run(model, texts=texts[:2], probes=["norms"], seq_len=args.seq_len, progress=False)
        result.save(Path(tempfile.mkdtemp()) / "out", report=False)

    measures = [
        ("hf_forward", hf_forward),
        ("bridge_forward", bridge_forward),
        ("norms_probe", probe(["norms"])),
        ("readout_floor", readout_floor),
        ("gradient_floor", gradient_floor),
        ("updates_probe", probe(["updates"])),
        ("run_with_cache_norms", run_with_cache_norms),
        ("tokenise", tokenise),
        ("save_tables", save_results),
    ]
    for name, fn in measures:
        median, times = timed(fn, args.repeats)
        with PeakRSS() as mem:
            fn()
        results[name] = {"seconds": median, "all_seconds": times, "peak_rss_growth_mb": mem.growth / 2**20}
        print(f"  {name:<22} {median:8.3f} s   peak +{mem.growth / 2**20:8.1f} MB", flush=True)

    # memory against corpus size: 10x the documents
    many = texts * 10
    with PeakRSS() as small:
        normprobe.run(model, texts=texts, probes=["norms"], batch_size=args.batch_size, seq_len=args.seq_len, progress=False)
    with PeakRSS() as large:
        normprobe.run(model, texts=many, probes=["norms"], batch_size=args.batch_size, seq_len=args.seq_len, progress=False)

    r = {k: v["seconds"] for k, v in results.items()}
    ratios = {
        "norms_vs_hf_forward": r["norms_probe"] / r["hf_forward"],
        "updates_vs_readout_floor": r["updates_probe"] / r["readout_floor"],
        "updates_vs_gradient_floor": r["updates_probe"] / r["gradient_floor"],
        "run_with_cache_vs_norms": r["run_with_cache_norms"] / r["norms_probe"],
        "norms_peak_vs_hf_peak": results["norms_probe"]["peak_rss_growth_mb"]
        / max(results["hf_forward"]["peak_rss_growth_mb"], 1e-9),
        "norms_peak_10x_docs_vs_1x": large.growth / max(small.growth, 1),
    }
    breakdown = {
        "forward (bridge, no hooks)": r["bridge_forward"],
        "hooks and statistics (norms probe - bridge forward - tokenise)": r["norms_probe"] - r["bridge_forward"] - r["tokenise"],
        "readouts and gradients (updates probe - norms probe)": r["updates_probe"] - r["norms_probe"],
        "tokenisation": r["tokenise"],
        "I/O (saving tables for a tiny run)": r["save_tables"],
    }
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }
    report = {
        "shape": shape,
        "config": SHAPES[shape],
        "n_tokens": n_tokens,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "repeats": args.repeats,
        "machine": machine,
        "measures": results,
        "ratios": ratios,
        "tokens_per_second": {k: n_tokens / v for k, v in r.items() if k in ("hf_forward", "norms_probe", "updates_probe")},
        "breakdown_seconds": breakdown,
        "memory_vs_corpus_mb": {"1x": small.growth / 2**20, "10x": large.growth / 2**20},
    }
    print(
        f"\n{shape} on {args.device} ({machine['cpus']} CPUs, torch {torch.__version__}), {n_tokens} tokens, "
        f"batch {args.batch_size} x {args.seq_len}, median of {args.repeats}"
    )
    print(f"{'measure':<34}{'value':>10}  target")
    targets = {
        "norms_vs_hf_forward": "<= 1.10",
        "updates_vs_readout_floor": "<= 1.20",
        "norms_peak_vs_hf_peak": "<= 1.15",
        "norms_peak_10x_docs_vs_1x": "<= 1.10",
    }
    for key, value in ratios.items():
        print(f"{key:<34}{value:>10.3f}  {targets.get(key, '')}")
    for key, value in report["tokens_per_second"].items():
        print(f"tokens/s {key:<25}{value:>10.1f}")
    print("where the time goes (s):")
    for key, value in breakdown.items():
        print(f"  {key:<66}{value:>8.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{shape}-{args.device.replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

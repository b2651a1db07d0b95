"""Throughput over a long corpus: normprobe's probes against Hugging Face's default forward, in tokens per second.

A synthetic corpus (random token ids decoded by the demo tokenizer; no downloads) is cut into windows
of --seq-len tokens by normprobe's own windowing, and streamed through a randomly initialised model
of the Llama-3.2-1B shape (--shape 1b, built locally from LlamaConfig) in --dtype. For each workload
the script times two runs, a short one (one batch) and the whole budget, and splits their times into
a rate and a per-run fixed cost: tokens/s = (N - n) / (t_N - t_n), fixed = t_n - n / rate. Loading
(normprobe.load_model against Hugging Face's from_pretrained) is timed apart.

Workloads, over the same windows and batches (the automatic batch size normprobe picks for norms):
  hf_forward   Hugging Face's default forward, `model(ids, attention_mask=...)`, logits included: the floor
  hf_body      the same without the logits (normprobe never computes them for norms)
  norms        normprobe.run(probes=["norms"])
  baselines    norms with baselines=["random-init"], baseline_seeds=3 (tokens/s counts corpus tokens)
  updates      normprobe.run(probes=["updates"]) over --slow-tokens
  readouts     Hugging Face's forward with every layer's hidden state, and a logit readout (loss) of each
               layer, over the same --slow-tokens: what `updates` is compared with
  trace        normprobe.trace of --trace-texts texts of at most --trace-tokens tokens
Peak GPU memory of norms and of HF's forward is each measured in its own process (CUDA only).

    python benchmarks/bench_throughput.py --shape tiny --device cpu --tokens 8192   # smoke test, seconds
    python benchmarks/bench_throughput.py --shape 1b --device cuda --out benchmarks/results
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from random_model import LLAMA_1B_WIDTH, save_random_model

SHAPES = {
    # Llama-3.2-1B, as in ENVIRONMENT.md
    "1b": dict(**LLAMA_1B_WIDTH, num_hidden_layers=16, tie_word_embeddings=True, max_position_embeddings=4096),
    "tiny": dict(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=512,
    ),
}
SHAPE_NAMES = {"1b": "Llama-3.2-1B shape", "tiny": "A tiny Llama (the smoke test)"}
TARGETS = {  # issue 35
    "norms_vs_hf_forward": ">= 0.9 (tokens/s)",
    "fixed_beyond_from_pretrained_s": "<= 3",
    "updates_vs_readouts": "<= 3 (time)",
    "norms_peak_vs_hf_forward": "<= 1.10",
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(shape: str, folder: Path, dtype: torch.dtype, device: str) -> Path:
    from transformers import LlamaConfig

    config = LlamaConfig(**SHAPES[shape], bos_token_id=0, eos_token_id=0)
    save_random_model(config, folder, str(dtype).removeprefix("torch."), device=device)
    gc.collect()
    return folder


def corpus(tokens: int, seq_len: int) -> list[str]:
    """Documents of random demo-tokenizer ids, decoded: about 1.5 windows each, with a margin of 40%."""
    from transformers import PreTrainedTokenizerFast

    from normprobe.adapter import DEMO_DIR

    tokenizer = PreTrainedTokenizerFast.from_pretrained(DEMO_DIR)
    per_doc = seq_len * 3 // 2
    n_docs = int(1.4 * tokens / per_doc) + 2
    ids = torch.randint(1, len(tokenizer), (n_docs, per_doc), generator=torch.Generator().manual_seed(1))
    return tokenizer.batch_decode(ids.tolist())


def two_point(run, small: int, large: int, device: str, warm_up: bool = True) -> dict:
    """run(token_budget) -> tokens done; the rate from the difference of two runs, the fixed cost from the short one."""
    if warm_up:  # kernels chosen, caches filled
        run(small)
        sync(device)
    times, done = [], []
    for budget in (small, large):
        started = time.perf_counter()
        done.append(run(budget))
        sync(device)
        times.append(time.perf_counter() - started)
    spread = times[1] - times[0]
    if done[1] < 2 * done[0] or spread <= 0:  # too few batches (or too much noise) to tell the two apart
        return {"tokens": done[1], "seconds": times[1], "tokens_per_s": done[1] / times[1], "fixed_s": float("nan")}
    rate = (done[1] - done[0]) / spread
    return {
        "tokens": done[1],
        "seconds": times[1],
        "tokens_per_s": rate,
        "fixed_s": times[0] - done[0] / rate,
        "short_run": {"tokens": done[0], "seconds": times[0]},
    }


def windows_of(model, texts: list[str], seq_len: int, tokens: int):
    from normprobe.batching import iter_windows

    return list(iter_windows(texts, model.encode, seq_len, model.bos_token_id, max_tokens=tokens))


def prefix(windows: list, tokens: int) -> list:
    """The first windows holding `tokens` tokens: those normprobe's max_tokens keeps (ids made once, untimed)."""
    kept, total = [], 0
    for window in windows:
        if total >= tokens:
            break
        kept.append(window)
        total += len(window.tokens)
    return kept


def measure(args) -> dict:
    from transformers import AutoModelForCausalLM

    import normprobe
    from normprobe.batching import iter_batches

    dtype, device = getattr(torch, args.dtype), args.device
    report: dict = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "seq_len": args.seq_len,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "targets": TARGETS,
    }
    work = Path(tempfile.mkdtemp(prefix="bench_throughput_"))
    started = time.perf_counter()
    folder = build(args.shape, work / args.shape, dtype, device)
    report["build_s"] = time.perf_counter() - started
    texts = corpus(max(args.tokens, args.slow_tokens), args.seq_len)

    # loading: HF's from_pretrained once to warm the page cache, then each timed
    def hf_load():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map={"": device}).eval()

    del_me = hf_load()
    del del_me
    gc.collect()
    started = time.perf_counter()
    hf = hf_load()
    sync(device)
    report["hf_from_pretrained_s"] = time.perf_counter() - started
    started = time.perf_counter()
    from normprobe.adapter import _bridge_class

    _bridge_class()  # `import transformer_lens`: once per process, reported apart
    report["transformer_lens_import_s"] = time.perf_counter() - started
    started = time.perf_counter()
    model = normprobe.load_model(str(folder), device=device, dtype=args.dtype)
    sync(device)
    report["normprobe_load_s"] = time.perf_counter() - started

    def save():
        if args.out:
            ratios(report)
            (Path(args.out) / "bench_throughput.json").write_text(json.dumps(report, indent=1))
            (Path(args.out) / "bench_throughput.md").write_text(markdown(report))

    def norms(budget, **options):
        result = normprobe.run(
            model, texts=texts, probes=["norms"], seq_len=args.seq_len, max_tokens=budget, progress=False, **options
        )
        report.setdefault("batch_size", result.meta["batch_size"])
        report.setdefault("batch_size_reason", result.meta.get("batch_size_reason"))
        return int(result.meta["n_tokens"])

    # the automatic batch size, and the tokenizer's own rate (normprobe tokenizes inside its runs)
    norms(min(args.tokens, 4 * args.seq_len))
    batch = int(args.batch_size or report["batch_size"])
    report["batch_size"] = batch
    started = time.perf_counter()
    every = windows_of(model, texts, args.seq_len, max(args.tokens, args.slow_tokens))
    report["tokenize_tokens_per_s"] = sum(len(w.tokens) for w in every) / (time.perf_counter() - started)

    def hf_pass(budget, body=False):
        forward = hf.base_model if body else hf
        done = 0
        with torch.inference_mode():
            for b in iter_batches(prefix(every, budget), batch, model.pad_token_id, device):
                forward(b.tokens, attention_mask=b.mask.long())
                done += b.n_tokens
        return done

    readout = model.readout

    def readouts(budget):  # in the batches `updates` chose (it holds a backward's working set)
        done, size = 0, int(report.get("updates_batch_size", batch))
        with torch.inference_mode():
            for b in iter_batches(prefix(every, budget), size, model.pad_token_id, device):
                out = hf.base_model(b.tokens, attention_mask=b.mask.long(), output_hidden_states=True)
                targets = b.next_tokens[b.has_next]
                for h in out.hidden_states:
                    readout.loss(h[b.has_next], targets)
                done += b.n_tokens
        return done

    def updates(budget):
        result = normprobe.run(model, texts=texts, probes=["updates"], seq_len=args.seq_len, max_tokens=budget, progress=False)
        report["updates_batch_size"] = result.meta["batch_size"]
        return int(result.meta["n_tokens"])

    trace_texts = texts[: args.trace_texts]

    def trace(n_texts):
        result = normprobe.trace(model, trace_texts[:n_texts], max_tokens=args.trace_tokens)
        return sum(len(ids) for ids in result.meta["token_ids"])

    # the order puts what the targets need first, so that a run cut short by a time guard still reports them
    workloads = {
        "hf_forward": (lambda n: hf_pass(n), args.tokens),
        "norms": (lambda n: norms(n, batch_size=batch), args.tokens),
        "memory": (None, 0),
        "updates": (updates, args.slow_tokens),
        "readouts": (readouts, args.slow_tokens),
        "baselines": (lambda n: norms(n, batch_size=batch, baselines=["random-init"], baseline_seeds=3), args.baseline_tokens),
        "trace": (trace, args.trace_texts),
        "hf_body": (lambda n: hf_pass(n, body=True), args.tokens),
    }
    for name, (run, budget) in workloads.items():
        if args.only and name not in args.only:
            continue
        if name == "memory":
            if device.startswith("cuda"):  # each peak in its own process, at the batch size measured above
                for what in ("hf_forward", "norms"):
                    report[f"peak_{what}_bytes"] = child_peak(args, folder, what, batch)
                save()
            continue
        if name == "trace":  # the short run traces an eighth of the texts; its "tokens" are the traced tokens
            report[name] = {**two_point(trace, max(1, budget // 8), budget, device), "texts": budget}
        else:  # the short run is one batch (of the size that workload runs in)
            size = batch
            if name in ("updates", "readouts"):
                if "updates_batch_size" not in report:
                    updates(args.seq_len)  # learns the batch size updates chooses
                size = report["updates_batch_size"]
            # baselines build their random models in each run: that set-up is their fixed cost, warm or not
            report[name] = two_point(run, min(size * args.seq_len, budget // 2), budget, device, warm_up=name != "baselines")
        print(f"{name}: {report[name]['tokens_per_s']:,.0f} tokens/s, fixed {report[name]['fixed_s']:.2f} s", flush=True)
        save()
    ratios(report)
    save()
    return report


def child_peak(args, folder: Path, what: str, batch: int) -> int:
    """Peak allocated GPU memory (weights included) of two batches of `what`, in a fresh process."""
    command = [sys.executable, __file__, "--peak-of", what, "--folder", str(folder), "--batch-size", str(batch)]
    command += ["--device", args.device, "--dtype", args.dtype, "--seq-len", str(args.seq_len)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"])


def peak_of(args) -> None:
    import normprobe

    device, folder = args.device, Path(args.folder)
    texts = corpus(2 * args.batch_size * args.seq_len, args.seq_len)
    budget = 2 * args.batch_size * args.seq_len
    if args.peak_of == "norms":
        model = normprobe.load_model(str(folder), device=device, dtype=args.dtype)
        torch.cuda.reset_peak_memory_stats()
        options = dict(seq_len=args.seq_len, max_tokens=budget, batch_size=args.batch_size, progress=False)
        normprobe.run(model, texts=texts, probes=["norms"], **options)
    else:
        from transformers import AutoModelForCausalLM

        from normprobe.batching import iter_batches, iter_windows

        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype), device_map={"": device}).eval()
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        windows = list(iter_windows(texts, lambda t: tokenizer(t)["input_ids"], args.seq_len, 0, max_tokens=budget))
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            for b in iter_batches(windows, args.batch_size, 0, device):
                hf(b.tokens, attention_mask=b.mask.long())
    torch.cuda.synchronize()
    print(json.dumps({"peak_bytes": torch.cuda.max_memory_allocated()}))


def ratios(report: dict) -> None:
    got = {}
    if "norms" in report and "hf_forward" in report:
        got["norms_vs_hf_forward"] = report["norms"]["tokens_per_s"] / report["hf_forward"]["tokens_per_s"]
    if "norms" in report and "hf_body" in report:
        got["norms_vs_hf_body"] = report["norms"]["tokens_per_s"] / report["hf_body"]["tokens_per_s"]
    if "norms" in report:
        got["fixed_beyond_from_pretrained_s"] = (
            report["normprobe_load_s"] + report["norms"]["fixed_s"] - report["hf_from_pretrained_s"]
        )
    if "updates" in report and "readouts" in report:  # time over the same tokens: inverse rates
        got["updates_vs_readouts"] = report["readouts"]["tokens_per_s"] / report["updates"]["tokens_per_s"]
    if "peak_norms_bytes" in report and "peak_hf_forward_bytes" in report:
        got["norms_peak_vs_hf_forward"] = report["peak_norms_bytes"] / report["peak_hf_forward_bytes"]
    report["ratios"] = got


def markdown(report: dict) -> str:
    rows = [
        ("hf_forward", "Hugging Face default forward (the floor)"),
        ("hf_body", "Hugging Face forward without logits"),
        ("norms", "norms"),
        ("baselines", "norms, --baseline random-init --baseline-seeds 3"),
        ("updates", "updates"),
        ("readouts", "HF forward + logit readout of every layer"),
        ("trace", f"trace of {report.get('trace', {}).get('texts', '?')} texts"),
    ]
    lines = [
        f"{SHAPE_NAMES[report['shape']]}, random weights, {report['dtype']}, {report['seq_len']}-token windows, "
        f"batch size {report.get('batch_size')} (normprobe's automatic choice for norms); {report['device']}, "
        f"torch {report['torch']}, {report['date']}.",
        "",
        "| workload | tokens | tokens/s | per-run fixed cost (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label in rows:
        if key in report:
            r = report[key]
            lines.append(f"| {label} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | {r['fixed_s']:.2f} |".replace("nan", "n/a"))
    lines += [
        "",
        f"Loading: Hugging Face from_pretrained {report['hf_from_pretrained_s']:.2f} s, normprobe.load_model "
        f"{report['normprobe_load_s']:.2f} s (after `import transformer_lens`, {report['transformer_lens_import_s']:.1f} s once "
        f"per process); the tokenizer alone runs at {report['tokenize_tokens_per_s']:,.0f} tokens/s "
        "(inside normprobe's runs; the HF rows get ids).",
        "",
        *(
            [
                f"Peak GPU memory over two batches of {report['batch_size']} windows, weights included, each in its own process: "
                f"Hugging Face forward {report['peak_hf_forward_bytes'] / 2**30:.2f} GiB, "
                f"norms {report['peak_norms_bytes'] / 2**30:.2f} GiB.",
                "",
            ]
            if "peak_norms_bytes" in report
            else []
        ),
        "| ratio | measured | target |",
        "| --- | ---: | --- |",
    ]
    for key, value in report.get("ratios", {}).items():
        unit = " s" if key.endswith("_s") else ""
        lines.append(f"| {key} | {value:.3f}{unit} | {TARGETS.get(key, '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--seq-len", type=int, default=None, help="default 2048 (1b), 128 (tiny)")
    parser.add_argument("--tokens", type=int, default=2 * 1024 * 1024, help="corpus tokens for hf_forward, hf_body, norms")
    parser.add_argument("--baseline-tokens", type=int, default=None, help="default: --tokens")
    parser.add_argument("--slow-tokens", type=int, default=None, help="for updates and readouts; default --tokens / 8")
    parser.add_argument("--trace-texts", type=int, default=64)
    parser.add_argument("--trace-tokens", type=int, default=512, help="at most this many tokens of each traced text")
    parser.add_argument("--batch-size", type=int, default=None, help="default: normprobe's automatic choice for norms")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None, help="comma-separated workloads")
    parser.add_argument("--out", default=None, help="folder for bench_throughput.json and bench_throughput.md")
    parser.add_argument("--peak-of", choices=["hf_forward", "norms"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.seq_len = args.seq_len or (2048 if args.shape == "1b" else 128)
    args.baseline_tokens = args.baseline_tokens or args.tokens
    args.slow_tokens = args.slow_tokens or max(args.tokens // 8, 2 * args.seq_len)
    if args.peak_of:
        peak_of(args)
        return 0
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    report = measure(args)
    table = markdown(report)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

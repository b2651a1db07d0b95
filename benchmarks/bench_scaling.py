"""normprobe at long windows, deep models and large vocabularies, against plain Hugging Face.

Prints, from one run on one machine:
  1. norms probe / Hugging Face's default forward (sdpa, `model(ids)`) at T=1024 and T=2048, GPT-2-small shape;
  2. updates probe / its floor (forward + one readout + one exact gradient per layer);
  3. updates probe peak memory at 3, 12, 24 and 48 layers of one width (weights excluded);
  4. updates probe peak memory with a 128k-token vocabulary against a 2k one.
Random weights (speed and memory do not depend on them); times are the median of --repeats after a
warm-up; memory is the peak growth over the pass (resident set on the CPU, allocator peak on CUDA).

    .venv/bin/python benchmarks/bench_scaling.py                 # about 15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_scaling.py --quick         # smaller everything, ~3 minutes
    .venv/bin/python benchmarks/bench_scaling.py --device cuda --dtype bfloat16 --shape 1b
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_probe import PeakRSS  # noqa: E402
from bench_probe import timed as median_time  # noqa: E402
from random_model import GPT2_SMALL, LLAMA_1B_WIDTH  # noqa: E402

SHAPES = {  # name: (family config kwargs for Llama-style or GPT-2 models)
    "gpt2-small": ("gpt2", dict(**GPT2_SMALL, n_positions=2048)),
    "quick": ("gpt2", dict(n_embd=256, n_layer=4, n_head=4, vocab_size=8192, n_positions=2048)),
    "1b": (
        "llama",
        dict(**LLAMA_1B_WIDTH, num_hidden_layers=16, max_position_embeddings=4096),
    ),
}


def build(kind: str, config: dict, folder: Path) -> Path:
    from random_model import save_random_model
    from transformers import GPT2Config, LlamaConfig

    cfg = (
        GPT2Config(**config, bos_token_id=0, eos_token_id=0)
        if kind == "gpt2"
        else LlamaConfig(**config, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    )
    return save_random_model(cfg, folder)


def timed(fn, repeats: int) -> float:
    return median_time(fn, repeats)[0]


class PeakMemory:
    """Peak growth in bytes: the CUDA allocator's peak on a GPU, else the resident set."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.rss = PeakRSS().__enter__()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.growth = torch.cuda.max_memory_allocated() - self.start
        else:
            self.rss.__exit__(*exc)
            self.growth = self.rss.growth


def random_texts(model, n_windows: int, seq_len: int) -> list[str]:
    """Text that tokenises to at least seq_len tokens per window (random ids decoded)."""
    g = torch.Generator().manual_seed(1)
    vocab = min(model.d_vocab, len(model.tokenizer))
    ids = torch.randint(vocab, (n_windows, seq_len * 2), generator=g)
    return [model.tokenizer.decode(row.tolist()) for row in ids]


def measure_speed(args, work: Path, report: dict, sync) -> dict:
    from transformers import AutoModelForCausalLM

    import normprobe

    dtype = getattr(torch, args.dtype)
    shape = report["shape"]
    # 1. norms probe against Hugging Face's default forward at long windows
    kind, config = SHAPES[shape]
    folder = build(kind, config, work / shape)
    model = normprobe.load_model(str(folder), device=args.device, dtype=args.dtype)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device).eval()  # sdpa: HF's default
    speed = {}
    for seq_len in (1024, 2048):
        n_windows = 2 if args.device == "cpu" else 16
        texts = random_texts(model, n_windows, seq_len)
        ids = torch.stack([torch.tensor(model.encode(t)[: seq_len - 1]) for t in texts])
        ids = torch.cat([torch.full((n_windows, 1), model.bos_token_id or 0), ids], 1).to(args.device)

        def hf_forward():
            with torch.inference_mode():
                hf(ids, attention_mask=torch.ones_like(ids))
            sync()

        def hf_body():  # the same forward without the logits of every position, which normprobe skips too
            with torch.inference_mode():
                hf.base_model(ids, attention_mask=torch.ones_like(ids))
            sync()

        def norms_probe():
            # exactly the windows the baseline runs: the texts are longer than a window, so cut by tokens
            normprobe.run(
                model,
                texts=texts,
                probes=["norms"],
                seq_len=seq_len,
                batch_size=n_windows,
                max_tokens=n_windows * seq_len,
                progress=False,
            )
            sync()

        hf_s, body_s, norms_s = (timed(fn, args.repeats) for fn in (hf_forward, hf_body, norms_probe))
        speed[seq_len] = {
            "hf_default_forward_s": hf_s,
            "hf_body_s": body_s,
            "norms_probe_s": norms_s,
            "ratio": norms_s / hf_s,
            "ratio_to_body": norms_s / body_s,
            "tokens": n_windows * seq_len,
        }
        print(
            f"T={seq_len}: HF default forward {hf_s:.2f} s (body without logits {body_s:.2f} s), norms probe "
            f"{norms_s:.2f} s, ratio {norms_s / hf_s:.3f} ({norms_s / body_s:.3f} to the body)",
            flush=True,
        )
    report["norms_vs_hf_default"] = speed

    # 2. updates probe against its floor, on shorter windows (the readouts dominate)
    seq_len, n_windows = 128, 4
    texts = random_texts(model, n_windows, seq_len)
    from normprobe.batching import iter_batches, iter_windows

    windows = list(iter_windows(texts, model.encode, seq_len, model.bos_token_id, max_tokens=n_windows * seq_len))
    batches = list(iter_batches(windows, n_windows, model.pad_token_id, args.device))
    readout = model.readout

    def floor():
        with torch.inference_mode():
            for b in batches:
                out = hf.base_model(b.tokens, attention_mask=b.mask.long(), output_hidden_states=True)
                targets = b.next_tokens[b.has_next]
                for h in out.hidden_states[:-1]:
                    readout.loss_and_grad(h[b.has_next].float(), targets)
        sync()

    def updates():
        normprobe.run(
            model,
            texts=texts,
            probes=["updates"],
            seq_len=seq_len,
            batch_size=n_windows,
            max_tokens=n_windows * seq_len,
            progress=False,
        )
        sync()

    floor_s, updates_s = timed(floor, args.repeats), timed(updates, args.repeats)
    report["updates_vs_floor"] = {"floor_s": floor_s, "updates_s": updates_s, "ratio": updates_s / floor_s}
    print(f"updates probe {updates_s:.2f} s / floor {floor_s:.2f} s = {updates_s / floor_s:.3f}", flush=True)
    return speed


def child_peak(args, depth: int, width: int, vocab: int, tokens: int) -> float:
    """Peak memory growth (MB) of one updates-probe pass, measured in a fresh process."""
    import subprocess

    command = [
        sys.executable,
        __file__,
        "--child",
        f"{depth},{width},{vocab},{tokens}",
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def child(spec: str, device: str, dtype: str) -> None:
    import normprobe

    depth, width, vocab, tokens = (int(x) for x in spec.split(","))
    folder = build(
        "gpt2",
        dict(n_embd=width, n_layer=depth, n_head=8, vocab_size=vocab, n_positions=1024),
        Path(tempfile.mkdtemp(prefix="normprobe-child-")),
    )
    model = normprobe.load_model(str(folder), device=device, dtype=dtype)
    texts = random_texts(model, tokens // 512, 512)
    # a tiny run first: it pages in the memory-mapped weights and builds the readout's float32 copies,
    # which a measure of the run's own memory must leave out
    normprobe.run(model, texts=texts[:1], probes=["updates"], seq_len=16, max_tokens=16, progress=False)
    gc.collect()
    with PeakMemory(device) as mem:
        normprobe.run(
            model, texts=texts, probes=["updates"], seq_len=512, batch_size=tokens // 512, max_tokens=tokens, progress=False
        )
    print(mem.growth / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", choices=["speed", "memory"], default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.device, args.dtype)
    shape = args.shape or ("quick" if args.quick else "gpt2-small")
    work = Path(tempfile.mkdtemp(prefix="normprobe-scaling-"))
    report: dict = {"shape": shape, "device": args.device, "dtype": args.dtype}

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    speed: dict = {}
    if args.only in (None, "speed"):
        speed = measure_speed(args, work, report, sync)
    depth_memory: dict = {}
    vocab_memory: dict = {}
    if args.only in (None, "memory"):
        # one fresh process per measure: a process that has run before keeps freed memory pooled
        width, tokens = (256, 1024) if args.quick else (512, 4096)
        for depth in (3, 12, 24, 48):
            depth_memory[depth] = child_peak(args, depth, width, 2048, tokens)
            print(
                f"updates probe, {depth} layers x width {width}, {tokens} tokens: peak +{depth_memory[depth]:.0f} MB", flush=True
            )
        for vocab in (2048, 128_000):
            vocab_memory[vocab] = child_peak(args, 3, width, vocab, tokens)
            print(f"updates probe, 3 layers, vocabulary {vocab}: peak +{vocab_memory[vocab]:.0f} MB", flush=True)
        report["updates_peak_mb_by_depth"] = depth_memory
        report["updates_peak_mb_by_vocab"] = vocab_memory

    report["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }
    print("\nsummary")
    for t, s in speed.items():
        print(f"  norms probe / HF default forward, T={t}: {s['ratio']:.3f}  (target <= 1.10)")
    print(f"  updates probe / floor: {report['updates_vs_floor']['ratio']:.3f}")
    if 24 in depth_memory and 3 in depth_memory:  # --only speed measures no memory
        print(f"  updates extra peak 3 -> 24 layers: {depth_memory[24] - depth_memory[3]:+.0f} MB  (target <= 400 MB)")
    if 128_000 in vocab_memory and 2048 in vocab_memory:
        print(
            f"  updates extra peak, 128k vs 2k vocabulary: {vocab_memory[128_000] - vocab_memory[2048]:+.0f} MB  "
            "(target <= 1024 MB)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scaling-{shape}-{args.device.replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

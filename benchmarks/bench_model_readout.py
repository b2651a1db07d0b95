"""What `--readout model` costs: time against a plain forward, and peak memory against Hugging Face's own backward.

On a GPT-2-small-shaped model built from its config (random weights; speed does not depend on them),
the same windows for every measure:
  - time: a plain forward (Hugging Face's, with logits; and the bridge's, logits for one position),
    then the updates probe's work per batch under `--readout model` without and with `--ablate`
    (its begin_batch, as the runner calls it), as ratios to the plain forward. Targets (issue 26):
    <= 3.5x without --ablate, <= (3 n_layers / 2 + 4)x with it.
  - memory: peak resident-set growth (each pass in a fresh process) of one window of --memory-seq-len
    tokens through Hugging Face's forward + loss.backward() with the weights frozen (the gradient taken at the embedding output,
    since frozen weights leave nothing else to differentiate), against the model readout's pass.
Times are the median of --repeats runs after one warm-up. Run from the repository root:

    .venv/bin/python benchmarks/bench_model_readout.py            # GPT-2-small shape, a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_model_readout.py --quick    # a small model, under a minute
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_probe import PeakRSS, build_model, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model instead of the GPT-2-small shape")
    parser.add_argument("--seq-len", type=int, default=256, help="window length for the timings")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--memory-seq-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-of", choices=sorted(MEMORY_PASSES.values()), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(memory_of(args.memory_of, args.model_dir, args.memory_seq_len, args.device))
        return
    shape = "quick" if args.quick else "gpt2-small"

    import normprobe
    from normprobe.batching import Window, collate
    from normprobe.probes.updates import UpdatesProbe

    folder = build_model(shape, Path(tempfile.mkdtemp(prefix="normprobe-bench-")) / "model")
    model = normprobe.load_model(str(folder), device=args.device)
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="sdpa").to(args.device).eval()
    model.select_attention(False)  # sdpa, as a run without pattern probes uses
    generator = torch.Generator().manual_seed(0)

    def batch_of(n_windows: int, length: int):
        windows = [Window(i, torch.randint(1, model.d_vocab, (length,), generator=generator).tolist()) for i in range(n_windows)]
        return collate(windows, model.pad_token_id, args.device)

    batch = batch_of(args.batch_size, args.seq_len)

    def probe_pass(ablate: bool):
        probe = UpdatesProbe(readout="model", ablate=ablate)
        probe.setup(model, args.seq_len)

        def go():
            with torch.inference_mode():
                probe.begin_batch(batch)

        return go

    def hf_forward():
        with torch.inference_mode():
            hf(batch.tokens, attention_mask=batch.mask.long())

    def bridge_forward():
        with torch.inference_mode():
            model.forward(batch.tokens, batch.mask.long(), [])

    rows = [
        ("Hugging Face forward (all logits)", timed(hf_forward, args.repeats)[0]),
        ("bridge forward (logits for one position)", timed(bridge_forward, args.repeats)[0]),
        ("updates --readout model", timed(probe_pass(False), args.repeats)[0]),
        ("updates --readout model --ablate", timed(probe_pass(True), max(1, args.repeats - 2))[0]),
    ]
    base = rows[0][1]
    n_layers = model.n_layers
    print(
        f"{shape} ({n_layers} layers, d_model {model.d_model}, vocab {model.d_vocab}) on {args.device}, "
        f"{torch.get_num_threads()} threads; {args.batch_size} windows of {args.seq_len} tokens, median of {args.repeats}"
    )
    for label, seconds in rows:
        print(f"  {label:<44} {seconds * 1000:10.1f} ms  {seconds / base:6.2f}x the HF forward")
    print(f"  targets: <= 3.5x without --ablate; <= {3 * n_layers / 2 + 4:.1f}x with it")

    # -- peak memory: each pass in a fresh process, so one pass's freed pages do not hide another's ---------
    length = min(args.memory_seq_len, model.n_ctx)
    print(f"peak resident-set growth, one window of {length} tokens (each in a fresh process):")
    for label, which in MEMORY_PASSES.items():
        command = [
            sys.executable,
            __file__,
            "--memory-of",
            which,
            "--model-dir",
            str(folder),
            "--memory-seq-len",
            str(length),
            "--device",
            args.device,
        ]
        found = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1]
        print(f"  {label:<50} {float(found) / 2**20:8.0f} MB")


MEMORY_PASSES = {
    "Hugging Face forward, inference": "hf_forward",
    "Hugging Face forward + backward, frozen weights": "hf_backward",
    "updates --readout model (forward + backward)": "model_readout",
}


def memory_of(which: str, folder: Path, length: int, device: str) -> int:
    """Peak RSS growth of one pass over one window, after a warm-up on 8 tokens (lazily built state)."""
    from transformers import GPT2LMHeadModel

    import normprobe
    from normprobe.batching import Window, collate
    from normprobe.probes.updates import UpdatesProbe

    model = normprobe.load_model(str(folder), device=device)
    model.select_attention(False)
    hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="sdpa").to(device).eval()
    for p in hf.parameters():
        p.requires_grad_(False)

    def window(n):
        tokens = torch.randint(1, model.d_vocab, (n,), generator=torch.Generator().manual_seed(0)).tolist()
        return collate([Window(0, tokens)], model.pad_token_id, device)

    def run(batch):
        if which == "hf_forward":
            with torch.inference_mode():
                hf(batch.tokens)
        elif which == "hf_backward":
            embeds = hf.transformer.wte(batch.tokens).detach().requires_grad_(True)
            hf(inputs_embeds=embeds, labels=batch.tokens).loss.backward()
        else:
            probe = UpdatesProbe(readout="model")
            probe.setup(model, batch.tokens.shape[1])
            with torch.inference_mode():
                probe.begin_batch(batch)

    run(window(8))
    batch = window(length)
    gc.collect()
    with PeakRSS() as peak:
        run(batch)
    return peak.growth


if __name__ == "__main__":
    main()

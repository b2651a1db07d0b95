"""Peak memory of normprobe against Hugging Face's own, on random-weight models of real shapes.

Each measurement runs in a fresh subprocess, on the same tokens, one document at a time (batch 1),
and its figure is that process's own peak: VmHWM of /proc/self/status read as it ends (the
high-water mark of its own address space, which exec starts afresh), cross-checked against
os.wait4's ru_maxrss for that one child. (getrusage(RUSAGE_CHILDREN) would give the largest peak of
any child so far, and ru_maxrss carries a parent's resident set across fork and exec: the models are
therefore built in a child too, so that the parent stays small.)
  - hf / hf eager:   `from_pretrained` then a body forward (`model.base_model`), sdpa / eager attention;
  - hf load / load:  `from_pretrained` alone / `normprobe.load_model` alone (no float32 copy of bf16);
  - import hf:       `import torch, transformers` (what `hf` imports) and nothing else;
  - import:          torch, transformers, normprobe and TransformerLens as a run imports them, nothing else;
  - norms, lens, updates, linesearch, massive: a whole `normprobe.run` with that probe (load included);
  - cli norms, cli lens, ...: `python -m normprobe run` with that probe, writing its folder and report
    (the command a user types; its peak is os.wait4's ru_maxrss of that process, which has no children).
Ratios are against `hf`, and `massive` (which runs eager attention) against `hf eager`.
Targets: norms and lens <= 1.10, updates and linesearch <= 1.25, massive <= 1.10 (of hf eager).
With a GPU, peak CUDA memory is measured as well (torch.cuda.max_memory_allocated).

Shapes (random weights, saved under --workdir, deleted afterwards unless --keep):
  gpt2-medium  GPT2Config(n_embd=1024, n_layer=24, n_head=16), float32, 1.4 GB
  llama-1b     Llama-3.2-1B: 128k vocabulary, tied, bfloat16, 2.5 GB
  gemma2       Gemma-2-shaped (256k vocabulary, attention and final-logit soft-capping), 8 layers, bfloat16
  pythia-410m  GPT-NeoX (fused, head-interleaved q/k/v), float32, 1.6 GB: not in the default set

    .venv/bin/python benchmarks/bench_memory.py --quick              # gpt2-medium, 32 tokens: a few minutes
    .venv/bin/python benchmarks/bench_memory.py --shapes gpt2-medium,llama-1b --tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROBES = ("norms", "lens", "updates", "linesearch", "massive")
TARGETS = {"norms": 1.10, "lens": 1.10, "updates": 1.25, "linesearch": 1.25, "massive": 1.10}
VOCAB_WORD = "w{}"


def shape_config(shape: str):
    """(config, dtype) of each benchmark shape."""
    from random_model import LLAMA_1B_WIDTH
    from transformers import Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig

    if shape == "gpt2-medium":
        return GPT2Config(n_embd=1024, n_layer=24, n_head=16, bos_token_id=0, eos_token_id=0), "float32"
    if shape == "llama-1b":
        return LlamaConfig(
            **LLAMA_1B_WIDTH, num_hidden_layers=16, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1
        ), "bfloat16"
    if shape == "gemma2":
        return Gemma2Config(
            vocab_size=256000,
            hidden_size=1152,
            intermediate_size=4608,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ), "bfloat16"
    if shape == "pythia-410m":  # fused query_key_value whose split q/k/v TransformerLens copies
        return GPTNeoXConfig(
            vocab_size=50304,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        ), "float32"
    raise SystemExit(f"unknown shape {shape!r}; shapes are gpt2-medium, llama-1b, gemma2, pythia-410m")


def build(shape: str, folder: Path) -> str:
    """Save a random model of `shape` in its dtype, with a word-level tokenizer over its whole vocabulary."""
    from random_model import save_random_model
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    config, dtype = shape_config(shape)
    if (folder / "config.json").exists():
        return dtype
    vocab = {"<s>": 0, "</s>": 1, **{VOCAB_WORD.format(i): i for i in range(2, config.vocab_size)}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    save_random_model(config, folder, dtype, tokenizer)
    return dtype


def token_ids(n_tokens: int, vocab: int) -> list[int]:
    """The document's ids after BOS (id 0): normprobe prepends BOS, Hugging Face is given it. Drawn without
    torch, so that the parent (whose resident set a child's ru_maxrss would inherit) stays small."""
    draw = random.Random(0)
    return [draw.randrange(2, vocab) for _ in range(n_tokens - 1)]


def child(kind: str, folder: str, dtype: str, n_tokens: int, device: str) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    cuda = device.startswith("cuda")
    started = time.time()
    config = json.loads((Path(folder) / "config.json").read_text())
    ids = token_ids(n_tokens, config["vocab_size"])
    if kind.startswith("hf"):
        from transformers import AutoModelForCausalLM

        attention = "eager" if kind == "hf eager" else "sdpa"
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, dtype), attn_implementation=attention, device_map=device if cuda else None
        ).eval()
        if kind != "hf load":
            with torch.inference_mode():
                model.base_model(torch.tensor([[0] + ids], device=device), use_cache=False)
    elif kind == "load":
        import normprobe

        normprobe.load_model(folder, device=device, dtype=dtype)
    elif kind == "import hf":
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM  # noqa: F401
    elif kind == "import":
        import transformers  # noqa: F401

        from normprobe.deferred_imports import defer_module

        defer_module("pandas")  # as the command line does, before normprobe's modules import it
        import normprobe.api  # noqa: F401
        from normprobe.adapter import _bridge_class

        _bridge_class()  # TransformerLens, imported as a run imports it
    else:
        import normprobe

        text = " ".join(VOCAB_WORD.format(i) for i in ids)
        normprobe.run(
            folder, texts=[text], probes=[kind], batch_size=1, seq_len=n_tokens, dtype=dtype, device=device, progress=False
        )
    return {
        "peak_rss": own_peak(),
        "peak_cuda": int(torch.cuda.max_memory_allocated()) if cuda else None,
        "seconds": round(time.time() - started, 1),
    }


def own_peak() -> int:
    """This process's resident high-water mark in bytes (VmHWM: its own address space, reset by exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: ru_maxrss (KiB on Linux)


def waited(command: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, the child's own ru_maxrss in bytes from os.wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        if code == -9 and not timer.is_alive() and timer.finished.is_set():
            raise subprocess.TimeoutExpired(command, timeout)
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read(), usage.ru_maxrss * 1024


def measure(kind: str, folder: Path, dtype: str, n_tokens: int, device: str, timeout: float) -> dict | None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    if kind.startswith("cli "):
        return measure_cli(kind.split()[1], folder, dtype, n_tokens, device, timeout, env)
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--model",
        str(folder),
        "--dtype",
        dtype,
        "--tokens",
        str(n_tokens),
        "--device",
        device,
    ]
    try:
        code, out, err, maxrss = waited(command, env, timeout)
    except subprocess.TimeoutExpired:
        print(f"  {kind}: over {timeout:.0f} s, skipped", file=sys.stderr)
        return None
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if code or not lines:
        print(f"  {kind}: failed: {err.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return {**json.loads(lines[-1]), "wait4_maxrss": maxrss}


def measure_cli(probe: str, folder: Path, dtype: str, n_tokens: int, device: str, timeout: float, env: dict) -> dict | None:
    """`python -m normprobe run` on the same document, into a scratch folder; its peak from os.wait4."""
    config = json.loads((folder / "config.json").read_text())
    text = " ".join(VOCAB_WORD.format(i) for i in token_ids(n_tokens, config["vocab_size"]))
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "normprobe", "run", str(folder), "--probe", probe, "--text", text]
        command += ["--batch-size", "1", "--seq-len", str(n_tokens), "--dtype", dtype, "--device", device]
        command += ["--out", str(Path(scratch) / "run")]
        started = time.time()
        try:
            code, _, err, maxrss = waited(command, env, timeout)
        except subprocess.TimeoutExpired:
            print(f"  cli {probe}: over {timeout:.0f} s, skipped", file=sys.stderr)
            return None
    if code:
        print(f"  cli {probe}: failed: {err.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return {"peak_rss": maxrss, "peak_cuda": None, "seconds": round(time.time() - started, 1), "wait4_maxrss": maxrss}


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def table(shape: str, dtype: str, results: dict[str, dict | None], n_tokens: int) -> list[str]:
    rows = [
        f"### {shape} ({dtype}, {n_tokens} tokens, batch 1)",
        "",
        "| measurement | peak RSS (GiB) | ratio | target | wait4 ru_maxrss (GiB) | peak CUDA (GiB) | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, found in results.items():
        if found is None:
            rows.append(f"| {kind} | - | - | - | - | - | - |")
            continue
        probe = kind.removeprefix("cli ")
        base_kind = (
            "hf eager"
            if probe == "massive"
            else "hf load"
            if kind == "load"
            else "import hf"
            if kind in ("import", "import hf")
            else "hf"
        )
        base = results.get(base_kind)
        ratio = f"{found['peak_rss'] / base['peak_rss']:.3f}× {base_kind}" if base and kind != base_kind else ""
        target = f"≤ {TARGETS[probe]:.2f}" if probe in TARGETS else ""
        rows.append(
            f"| {kind} | {gib(found['peak_rss'])} | {ratio} | {target} | {gib(found.get('wait4_maxrss'))} "
            f"| {gib(found['peak_cuda'])} | {found['seconds']} |"
        )
    return rows + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=None, help="comma-separated: gpt2-medium, llama-1b, gemma2")
    parser.add_argument(
        "--measure",
        default=None,
        help="comma-separated subset of: hf, hf eager, hf load, import hf, import, load, "
        + ", ".join(PROBES)
        + ", and cli PROBE for each probe (the command line)",
    )
    parser.add_argument("--tokens", type=int, default=None, help="tokens per document (default 128, 32 with --quick)")
    parser.add_argument("--quick", action="store_true", help="gpt2-medium only, 32 tokens")
    parser.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    parser.add_argument("--workdir", default="/tmp/normprobe-bench-memory")
    parser.add_argument("--keep", action="store_true", help="keep the saved models for the next run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file (docs/generated/bench_memory.md)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n_tokens = args.tokens or (32 if args.quick else 128)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.dtype, n_tokens, args.device)))
        return
    if args.build:
        print(build(args.build, Path(args.model)))
        return
    shapes = (args.shapes or ("gpt2-medium" if args.quick else "gpt2-medium,llama-1b,gemma2")).split(",")
    kinds = (
        [k.strip() for k in args.measure.split(",")]
        if args.measure
        else ["hf", "hf eager", "hf load", "import hf", "import", "load", *PROBES]
    )
    workdir = Path(args.workdir)
    lines = [
        f"normprobe memory benchmark on {args.device} ({os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the start); "
        "each peak RSS is that process's own (VmHWM), Python, torch and the libraries imported included",
        "",
    ]
    try:
        for shape in shapes:
            folder = workdir / shape
            print(f"{shape}: building in {folder}", file=sys.stderr)
            # in a child: a parent holding a model would lend its resident set to every later child's ru_maxrss
            built = subprocess.run(
                [sys.executable, __file__, "--build", shape, "--model", str(folder)], capture_output=True, text=True, check=True
            )
            dtype = built.stdout.split()[-1]
            results = {}
            for kind in kinds:
                results[kind] = measure(kind, folder, dtype, n_tokens, args.device, args.timeout)
                print(f"  {kind}: {results[kind]}", file=sys.stderr)
            lines += table(shape, dtype, results, n_tokens)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


def _has_cuda() -> bool:
    """Asked of a child: importing torch here would grow this parent, whose resident set its children inherit."""
    probe = "import torch; print(torch.cuda.is_available())"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() == "True"


if __name__ == "__main__":
    main()

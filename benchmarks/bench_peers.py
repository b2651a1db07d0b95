"""normprobe against its peers on the peers' own tasks: whole processes, numbers checked equal first.

Three tasks on the same tokens (a random model of --shape, BOS first, each document exactly one window):
  - norms: mean ‖h_l‖ per layer over every position (resid_pre of layers 0..L-1);
  - lens: the logit lens's cross-entropy per layer over the corpus (and the output's);
  - trace: one text, every layer read out, log-softmax and top-k per position.
Each tool runs as its own process, timed from spawn to exit; its peak resident set is its own
(os.wait4's rusage). The floor of each task is a plain loop: Hugging Face `output_hidden_states`, then
only what the task needs (norms; final norm -> head -> cross-entropy; log-softmax -> top-k). Peers:
normprobe's CLI, nnsight's `trace` + `.save()` (if importable, e.g. from --nnsight-path), the
TransformerLens bridge's `run_with_cache`, tuned-lens's `PredictionTrajectory` (logit lens), and
tuned-lens's own CLI, `python -m tuned_lens eval` (logit lens, its default `--lens_types`), next to a
re-implementation of its per-batch loop.
Every tool's numbers are compared with the floor's before any time is reported (rel 1e-4), and a
tool that disagrees is reported as such. Repeats are interleaved (each round runs every tool once,
in turn), and the table gives medians. Run from the repository root:

    .venv/bin/python benchmarks/bench_peers.py --shape quick --windows 2 --repeats 1   # a smoke test, about a minute
    .venv/bin/python benchmarks/bench_peers.py                                          # GPT-2 small, 8 x 512 tokens
    .venv/bin/python benchmarks/bench_peers.py --windows 200 --tasks norms,lens         # the 100k-token figure
    .venv/bin/python benchmarks/bench_peers.py --write docs/generated/bench_peers.md    # regenerate the docs' table

Regenerate on a quiet machine: the ratios hold within one run, but a machine shared with other work
(the load average is printed) moves them.

tuned-lens's CLI runs in its own environment: the venv (torch, transformers 5, datasets, tuned-lens 0.2)
behind a folder first on that process's PYTHONPATH only (--tunedlens-site, built if missing):
    pip install --no-deps --target /tmp/tunedlens_cli_site torchdata==0.9.0   # the last with dataloader2
plus two shims the bench writes there, neither touching the timed work: `transformer_lens/__init__.py`
raises ImportError (tuned-lens then takes its no-TransformerLens path: TL 4 removed the HookedTransformer
it probes for), and `sitecustomize.py` drops `load_in_8bit=False` from `from_pretrained` (transformers 5
passes it to the model's __init__, which rejects it; False asks for nothing). `--lens_types logit` is
left to its default (simple-parsing 0.1.9 rejects the value as written). Its corpus is one JSON line (one
row: each of its num_proc map workers drops its own last chunk), the windows joined by EOS (= BOS here)
and ended by one: chunk_and_tokenize prepends EOS, cuts --tokens-long chunks and drops the last (the lone
EOS), so its batches are exactly the windows every tool reads. Its aggregate_metrics.json is in bits
per byte; dividing by its nats_to_bpb ((tokens / bytes) / ln 2 of the joined text, recomputed here as it
does) gives nats per layer for the check. Its datasets cache lives in the run's folder, filled by the
warm-up round like the bytecode cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SHAPES = {
    "gpt2-small": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
    "quick": dict(n_embd=256, n_layer=4, n_head=4, vocab_size=8192, n_positions=512),
}
TOP_K = 10


# -- workers: each runs in its own process -----------------------------------------------------
def _load_hf(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()


def _windows(corpus: str, model_dir: str):
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    docs = Path(corpus).read_text(encoding="utf-8").splitlines()
    return torch.tensor([[tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"] for d in docs])


def _batches(ids, size: int = 8):
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def worker_hf_norms(a) -> dict:
    import torch

    hf, ids = _load_hf(a.model), _windows(a.corpus, a.model)
    total = None
    for batch in _batches(ids):
        states = hf.base_model(batch, output_hidden_states=True).hidden_states[:-1]  # resid_pre of layers 0..L-1
        sums = torch.stack([torch.linalg.vector_norm(h, dim=-1).double().sum() for h in states])
        total = sums if total is None else total + sums
    return {"norms": (total / ids.numel()).tolist()}


def worker_nnsight_norms(a) -> dict:
    import torch
    from nnsight import LanguageModel

    lm = LanguageModel(a.model, dispatch=True, attn_implementation="sdpa")
    ids = _windows(a.corpus, a.model)
    n = len(lm.transformer.h)
    total = torch.zeros(n, dtype=torch.float64)
    for batch in _batches(ids):
        with torch.no_grad(), lm.trace(batch):
            states = list().save()
            for l in range(n):
                states.append(lm.transformer.h[l].input)
        total += torch.stack([torch.linalg.vector_norm(h, dim=-1).double().sum() for h in states])
    return {"norms": (total / ids.numel()).tolist()}


def worker_tl_norms(a) -> dict:
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(a.model, device="cpu")
    ids = _windows(a.corpus, a.model)
    n = bridge.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n)]
    total = torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        for batch in _batches(ids):
            _, cache = bridge.run_with_cache(batch, names_filter=lambda name: name in names)
            total += torch.stack([torch.linalg.vector_norm(cache[h], dim=-1).double().sum() for h in names])
    return {"norms": (total / ids.numel()).tolist()}


def worker_hf_lens(a) -> dict:
    import torch

    hf, ids = _load_hf(a.model), _windows(a.corpus, a.model)
    norm, head = hf.base_model.ln_f, hf.get_output_embeddings()
    total = None
    for batch in _batches(ids):
        out = hf.base_model(batch, output_hidden_states=True)
        # h_0..h_{L-1}, then the last block's output (hidden_states[L] is already normed in GPT-2)
        states = list(out.hidden_states[:-1]) + [out.last_hidden_state]
        targets = batch[:, 1:].reshape(-1)
        losses = []
        for l, h in enumerate(states):
            x = h[:, :-1] if l == len(states) - 1 else norm(h[:, :-1])
            losses.append(torch.nn.functional.cross_entropy(head(x).flatten(0, 1), targets, reduction="sum").double())
        sums = torch.stack(losses)
        total = sums if total is None else total + sums
    return {"lens": (total / (ids.shape[0] * (ids.shape[1] - 1))).tolist()}


def worker_hf_trace(a) -> dict:
    import torch

    hf, ids = _load_hf(a.model), _windows(a.corpus, a.model)[:1]
    norm, head = hf.base_model.ln_f, hf.get_output_embeddings()
    out = hf.base_model(ids, output_hidden_states=True)
    states = list(out.hidden_states[:-1]) + [out.last_hidden_state]
    top = []
    for l, h in enumerate(states):
        x = h[0] if l == len(states) - 1 else norm(h[0])
        top.append(torch.log_softmax(head(x), -1).topk(TOP_K, dim=-1).values[:, 0].double().mean())
    return {"trace": torch.stack(top).tolist()}


def worker_tunedlens_trace(a) -> dict:
    import torch
    from tuned_lens import model_surgery
    from tuned_lens.nn import LogitLens, unembed
    from tuned_lens.plotting import PredictionTrajectory

    model_surgery._transformer_lens_available = False  # it probes the HookedTransformer that TL 4 removed
    unembed._transformer_lens_available = False
    hf, ids = _load_hf(a.model), _windows(a.corpus, a.model)[:1]
    lens = LogitLens.from_model(hf)
    trajectory = PredictionTrajectory.from_lens_and_model(lens, hf, ids[0].tolist(), targets=ids[0, 1:].tolist() + [0])
    top = torch.from_numpy(trajectory.log_probs).topk(TOP_K, dim=-1).values[..., 0].double().mean(-1)
    return {"trace": top.tolist()}


def worker_tunedlens_eval(a) -> dict:
    """`tuned-lens eval --lens_types logit`'s loop (tuned_lens/scripts/eval_loop.py) with its own LogitLens.

    Its CLI does not import in the venv (tuned-lens 0.2 imports torchdata.dataloader2, which torchdata 0.11
    no longer has; it runs in its own environment, see above), so this runs the loop's per-batch work as it
    is written there: the model's logits and hidden states, and per layer the lens's log-softmax,
    cross-entropy, entropy and KL to the output, one window a batch (its default per_gpu_batch_size)."""
    import torch
    from tuned_lens import model_surgery
    from tuned_lens.nn import LogitLens, unembed

    model_surgery._transformer_lens_available = False
    unembed._transformer_lens_available = False
    hf, ids = _load_hf(a.model), _windows(a.corpus, a.model)
    lens = LogitLens.from_model(hf)
    n_layers = hf.config.num_hidden_layers
    total = torch.zeros(n_layers + 1, dtype=torch.float64)
    for window in ids:
        batch = window[None]
        output = hf(input_ids=batch, output_hidden_states=True)
        final_lps = output.logits.log_softmax(dim=-1)
        final_probs = final_lps.exp()
        labels = batch[:, 1:]
        for layer, h in enumerate(output.hidden_states[:-1]):
            lens_lps = lens(h, idx=layer).log_softmax(dim=-1)
            lens_probs = lens_lps.exp()
            ce = torch.nn.functional.cross_entropy(lens_lps[:, :-1].flatten(0, 1), labels.flatten(), reduction="none")
            torch.sum(-lens_probs * lens_lps, dim=-1)  # entropy
            torch.sum(final_probs * (final_lps - lens_lps), dim=-1)  # KL to the output
            total[layer] += ce.double().mean()
        ce = torch.nn.functional.cross_entropy(final_lps[:, :-1].flatten(0, 1), labels.flatten(), reduction="none")
        total[n_layers] += ce.double().mean()
    return {"lens": (total / len(ids)).tolist()}


WORKERS = {name[len("worker_") :]: fn for name, fn in globals().items() if name.startswith("worker_")}


# -- the parent ------------------------------------------------------------------------------
def build(shape: str, work: Path, windows: int, tokens: int) -> tuple[Path, Path, Path]:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from normprobe.adapter import DEMO_DIR
    from normprobe.corpus import sample_documents

    torch.manual_seed(0)
    model = work / "model"
    GPT2LMHeadModel(GPT2Config(**SHAPES[shape], bos_token_id=0, eos_token_id=0)).save_pretrained(model)
    PreTrainedTokenizerFast.from_pretrained(DEMO_DIR).save_pretrained(model)
    tok = AutoTokenizer.from_pretrained(model)
    text = " ".join(" ".join(sample_documents(None)).split())
    body = tok(text, add_special_tokens=False)["input_ids"]
    while len(body) < windows * tokens:
        body = body + body
    docs, step, start = [], tokens - 1, 0
    while len(docs) < windows:  # documents that re-encode to exactly tokens - 1 ids, without newlines
        doc = " ".join(tok.decode(body[start : start + step]).split())
        start = (start + step) % max(1, len(body) - step)
        if len(tok(doc, add_special_tokens=False)["input_ids"]) == step:
            docs.append(doc)
        elif start < step:
            raise SystemExit("cannot cut the sample text into windows that re-encode exactly; try another --tokens")
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(docs) + "\n", encoding="utf-8")
    one = work / "one.txt"
    one.write_text(docs[0] + "\n", encoding="utf-8")
    return model, corpus, one


TUNEDLENS_CLI = "tuned-lens eval CLI (logit lens)"
TUNEDLENS_SHIMS = {  # see the docstring: what each is for, and why neither changes the timed work
    "transformer_lens/__init__.py": 'raise ImportError("TransformerLens is not part of this environment")\n',
    "sitecustomize.py": """import transformers.modeling_utils as _utils

_from_pretrained = _utils.PreTrainedModel.from_pretrained.__func__


def _without_load_in_8bit(cls, *args, load_in_8bit=False, **kwargs):
    if load_in_8bit:
        raise ValueError("load_in_8bit is not supported in this environment")
    return _from_pretrained(cls, *args, **kwargs)


_utils.PreTrainedModel.from_pretrained = classmethod(_without_load_in_8bit)
""",
}


def tunedlens_setup(args, env: dict[str, str], model: Path, corpus: Path, work: Path):
    """(its command, its environment, its nats_to_bpb) for `tuned-lens eval`, or None with the reason printed."""
    site = Path(args.tunedlens_site)
    if not site.exists():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), "torchdata==0.9.0"]
        built = subprocess.run(pip, capture_output=True, text=True)
        if built.returncode != 0:
            print(f"tuned-lens eval CLI skipped: {' '.join(pip)} failed: {built.stderr.strip()[-300:]}")
            return None
        for name, text in TUNEDLENS_SHIMS.items():
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            (site / name).write_text(text, encoding="utf-8")
    cli_env = {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])),
        "HF_DATASETS_CACHE": str(work / "hf-datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import tuned_lens.scripts.eval_loop"], env=cli_env, capture_output=True, text=True
    )
    if probe.returncode != 0:
        print(f"tuned-lens eval CLI skipped: it does not import with {site} first: {probe.stderr.strip()[-300:]}")
        return None
    import math

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    sep = tok.eos_token
    if tok.eos_token_id != tok.bos_token_id:
        print("tuned-lens eval CLI skipped: it separates documents with EOS, and EOS is not BOS here")
        return None
    docs = corpus.read_text(encoding="utf-8").splitlines()
    data = work / "corpus.jsonl"
    data.write_text(json.dumps({"text": sep.join(docs) + sep}) + "\n", encoding="utf-8")
    joined = sep + sep.join(docs) + sep  # what chunk_and_tokenize tokenizes and counts
    nats_to_bpb = len(tok(joined)["input_ids"]) / len(joined.encode("utf-8")) / math.log(2)
    out = work / "tunedlens-out"
    cmd = [sys.executable, "-m", "tuned_lens", "eval", "--data.name", str(data), "--max_length", str(args.tokens)]
    cmd += ["--model.name", str(model), "--precision", "float32", "-o", str(out)]
    return cmd, cli_env, nats_to_bpb


def tunedlens_numbers(out: Path, nats_to_bpb: float, n_layers: int) -> dict:
    """Its aggregate_metrics.json (bits per byte) back in nats: the logit lens's CE per layer, then the output's."""
    metrics = json.loads((out / "aggregate_metrics.json").read_text())
    ce = [metrics["logit"]["ce"][f"layer_{l}"] for l in range(n_layers)] + [metrics["baseline"]["ce"]["final"]]
    return {"lens": [v / nats_to_bpb for v in ce]}


def commands(
    args, model: Path, corpus: Path, one: Path, work: Path, tunedlens_cmd: list[str] | None = None
) -> dict[str, dict[str, list[str]]]:
    py = sys.executable
    me = [py, str(HERE), "--model", str(model), "--corpus", str(corpus)]
    cli = [py, "-m", "normprobe"]
    out = str(work / "out")
    common = ["--batch-size", "8", "--seq-len", str(args.tokens), "--no-progress", "--overwrite", "-o", out]
    trace = [*cli, "trace", str(model), "-i", str(one), "--top-k", str(TOP_K), "--no-progress", "--overwrite", "-o", out]
    tasks = {
        "norms": {
            "floor (HF output_hidden_states)": [*me, "--worker", "hf_norms"],
            "normprobe run --probe norms": [*cli, "run", str(model), "-i", str(corpus), "-p", "norms", *common],
            "TransformerLens bridge run_with_cache": [*me, "--worker", "tl_norms"],
        },
        "lens": {
            "floor (HF hidden states, norm, head, CE)": [*me, "--worker", "hf_lens"],
            "normprobe run --probe lens": [*cli, "run", str(model), "-i", str(corpus), "-p", "lens", *common],
            **({TUNEDLENS_CLI: tunedlens_cmd} if tunedlens_cmd else {}),
            "tuned-lens eval's loop, re-implemented (logit lens)": [*me, "--worker", "tunedlens_eval"],
            "normprobe run --probe updates": [*cli, "run", str(model), "-i", str(corpus), "-p", "updates", *common],
        },
        "trace": {
            "floor (HF hidden states, log-softmax, top-k)": [*me, "--corpus", str(one), "--worker", "hf_trace"],
            "normprobe trace --columns lens": [*trace, "--columns", "lens"],
            "normprobe trace (all columns)": trace,
            "tuned-lens PredictionTrajectory": [*me, "--corpus", str(one), "--worker", "tunedlens_trace"],
        },
    }
    if args.nnsight_path is not None:
        tasks["norms"]["nnsight trace + save"] = [*me, "--worker", "nnsight_norms"]
    chosen = {t: tasks[t] for t in args.tasks}
    if args.tools:  # a subset (the floor is always kept): e.g. the long corpus's normprobe-only rounds
        chosen = {
            t: {k: v for i, (k, v) in enumerate(tools.items()) if i == 0 or any(w in k for w in args.tools)}
            for t, tools in chosen.items()
        }
    return chosen


def run_one(cmd: list[str], env: dict[str, str], result: Path) -> tuple[float, int, dict | None]:
    """(wall seconds, this process's own peak RSS in bytes, its numbers) for one process."""
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env={**env, "BENCH_PEERS_RESULT": str(result)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr.decode(errors='replace')[-2000:]}")
    numbers = json.loads(result.read_text()) if result.exists() else None
    return wall, usage.ru_maxrss * 1024, numbers


def normprobe_numbers(task: str, out: Path, n_layers: int) -> dict:
    import pandas as pd

    if (out / "updates.parquet").exists():  # the lens loss per layer, as the updates probe reads it
        updates = pd.read_parquet(out / "updates.parquet").drop_duplicates("layer").sort_values("layer")
        return {"lens": [float(v) for v in updates["lens_loss_mean"]]}
    if task == "norms":
        norms = pd.read_parquet(out / "norms.parquet")
        pre = norms[norms["site"] == "resid_pre"]
        sums = (pre["mean"] * pre["count"]).groupby(pre["layer"]).sum() / pre.groupby("layer")["count"].sum()
        return {"norms": [float(sums[l]) for l in range(n_layers)]}
    if task == "lens":
        lens = pd.read_parquet(out / "lens.parquet")
        return {"lens": [float(v) for v in lens.sort_values("layer")["lens_loss_mean"]]}
    trace = pd.read_parquet(out / "trace.parquet")
    top1 = trace["top_logprobs"].map(lambda values: float(values[0]))
    return {"trace": [float(v) for v in top1.groupby(trace["layer"]).mean().sort_index()]}


TARGETS = [  # issue 31: (what, numerator, denominator, the bound, whether the ratio must stay at most or at least it)
    ("norms ≤ 1.05× its floor", ("norms", "normprobe run --probe norms"), ("norms", "floor"), 1.05, "max"),
    ("lens ≤ 1.10× its floor", ("lens", "normprobe run --probe lens"), ("lens", "floor"), 1.10, "max"),
    (  # its CLI where it ran, else its loop re-implemented
        "tuned-lens eval ≥ 1.5× lens",
        ("lens", (TUNEDLENS_CLI, "tuned-lens eval's loop")),
        ("lens", "normprobe run --probe lens"),
        1.5,
        "min",
    ),
    ("updates ≤ 3× the lens floor", ("lens", "normprobe run --probe updates"), ("lens", "floor"), 3.0, "max"),
    (
        "trace --columns lens ≤ 1.15× PredictionTrajectory",
        ("trace", "--columns lens"),
        ("trace", "PredictionTrajectory"),
        1.15,
        "max",
    ),
]


def target_lines(times: dict[tuple[str, str], list[float]]) -> list[str]:
    """Each target of issue 31 that this run measured: the ratio of medians and whether it is met."""

    def median_of(task: str, tools: str | tuple[str, ...]) -> tuple[str, float] | None:
        for tool in (tools,) if isinstance(tools, str) else tools:  # the first of the alternatives measured
            found = [(name, statistics.median(v)) for (t, name), v in times.items() if t == task and tool in name]
            if found:
                return found[0]
        return None

    lines = []
    for what, top, bottom, bound, kind in TARGETS:
        a, b = median_of(*top), median_of(*bottom)
        if a is None or b is None:
            continue
        ratio = a[1] / b[1]
        met = ratio <= bound if kind == "max" else ratio >= bound
        which = f"; from “{a[0]}”" if isinstance(top[1], tuple) else ""
        lines.append(f"- {what}: {ratio:.2f}× ({'met' if met else 'not met'}{which})")
    return lines


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-small")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per window, BOS included")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=["norms", "lens", "trace"])
    parser.add_argument("--pycache", type=Path, help="a bytecode cache kept between runs (then --warmup 0 can skip recompiling)")
    parser.add_argument("--tools", type=lambda s: s.split(","), default=None, help="only the tools whose names hold one of these")
    parser.add_argument("--nnsight-path", help="a folder holding nnsight (pip install --target), added to its PYTHONPATH only")
    parser.add_argument(
        "--tunedlens-site",
        default="/tmp/tunedlens_cli_site",
        help="a folder put first on tuned-lens eval's PYTHONPATH only (torchdata 0.9.0 and two shims; built if missing)",
    )
    parser.add_argument("--write", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        numbers = WORKERS[args.worker](args)
        Path(os.environ["BENCH_PEERS_RESULT"]).write_text(json.dumps(numbers))
        return

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="normprobe-bench-peers-"))
    model, corpus, one = build(args.shape, work, args.windows, args.tokens)
    n_layers = SHAPES[args.shape]["n_layer"]
    # bytecode cached as a normal installation has it: with PYTHONDONTWRITEBYTECODE every process would
    # compile every module it imports, which costs the tool with the most imports most (a warm-up round fills it)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(args.pycache or work / "pycache")
    nnsight_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [args.nnsight_path, env.get("PYTHONPATH")]))}
    tunedlens = tunedlens_setup(args, env, model, corpus, work) if "lens" in args.tasks else None
    plan = commands(args, model, corpus, one, work, tunedlens[0] if tunedlens else None)
    envs = {"nnsight": nnsight_env, TUNEDLENS_CLI: tunedlens[1] if tunedlens else env}
    times: dict[tuple[str, str], list[float]] = {}
    peaks: dict[tuple[str, str], list[int]] = {}
    agree: dict[tuple[str, str], str] = {}
    for round_ in range(-args.warmup, args.repeats):
        for task, tools in plan.items():
            for tool, cmd in tools.items():
                tool_env = next((e for key, e in envs.items() if key in tool), env)
                if round_ < 0:  # untimed: fills the bytecode cache and the page cache
                    run_one(cmd, tool_env, work / "result.json")
                    continue
                wall, peak, numbers = run_one(cmd, tool_env, work / "result.json")
                if tool.startswith("normprobe"):
                    numbers = normprobe_numbers(task, work / "out", n_layers)
                if tool == TUNEDLENS_CLI and tunedlens:
                    numbers = tunedlens_numbers(work / "tunedlens-out", tunedlens[2], n_layers)
                times.setdefault((task, tool), []).append(wall)
                peaks.setdefault((task, tool), []).append(peak)
                if round_ == 0:
                    floor = next(iter(tools))
                    if tool == floor:
                        agree[(task, "floor")] = json.dumps(numbers)
                    want = json.loads(agree[(task, "floor")])[task]
                    got = (numbers or {}).get(task)
                    ok = (
                        got is not None
                        and len(got) == len(want)
                        and all(abs(g - w) <= 1e-4 * max(1.0, abs(w)) for g, w in zip(got, want))
                    )
                    agree[(task, tool)] = "yes" if ok else f"NO ({got} vs {want})"
                print(f"{task:6s} {tool:45s} {wall:7.2f} s  {peak / 1e9:5.2f} GB", flush=True)
    load_after = os.getloadavg()
    tokens = args.windows * args.tokens
    lines = [
        f"Machine: {machine()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        f"Model: random GPT-2 of shape {args.shape}, float32; {args.windows} windows of {args.tokens} tokens "
        f"({tokens} tokens; trace: one window); median of {args.repeats} interleaved rounds after {args.warmup} untimed, "
        "whole processes, bytecode cached.",
        "",
        "| task | tool | wall (s) | × floor | peak RSS (GB) | equal to the floor |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task, tools in plan.items():
        floor = statistics.median(times[(task, next(iter(tools)))])
        for tool in tools:
            wall = statistics.median(times[(task, tool)])
            peak = statistics.median(peaks[(task, tool)])
            lines.append(f"| {task} | {tool} | {wall:.2f} | {wall / floor:.2f} | {peak / 1e9:.2f} | {agree[(task, tool)]} |")
    lines += ["", *target_lines(times)]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        args.write.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()

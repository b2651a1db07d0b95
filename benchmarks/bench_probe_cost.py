"""What each readout probe costs against `norms` and against its honest floor, with start-up subtracted.

On a random model of a real shape (speed does not depend on the weights), the same documents in
512-token windows run through the runner with each of:
  - `norms` (the forward and norms: the cheapest run);
  - `floor`: the forward plus one loss-and-gradient readout per layer (a probe defined here), the
    least any probe that reads the gradient at every layer can cost;
  - `updates`;
  - `linesearch` at the default α grid and at 33 α.
Each is timed twice, on --tokens tokens and on one short document, and the difference is divided by
the difference in tokens: start-up (and the first batch's warm-up) cancels. Ratios are within one
run of this script, so a loaded machine shifts them less than the seconds. Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_probe_cost.py                    # GPT-2 small shape
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_probe_cost.py --shape llama-128k --tokens 128
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_probe_cost.py --shape gemma2-softcap --tokens 128
    PYTHONPATH=OTHER_CHECKOUT .venv/bin/python benchmarks/bench_probe_cost.py --shape demo   # that checkout's code
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from random_model import GPT2_SMALL, LLAMA_1B_WIDTH

SHAPES = {
    # GPT-2 small: LayerNorm, tied 50,257-token unembedding
    "gpt2-small": ("GPT2Config", dict(**GPT2_SMALL, n_positions=1024)),
    # Llama-3.2-1B's width and 128k vocabulary (RMSNorm, untied), 4 layers to keep the forward short
    "llama-128k": (
        "LlamaConfig",
        dict(**LLAMA_1B_WIDTH, num_hidden_layers=4, tie_word_embeddings=False, max_position_embeddings=1024),
    ),
    # Gemma 2 2B's width and 256k vocabulary, RMSNorm (1 + w) and final-logit soft-capping, 4 layers
    "gemma2-softcap": (
        "Gemma2Config",
        dict(
            vocab_size=256000,
            hidden_size=2304,
            intermediate_size=9216,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            final_logit_softcapping=30.0,
            max_position_embeddings=1024,
        ),
    ),
    "demo": None,  # the built-in demo model (4 layers, width 128): compare with another checkout's code
    "quick": ("GPT2Config", dict(n_embd=128, n_layer=4, n_head=4, vocab_size=8192, n_positions=512)),
}
ALPHAS_33 = [i / 8 for i in range(25)] + [3.25, 3.5, 3.75, 4.0, 4.5, 5.0, 5.5, 6.0]


def build_model(shape: str, folder: Path) -> Path:
    import transformers
    from random_model import save_random_model

    config_class, fields = SHAPES[shape]
    return save_random_model(getattr(transformers, config_class)(**fields, bos_token_id=0, eos_token_id=0), folder)


def floor_probe():
    """The forward plus one loss-and-gradient readout (the logit lens) of resid_pre at every layer."""
    from normprobe.probe import Probe
    from normprobe.readouts import chunked_loss_and_grad, make_readout

    class FloorProbe(Probe):
        name = "floor"
        description = "forward + one loss-and-gradient readout per layer (benchmark only)"

        def setup(self, model, seq_len):
            self._readout, self._vocab = make_readout(model, "logit"), model.d_vocab
            self._hooks = {model.hook_name("resid_pre", l): l for l in range(model.n_layers)}
            self.total = 0.0

        def hook_points(self):
            return list(self._hooks)

        def reduce(self, hook_name, activation, batch):
            return activation[batch.has_next].float()

        def update_layer(self, layer, activations, batch):
            targets = batch.next_tokens[batch.has_next]
            for h in activations.values():
                loss, grad = chunked_loss_and_grad(self._readout, h, targets, layer, 1 << 24, self._vocab)
                self.total += float(loss.sum()) + float(grad[:, 0].sum())

        def result(self):
            return {}

        def update(self, activations, batch):
            pass

        def merge(self, other):
            self.total += other.total

        def state_dict(self):
            return {"total": self.total}

        def load_state_dict(self, state):
            self.total = state["total"]

    return FloorProbe


def seconds_per_token(model, docs, short_doc, probes, seq_len, **options) -> tuple[float, int]:
    import normprobe

    def timed(texts):
        started = time.perf_counter()
        result = normprobe.run(model, texts=texts, probes=probes, progress=False, seq_len=seq_len, **options)
        return time.perf_counter() - started, int(result.meta["n_tokens"])

    timed([short_doc])  # warm-up: the first run of a probe pays one-off costs
    small_s, small_n = timed([short_doc])
    big_s, big_n = timed(docs)
    return (big_s - small_s) / max(1, big_n - small_n), big_n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="gpt2-small", choices=sorted(SHAPES))
    parser.add_argument("--tokens", type=int, default=1024, help="tokens to time (whole 512-token windows)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--only", default=None, help="comma-separated subset of: norms,floor,updates,linesearch,linesearch33")
    args = parser.parse_args()

    import normprobe
    from normprobe.corpus import sample_documents
    from normprobe.probes.linesearch import DEFAULT_ALPHAS

    text = " ".join(sample_documents())
    words = text.split()
    with tempfile.TemporaryDirectory() as folder:
        where = "demo" if args.shape == "demo" else str(build_model(args.shape, Path(folder)))
        model = normprobe.load_model(where, device="cpu")
        ids = model.encode(" ".join(words[: 4 * args.tokens]))[: args.tokens - 1]
        docs = [model.tokenizer.decode(ids)]
        short = model.tokenizer.decode(ids[:15])
        runs = {
            "norms": (["norms"], {}),
            "floor": ([floor_probe()], {}),
            "updates": (["updates"], {}),
            "linesearch": (["linesearch"], {}),
            "linesearch33": (["linesearch"], {"alphas": ALPHAS_33}),
        }
        wanted = args.only.split(",") if args.only else list(runs)
        cost: dict[str, float] = {}
        print(
            f"{args.shape}: {model.n_layers} layers, width {model.d_model}, vocabulary {model.d_vocab}, "
            f"{model.facts()['norm_type']}, {model.facts()['logit_postprocessing']}; "
            f"torch threads {torch.get_num_threads()}"
        )
        print(f"readout along a line: {model.facts().get('line_readout', 'n/a')}")
        for name in wanted:
            probes, options = runs[name]
            cost[name], n = seconds_per_token(model, docs, short, probes, args.seq_len, **options)
            print(f"  {name:<13} {1e3 * cost[name]:9.2f} ms/token  (start-up subtracted, {n} tokens)", flush=True)

    def ratio(a, b):
        return f"{cost[a] / cost[b]:.2f}" if a in cost and b in cost else "n/a"

    print(f"\nα grids: default {len(DEFAULT_ALPHAS)} α, and 33 α")
    print("| ratio | measured | target |\n| --- | --- | --- |")
    for a, b, target in (
        ("linesearch", "updates", "≤ 2.5"),
        ("linesearch33", "linesearch", "≤ 1.3"),
        ("updates", "floor", "≤ 1.5"),
        ("updates", "norms", "≤ 6"),
        ("floor", "norms", ""),
    ):
        print(f"| {a} / {b} | {ratio(a, b)} | {target} |")


if __name__ == "__main__":
    sys.exit(main())

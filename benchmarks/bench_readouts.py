"""What a readout and a line search cost: the tuned readout against the logit readout, and linesearch per α.

Measures, on a model (default: the demo) and the first --docs documents of the built-in sample:
  - one readout call on --tokens random hidden states: loss, and loss with gradient, logit vs tuned
    (a random tuned lens; speed does not depend on its weights);
  - whole runs of `updates` with each readout;
  - whole runs of `linesearch` with α grids of 2 and 9 points: the difference over 7 is the cost of one α
    (three components), the rest is the forward pass and the α = 0 loss.
Times are the median of --repeats runs after one warm-up. Run from the repository root:

    .venv/bin/python benchmarks/bench_readouts.py                  # the demo model
    .venv/bin/python benchmarks/bench_readouts.py --model gpt2     # any model normprobe loads
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_probe import timed as median_time  # noqa: E402


def timed(fn, repeats: int) -> float:
    return median_time(fn, repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import normprobe
    from normprobe.corpus import sample_documents
    from normprobe.readouts import make_readout
    from normprobe.readouts.tuned import new_translators, save_lens

    model = normprobe.load_model(args.model, device=args.device)
    docs = sample_documents()[: args.docs]
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        translators = new_translators(model.d_model, model.n_layers)
        with torch.no_grad():
            for t in translators:
                t.weight.normal_(0, 0.02)
        save_lens(folder, translators, model)
        tuned = f"tuned:{folder}"
        h = torch.randn(args.tokens, model.d_model, device=model.device)
        targets = torch.randint(0, model.d_vocab, (args.tokens,), device=model.device)
        rows = []
        for spec in ("logit", tuned):
            readout = make_readout(model, spec)
            name = spec.split(":")[0]
            rows.append((f"{name} readout: loss, {args.tokens} tokens", timed(lambda: readout.loss(h, targets, 0), args.repeats)))
            rows.append(
                (
                    f"{name} readout: loss and gradient, {args.tokens} tokens",
                    timed(lambda: readout.loss_and_grad(h, targets, 0), args.repeats),
                )
            )

        def run(probe, **options):
            return normprobe.run(model, texts=docs, probes=[probe], progress=False, **options)

        n_tokens = run("updates").meta["n_tokens"]
        for spec in ("logit", tuned):
            rows.append((f"updates run, {spec.split(':')[0]} readout", timed(lambda: run("updates", readout=spec), args.repeats)))
        two = timed(lambda: run("linesearch", alphas=[0.0, 1.0]), args.repeats)
        nine = timed(lambda: run("linesearch"), args.repeats)
        rows.append(("linesearch run, α grid of 2", two))
        rows.append(("linesearch run, default α grid of 9", nine))
        rows.append(("linesearch: one more α (3 components, every layer)", (nine - two) / 7))
        rows.append(("linesearch, tuned readout, α grid of 9", timed(lambda: run("linesearch", readout=tuned), args.repeats)))
    print(
        f"{args.model} on {args.device}, {torch.get_num_threads()} threads; runs over {args.docs} documents "
        f"({n_tokens} tokens), median of {args.repeats}"
    )
    for label, seconds in rows:
        print(f"  {label:<58} {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    main()

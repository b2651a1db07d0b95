"""The logit and model readouts side by side on the demo model: descent per layer and component, as a Markdown table.

Runs `updates` over the first --docs documents of the built-in sample twice, with `--readout logit`
and with `--readout model --ablate`, and prints, per layer and component: the mean descent cosine
under each readout with its 95% interval over tokens (±1.96 std/√n), and the mean loss change under
each: the lens's loss(h + Δ) - loss(h) for the logit readout, and for the model readout the
first-order g·Δ and the rerun's loss with the update minus without it. docs/model-readout.md quotes it.

    .venv/bin/python benchmarks/demo_readout_table.py
"""

from __future__ import annotations

import argparse
import math


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=40)
    args = parser.parse_args()

    import normprobe

    model = normprobe.load_model("demo", device="cpu")
    runs = {
        spec: normprobe.run(model, probes=["updates"], max_docs=args.docs, progress=False, **options)["updates"]
        for spec, options in (("logit", {"readout": "logit"}), ("model", {"readout": "model", "ablate": True}))
    }
    logit, own = (runs[k].set_index(["layer", "component"]) for k in ("logit", "model"))
    n_tokens = int(own.loc[(model.n_layers, "output"), "count"])
    print(f"demo model ({model.n_layers} layers), first {args.docs} documents of the built-in sample, {n_tokens} tokens\n")
    print(
        "| layer | component | descent cos, logit lens | descent cos, model | loss change, logit lens "
        "| g·Δ, model | loss change (ablation), model |"
    )
    print("|---|---|---|---|---|---|---|")

    def cos(row):
        half = 1.96 * row["descent_cos_std"] / math.sqrt(row["count"])
        return f"{row['descent_cos_mean']:+.3f} ± {half:.3f}"

    for (layer, component), row in own.iterrows():
        if component == "output":
            continue
        lens = logit.loc[(layer, component)]
        print(
            f"| {layer} | {component} | {cos(lens)} | {cos(row)} | {lens['actual_change_mean']:+.3f} "
            f"| {row['predicted_change_mean']:+.3f} | {row['actual_change_mean']:+.3f} |"
        )


if __name__ == "__main__":
    main()

"""The evolution report: findings and curves of a checkpoint sweep against training step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from .common import Block, Section, empty_figure, esc, figure, integer_axis, log_toggle
from .curves import descent_curve, lens_loss_curve, residual_norm_curve
from .page import render_page


def evolution_findings(runs: Sequence[tuple[int, Any]]) -> dict[str, Any]:
    """Per-checkpoint headline numbers, and how they move together over training."""
    steps = [step for step, _ in runs]
    out: dict[str, Any] = {
        "steps": steps,
        "growth_geometric": [],
        "position0_ratio_max": [],
        "model_loss": [],
        "descent_cos_block_mean": [],
    }
    for _, result in runs:
        norms = result.findings.get("norms", {})
        out["growth_geometric"].append((norms.get("growth") or {}).get("geometric"))
        out["position0_ratio_max"].append(norms.get("position0_ratio_max"))
        table = result.tables.get("updates")
        if table is not None and len(table):
            output = table[table["component"] == "output"]
            block = table[table["component"] == "block"]
            out["model_loss"].append(float(output["lens_loss_mean"].iloc[0]) if len(output) else None)
            weights = block["count"].to_numpy(dtype=float)
            out["descent_cos_block_mean"].append(float(np.average(block["descent_cos_mean"], weights=weights)))
        else:
            out["model_loss"].append(None)
            out["descent_cos_block_mean"].append(None)
    ratios = out["position0_ratio_max"]
    out["first_step_position0_ratio_above_2"] = next((s for s, r in zip(steps, ratios) if r is not None and r > 2), None)
    pairs = [(l, d) for l, d in zip(out["model_loss"], out["descent_cos_block_mean"]) if l is not None and d is not None]
    if len(pairs) >= 3:
        loss, cos = np.array(pairs).T
        out["loss_vs_descent_pearson"] = float(np.corrcoef(loss, cos)[0, 1])
        ranks = lambda v: np.argsort(np.argsort(v)).astype(float)  # noqa: E731 - steps are distinct
        out["loss_vs_descent_spearman"] = float(np.corrcoef(ranks(loss), ranks(cos))[0, 1])
    return out


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _vs_step(title: str, y_title: str, steps, values, reason: str, log_y: bool = True) -> go.Figure:
    points = [(s, v) for s, v in zip(steps, values) if v is not None]
    if not points:
        return empty_figure(title, reason)
    fig = figure(title, "training step", y_title)
    x, y = zip(*points)
    fig.add_trace(
        go.Scatter(x=x, y=y, mode="lines+markers", name=esc(y_title), hovertemplate="step %{x}<br>%{y:.4g}<extra></extra>")
    )
    # a log y-axis only for quantities positive by nature, not for cosines
    fig.update_layout(updatemenus=[log_toggle("xaxis", x=0.78)] + ([log_toggle("yaxis")] if log_y else []))
    return fig


def _curves(title: str, y_title: str, runs, extract, reason: str) -> go.Figure:
    curves = [(step, *extract(result)) for step, result in runs]
    curves = [c for c in curves if c[1] is not None and len(c[1])]
    if not curves:
        return empty_figure(title, reason)
    fig = figure(title, "layer", y_title)
    colours = sample_colorscale("Viridis", list(np.linspace(0, 0.9, len(curves))))
    for (step, layers, values), colour in zip(curves, colours):
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=values,
                mode="lines+markers",
                name=f"step {step}",
                line=dict(color=colour),
                hovertemplate=f"step {step}<br>layer %{{x}}<br>%{{y:.4g}}<extra></extra>",
            )
        )
    integer_axis(fig, "x", curves[0][1])
    return fig


def render_evolution(runs: Sequence[tuple[int, Any]], plotlyjs: str = "inline", name: str | None = None) -> str:
    f = evolution_findings(runs)
    steps = f["steps"]
    no_updates = "run the sweep with --probe updates"
    no_norms = "run the sweep with --probe norms"
    rows = [
        ("Checkpoints (training steps)", ", ".join(map(str, steps))),
        ("First step where the position-0 outlier ratio exceeds 2", _fmt(f["first_step_position0_ratio_above_2"])),
        (
            "Correlation across checkpoints of model loss and mean descent alignment (Pearson)",
            _fmt(f.get("loss_vs_descent_pearson")),
        ),
        ("Same, Spearman", _fmt(f.get("loss_vs_descent_spearman"))),
    ]
    for key, label in (
        ("model_loss", "Model loss"),
        ("growth_geometric", "Norm growth per layer (geometric)"),
        ("position0_ratio_max", "Position-0 outlier ratio (max over layers)"),
        ("descent_cos_block_mean", "Mean descent alignment of block updates"),
    ):
        rows.append((f"{label} by step", ", ".join(f"{s}: {_fmt(v)}" for s, v in zip(steps, f[key]))))
    section = Section(
        title="Over training",
        anchor="evolution",
        findings=rows,
        blocks=[
            Block(
                figure=_vs_step("Model loss at each checkpoint", "cross-entropy (nats)", steps, f["model_loss"], no_updates),
                caption="The log-x button hides step 0.",
            ),
            Block(
                figure=_vs_step(
                    "Norm growth factor per layer (geometric mean of ratios)",
                    "growth per layer",
                    steps,
                    f["growth_geometric"],
                    no_norms,
                )
            ),
            Block(
                figure=_vs_step(
                    "Position-0 outlier ratio (largest over layers)", "ratio", steps, f["position0_ratio_max"], no_norms
                )
            ),
            Block(
                figure=_vs_step(
                    "Mean descent alignment of the block update",
                    "mean cos(Δ, -dCE/dh)",
                    steps,
                    f["descent_cos_block_mean"],
                    no_updates,
                    log_y=False,
                )
            ),
            Block(
                figure=_curves(
                    "Mean norm of the residual stream h_0..h_L, one line per checkpoint",
                    "mean L2 norm",
                    runs,
                    residual_norm_curve,
                    no_norms,
                )
            ),
            Block(
                figure=_curves(
                    "Logit-lens loss over depth, one line per checkpoint",
                    "cross-entropy (nats)",
                    runs,
                    lens_loss_curve,
                    no_updates,
                )
            ),
            Block(
                figure=_curves(
                    "Descent alignment of the block update per layer, one line per checkpoint",
                    "mean cosine",
                    runs,
                    descent_curve,
                    no_updates,
                )
            ),
        ],
    )
    first = runs[0][1].meta
    name = name or first.get("model")
    meta = {
        "model": name,
        "status": "complete",
        "family": first.get("family"),
        "n_layers": first.get("n_layers"),
        "d_model": first.get("d_model"),
        "corpus": first.get("corpus"),
        "n_tokens": first.get("n_tokens"),
        "dtype": first.get("dtype"),
        "probes": first.get("probes"),
        "checkpoints": ", ".join(str(s) for s in steps),
    }
    return render_page(meta, [section], plotlyjs=plotlyjs, title=f"normprobe over training: {name}")

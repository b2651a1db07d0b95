"""Figures for the linesearch probe, from its table alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .baselines import add_baseline
from .common import Block, Section, data_notes, empty_figure, f32, figure, integer_axis, spread_layers
from .updates import COMPONENT_COLOURS, readout_label


def baseline_numbers(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """kind -> α* per component and layer of that baseline, from its own line_search table."""
    from ..probes.linesearch import line_search_findings

    found = meta.get("baseline_tables") or {}
    return {kind: line_search_findings(t["line_search"]) for kind, t in found.items() if len(t.get("line_search", ()))}


NOTES = [
    "α* is the step size along the layer's own update Δ that minimises the lens loss: the grid's best α, "
    "moved to the vertex of the parabola through it and its two neighbours.",
    "α* near 1 means the model's step has the size that is best on its own line; α* above 1 means it steps "
    "too short, below 1 too far, and α* at 0 means Δ does not lower the loss at all.",
    "Every point on the line is read through layer l's readout (its translator, for a tuned lens), the same one "
    "that defines the descent gradient at h_l.",
]


def loss_curves(table: pd.DataFrame, component: str) -> go.Figure:
    title = f"Lens loss along h_l + αΔ, {component} update (one line per layer; α = 1 is the model's own step)"
    rows = table[table["component"] == component]
    if rows.empty:
        return empty_figure(title, "no update was measured")
    fig = figure(title, "α (multiple of the update)", "lens loss minus loss at α = 0 (nats)")
    layers = spread_layers(sorted(rows["layer"].unique()))
    in_nats, per_layer = [], []
    for layer in layers:
        line = rows[rows["layer"] == layer].sort_values("alpha")
        base = line.loc[line["alpha"] == 0.0, "lens_loss_mean"]
        offset = float(base.iloc[0]) if len(base) else 0.0
        change = line["lens_loss_mean"].to_numpy(float) - offset
        largest = float(np.nanmax(np.abs(change))) if np.isfinite(change).any() else 0.0
        in_nats.append(f32(change))
        per_layer.append(f32(change / largest if largest > 0 else change))
        fig.add_trace(
            go.Scatter(
                x=f32(line["alpha"]),
                y=in_nats[-1],
                mode="lines+markers",
                name=f"layer {layer}",
                customdata=f32(line["lens_loss_mean"]),
                hovertemplate=f"layer {layer}<br>α %{{x}}<br>change %{{y:.4f}}<br>loss %{{customdata:.4f}}<extra></extra>",
            )
        )
    fig.add_vline(x=1.0, line=dict(color="#888", width=1, dash="dot"))
    # one layer's change can dwarf the others' (the logit lens at layer 0): a per-layer scale shows each shape
    scale = "lens loss change ÷ that layer's largest |change|"
    fig.update_layout(
        updatemenus=[
            dict(
                buttons=[
                    dict(
                        label="nats",
                        method="update",
                        args=[{"y": in_nats}, {"yaxis.title.text": "lens loss minus loss at α = 0 (nats)"}],
                    ),
                    dict(label="per-layer scale", method="update", args=[{"y": per_layer}, {"yaxis.title.text": scale}]),
                ],
                x=1.0,
                y=1.02,
                xanchor="right",
                yanchor="bottom",
            )
        ]
    )
    return fig


def alpha_star_figure(findings: dict[str, Any], baselines: dict[str, dict[str, Any]] | None = None) -> go.Figure:
    title = "Best step α* per layer (dotted: α = 1, the step the model takes)"
    stars = findings.get("alpha_star") or {}
    if not any(stars.values()):
        return empty_figure(title, "no update was measured")
    fig = figure(title, "layer", "α*")
    all_layers = []
    for component, values in stars.items():
        layers = np.array([int(k) for k in values], dtype=int)
        all_layers.extend(layers.tolist())
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=f32(list(values.values())),
                mode="lines+markers",
                name=component,
                line=dict(color=COMPONENT_COLOURS.get(component)),
                hovertemplate=f"{component}<br>layer %{{x}}<br>α* %{{y:.3f}}<extra></extra>",
            )
        )
    for kind, found in (baselines or {}).items():
        for component, values in (found.get("alpha_star") or {}).items():
            if values:
                add_baseline(
                    fig,
                    kind,
                    np.array([int(k) for k in values]),
                    list(values.values()),
                    f"{component} ({kind})",
                    visible=component == "block",
                )
    fig.add_hline(y=1.0, line=dict(color="#888", width=1, dash="dot"))
    integer_axis(fig, "x", sorted(set(all_layers)))
    return fig


def render_line_search(tables: dict[str, pd.DataFrame], findings: dict[str, Any], meta: dict[str, Any]) -> Section:
    table = tables.get("line_search", pd.DataFrame(columns=["layer", "component", "alpha", "count", "lens_loss_mean"]))
    return Section(
        title="Line search along each update",
        anchor="linesearch",
        notes=[f"Readout: {readout_label(meta)}."] + list(NOTES) + data_notes(findings, "losses"),
        blocks=[Block(figure=alpha_star_figure(findings, baseline_numbers(meta)))]
        + [Block(figure=loss_curves(table, c)) for c in ("block", "attn", "mlp")],
    )

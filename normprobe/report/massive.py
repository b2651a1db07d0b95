"""Figures for the massive probe, from its tables alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .common import Block, Section, empty_figure, esc, f32, figure, grid_within_budget, integer_axis, spread_layers
from .norms import _fmt

MASSIVE_COLUMNS = ["site", "layer", "position", "count", "max_abs_mean", "median_abs_mean", "max_dim_mode", "norm_mean"]
TOKENS_SHOWN = 20


def ratio_heatmap(massive: pd.DataFrame) -> go.Figure:
    title = "Max / median of |h_i| over layer and position (log10; the top row is the last block's output)"
    if massive.empty:
        return empty_figure(title, "the run measured no tokens")
    stream = massive.assign(row=np.where(massive["site"] == "resid_post", massive["layer"] + 1, massive["layer"]))
    rows, cols, top, width = grid_within_budget(stream, "row", "position", "max_abs_mean")
    _, _, middle, _ = grid_within_budget(stream, "row", "position", "median_abs_mean")
    ratio = np.divide(top, middle, out=np.full_like(top, np.nan), where=middle > 0)
    fig = figure(title, "position in window", "layer (h_0..h_L)", height=480)
    where = f"positions %{{x}}..%{{x}}+{width - 1}" if width > 1 else "position %{x}"
    fig.add_trace(
        go.Heatmap(
            x=cols,
            y=rows,
            z=f32(np.log10(ratio)),
            customdata=f32(ratio),
            colorscale="Magma",
            colorbar=dict(title="log10 ratio"),
            hovertemplate=f"layer %{{y}}<br>{where}<br>max/median %{{customdata:.4g}}<extra></extra>",
        )
    )
    integer_axis(fig, "y", rows)
    if width > 1:
        fig.add_annotation(
            text=f"positions pooled in bins of {width} to fit the point budget",
            x=0,
            y=-0.18,
            xref="paper",
            yref="paper",
            showarrow=False,
            font=dict(size=11, color="#666"),
        )
    return fig


def sink_heatmap(sink: pd.DataFrame) -> go.Figure:
    title = "Attention sink: mean attention weight on key position 0, per layer and query head"
    if sink.empty:
        return empty_figure(title, "no query at position ≥ 1 (every window was one token long)")
    grid = sink.pivot(index="layer", columns="head", values="sink_mass_mean").sort_index()
    counts = sink.pivot(index="layer", columns="head", values="count").reindex_like(grid)
    fig = figure(title, "query head", "layer", height=440)
    fig.add_trace(
        go.Heatmap(
            x=grid.columns.to_numpy(),
            y=grid.index.to_numpy(),
            z=f32(grid.to_numpy()),
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar=dict(title="weight"),
            customdata=counts.to_numpy(),
            hovertemplate="layer %{y}, head %{x}<br>mean weight on key 0 %{z:.3f}<br>queries %{customdata}<extra></extra>",
        )
    )
    integer_axis(fig, "y", grid.index)
    fig.update_xaxes(dtick=1)
    return fig


def top_dims_bars(top: pd.DataFrame) -> go.Figure:
    title = "Share of the squared norm in each of the top 8 dimensions: position 0 against later positions"
    if top.empty:
        return empty_figure(title, "no resid_pre vector had a nonzero norm")
    fig = figure(title, "rank of the dimension (label: its index)", "share of Σ‖h‖²")
    layers = spread_layers(sorted(top["layer"].unique()))
    colours = {"position0": "#d62728", "rest": "#1f77b4"}
    for i, layer in enumerate(layers):
        for group, label in (("position0", "position 0"), ("rest", "positions ≥ 1")):
            rows = top[(top["layer"] == layer) & (top["group"] == group)].sort_values("rank")
            fig.add_trace(
                go.Bar(
                    x=rows["rank"].to_numpy(),
                    y=f32(rows["share"]),
                    name=f"{label}",
                    visible=(i == 0),
                    marker_color=colours[group],
                    text=[f"d{d}" for d in rows["dim"]],
                    textposition="outside",
                    hovertemplate=f"layer {layer}, {label}<br>rank %{{x}}: %{{text}}<br>share %{{y:.3f}}<extra></extra>",
                )
            )
    n = len(fig.data)
    buttons = [
        dict(label=f"layer {l}", method="update", args=[{"visible": [j // 2 == i for j in range(n)]}])
        for i, l in enumerate(layers)
    ]
    fig.update_layout(barmode="group", updatemenus=[dict(buttons=buttons, x=1.0, y=1.02, xanchor="right", yanchor="bottom")])
    fig.update_xaxes(dtick=1)
    return fig


def massive_tokens_block(tokens: pd.DataFrame | None, threshold: Any) -> Block:
    if tokens is None or tokens.empty:
        return Block(html=f"<p>No token at positions ≥ 1 had max/median |h_i| above {esc(_fmt(threshold))}.</p>")
    shown = tokens.sort_values(["count", "max_abs_mean"], ascending=False).head(TOKENS_SHOWN)
    table = shown.to_html(index=False, escape=True, border=0, classes="data", float_format=lambda v: f"{v:.4g}")
    return Block(
        html=f"<h3>Tokens with massive activations at positions ≥ 1 <small>(max/median above {esc(_fmt(threshold))}; "
        f"{len(tokens)} (layer, token) rows, the {len(shown)} most frequent shown)</small></h3>{table}"
    )


def render_massive(tables: dict[str, pd.DataFrame], findings: dict[str, Any], meta: dict[str, Any]) -> Section:
    massive = tables.get("massive", pd.DataFrame(columns=MASSIVE_COLUMNS))
    bos = "position 0 is BOS" if meta.get("prepend_bos") else "no BOS was prepended; position 0 is the first text token"
    return Section(
        title="Where the norm lives: massive activations and attention sinks",
        anchor="massive",
        blocks=[
            Block(
                figure=ratio_heatmap(massive),
                caption=f"Mean over tokens of max |h_i| divided by the mean of median |h_i|; {esc(bos)}.",
            ),
            Block(
                figure=sink_heatmap(
                    tables.get("attention_sink", pd.DataFrame(columns=["layer", "head", "count", "sink_mass_mean"]))
                )
            ),
            Block(
                figure=top_dims_bars(tables.get("top_dims", pd.DataFrame(columns=["layer", "group", "rank", "dim", "share"]))),
                caption="Use the menu to pick a layer.",
            ),
            massive_tokens_block(tables.get("massive_tokens"), findings.get("massive_ratio")),
        ],
    )

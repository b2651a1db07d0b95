"""Figures for the norms probe, from its tables alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .baselines import BASELINE_NOTE, add_baseline, baseline_frames, interval
from .common import (
    Block,
    Section,
    data_notes,
    empty_figure,
    esc,
    f32,
    figure,
    grid_within_budget,
    integer_axis,
    log_toggle,
    pooled_by,
    present_in_order,
    spans_orders,
    spread_layers,
)

SITE_ORDER = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")

SHOWN_LAYERS = 6  # curves drawn at first in the norm-by-position figure


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


NORMS_NOTES = [
    "The growth ratio of layer l is the mean norm of h_l+1 over that of h_l; the geometric mean summarises "
    "them, but one layer (often the first) can carry most of the growth, which the per-layer ratios show.",
]


def heatmap(norms: pd.DataFrame) -> go.Figure:
    title = "Mean norm over layer and position"
    if norms.empty:
        return empty_figure(title, "the run measured no tokens")
    fig = figure(title, "position in window", "layer", height=480)
    sites = present_in_order(SITE_ORDER, norms["site"])
    widest = 1
    for scale in ("linear", "log10"):
        for i, site in enumerate(sites):
            rows, cols, z, width = grid_within_budget(norms[norms["site"] == site], "layer", "position", "mean")
            widest = max(widest, width)
            if scale == "log10":
                z = np.log10(np.where(z > 0, z, np.nan))
            where = f"positions %{{x}}..%{{x}}+{width - 1}" if width > 1 else "position %{x}"
            fig.add_trace(
                go.Heatmap(
                    x=cols,
                    y=rows,
                    z=z,
                    colorscale="Viridis",
                    visible=(scale == "linear" and i == 0),
                    name=f"{site} {scale}",
                    colorbar=dict(title="norm" if scale == "linear" else "log10 norm"),
                    hovertemplate=(
                        f"{site}<br>layer %{{y}}<br>{where}<br>"
                        f"{'mean norm' if scale == 'linear' else 'log10 mean norm'} %{{z:.4g}}<extra></extra>"
                    ),
                )
            )
    n = len(fig.data)
    buttons = [
        dict(label=trace.name, method="update", args=[{"visible": [j == k for j in range(n)]}])
        for k, trace in enumerate(fig.data)
    ]
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=1.0, y=1.02, xanchor="right", yanchor="bottom")])
    integer_axis(fig, "y", norms["layer"].unique())
    if widest > 1:
        fig.add_annotation(
            text=f"positions averaged in bins of {widest} to fit the point budget",
            x=0,
            y=-0.18,
            xref="paper",
            yref="paper",
            showarrow=False,
            font=dict(size=11, color="#666"),
        )
    return fig


def norm_per_layer(norms: pd.DataFrame, baselines: dict[str, pd.DataFrame] | None = None) -> go.Figure:
    title = "Mean norm per layer, by site (band: ± one standard deviation over tokens)"
    if norms.empty:
        return empty_figure(title, "the run measured no tokens")
    fig = figure(title, "layer", "L2 norm")
    pooled = pooled_by(norms, ["site", "layer"])
    for site in present_in_order(SITE_ORDER, pooled["site"]):
        rows = pooled[pooled["site"] == site]
        colour = fig.layout.template.layout.colorway[SITE_ORDER.index(site)]
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([rows["layer"], rows["layer"][::-1]]),
                y=np.concatenate([rows["mean"] + rows["std"], (rows["mean"] - rows["std"]).clip(lower=0)[::-1]]),
                fill="toself",
                line=dict(width=0),
                fillcolor=colour,
                opacity=0.15,
                hoverinfo="skip",
                showlegend=False,
                legendgroup=site,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=rows["layer"],
                y=rows["mean"],
                name=site,
                mode="lines+markers",
                legendgroup=site,
                line=dict(color=colour),
                customdata=np.stack([rows["std"], rows["count"]], axis=1),
                hovertemplate=(
                    f"{site}<br>layer %{{x}}<br>mean %{{y:.4g}}<br>"
                    f"std %{{customdata[0]:.3g}}<br>tokens %{{customdata[1]}}<extra></extra>"
                ),
            )
        )
    for kind, frame in (baselines or {}).items():
        if frame.empty:
            continue
        by_layer = pooled_by(frame, ["site", "layer"])
        for site in present_in_order(SITE_ORDER, by_layer["site"]):
            rows = by_layer[by_layer["site"] == site]
            add_baseline(
                fig,
                kind,
                rows["layer"],
                rows["mean"],
                f"{site} ({kind})",
                interval(rows, "mean"),
                visible=site in ("resid_pre", "resid_post"),
            )
    fig.update_layout(updatemenus=[log_toggle("yaxis")])
    integer_axis(fig, "x", pooled["layer"].unique())
    if spans_orders(pooled["mean"]):
        fig.update_yaxes(type="log")
    return fig


def norm_by_position(norms: pd.DataFrame) -> go.Figure:
    title = "Mean resid_pre norm against position, per layer"
    pre = norms[norms["site"] == "resid_pre"]
    if pre.empty:
        return empty_figure(title, "no resid_pre norms were measured")
    fig = figure(title, "position in window", "mean L2 norm")
    layers = sorted(pre["layer"].unique())
    # every layer of a shallow model; six spread over depth for a deep one (the legend shows the rest)
    shown = (
        set(layers)
        if len(layers) <= SHOWN_LAYERS
        else {layers[round(i * (len(layers) - 1) / (SHOWN_LAYERS - 1))] for i in range(SHOWN_LAYERS)}
    )
    for layer in layers:
        rows = pre[pre["layer"] == layer]
        fig.add_trace(
            go.Scatter(
                x=rows["position"].to_numpy(np.int32),
                y=f32(rows["mean"]),
                mode="lines",
                name=f"layer {layer}",
                visible=True if layer in shown else "legendonly",
                customdata=rows["count"].to_numpy(np.int32),
                hovertemplate=(
                    f"layer {layer}<br>position %{{x}}<br>mean norm %{{y:.4g}}<br>tokens %{{customdata}}<extra></extra>"
                ),
            )
        )
    fig.update_layout(updatemenus=[log_toggle("yaxis"), log_toggle("xaxis", x=0.78)])
    if spans_orders(pre["mean"]):
        fig.update_yaxes(type="log")
    return fig


TOKENS_PER_LAYER = 2000  # point budget: the most frequent token types of each layer


def norm_by_frequency(tokens: pd.DataFrame | None) -> go.Figure:
    title = "Mean resid_pre norm of each token type against its frequency in the corpus (positions ≥ 1)"
    if tokens is None or tokens.empty:
        return empty_figure(title, "no token table (every token sat at position 0, or the run was empty)")
    pre = tokens[tokens["site"] == "resid_pre"]
    fig = figure(title, "occurrences in the corpus", "mean L2 norm", height=480)
    all_layers = sorted(pre["layer"].unique())
    layers = spread_layers(all_layers)
    trimmed = len(layers) < len(all_layers)
    for i, layer in enumerate(layers):
        rows = pre[pre["layer"] == layer]
        if len(rows) > TOKENS_PER_LAYER:
            rows, trimmed = rows.nlargest(TOKENS_PER_LAYER, "count"), True
        fig.add_trace(
            go.Scatter(
                x=rows["count"].to_numpy(np.int32),
                y=f32(rows["mean"]),
                mode="markers",
                name=f"layer {layer}",
                visible=(i == len(layers) - 1),
                marker=dict(size=5, opacity=0.6),
                cliponaxis=False,
                text=[esc(t) for t in rows["token"]],
                customdata=rows["token_id"],
                hovertemplate=(
                    f"token %{{text}} (id %{{customdata}})<br>layer {layer}<br>"
                    f"count %{{x}}<br>mean norm %{{y:.4g}}<extra></extra>"
                ),
            )
        )
    buttons = [
        dict(label=f"layer {l}", method="update", args=[{"visible": [j == i for j in range(len(layers))]}])
        for i, l in enumerate(layers)
    ]
    # counts start at 1: the log axis starts there too, not at Plotly's padded 0.6
    fig.update_xaxes(type="log", range=[0, np.log10(max(2, int(pre["count"].max()))) * 1.03])
    fig.update_layout(
        updatemenus=[dict(buttons=buttons, active=len(layers) - 1, x=1.0, y=1.02, xanchor="right", yanchor="bottom")]
    )
    if trimmed:
        fig.add_annotation(
            text=f"drawn: up to {TOKENS_PER_LAYER} most frequent token types of up to {len(layers)} layers; "
            "norms_by_token.parquet has all",
            x=0,
            y=-0.18,
            xref="paper",
            yref="paper",
            showarrow=False,
            font=dict(size=11, color="#666"),
        )
    return fig


def render_norms(tables: dict[str, pd.DataFrame], findings: dict[str, Any], meta: dict[str, Any]) -> Section:
    norms = tables.get("norms", pd.DataFrame(columns=["site", "layer", "position", "count", "mean", "std"]))
    tokens = tables.get("norms_by_token")
    bos = "position 0 is BOS" if meta.get("prepend_bos") else "no BOS was prepended; position 0 is the first text token"
    return Section(
        title="Token norms",
        anchor="norms",
        notes=list(NORMS_NOTES) + data_notes(findings, "norms"),
        blocks=[
            Block(figure=heatmap(norms), caption=f"Count-weighted mean over all windows; {esc(bos)}."),
            Block(
                figure=norm_per_layer(norms, baseline_frames(meta, "norms")),
                caption=BASELINE_NOTE if meta.get("baseline_tables") else "",
            ),
            Block(figure=norm_by_position(norms), caption="Click legend entries to show more layers."),
            Block(figure=norm_by_frequency(tokens), caption="Hover a point for its token. Use the menu to pick a layer."),
        ],
    )

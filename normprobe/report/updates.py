"""Figures for the updates probe, from its tables alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .baselines import BASELINE_NOTE, add_baseline, baseline_frames, interval
from .common import Block, Section, data_notes, empty_figure, figure, grid_within_budget, integer_axis, log_toggle, spans_orders

COMPONENT_COLOURS = {"attn": "#1f77b4", "mlp": "#d62728", "block": "#2ca02c"}


def readout_label(meta: dict[str, Any]) -> str:
    """Which readout the run read h through (runs saved before readouts existed used the logit lens)."""
    readout = meta.get("readout") or {"kind": "logit"}
    return str(readout.get("label") or ("logit lens" if readout.get("kind") == "logit" else readout.get("kind")))


UPDATES_NOTES = [
    "A layer's update descends the loss only where its claim holds (the claims table): the mean cosine between "
    "the update and -dCE/dh is above 0 and the actual loss change below 0, both with intervals over documents, "
    "and each beats every baseline by the minimum effect.",
    "Where the lens loss exceeds log V, the loss of guessing every token alike, the readout does not read the "
    "layer's representation (a known failure of the logit lens at early layers), so its losses and gradients "
    "say little there; the drop from the first meaningful layer leaves those layers out.",
    "The first-order check sets the change g·Δ that the linear picture predicts beside the change loss(h + Δ) − "
    "loss(h) actually made; where they part, the step is too large for a gradient step's picture to hold.",
]


def lens_loss_curve(updates: pd.DataFrame, baselines: dict[str, pd.DataFrame] | None = None) -> go.Figure:
    title = "Logit-lens loss of the next token, read out from h_l (the last point is the model's output)"
    lens = updates.drop_duplicates("layer").sort_values("layer")
    if lens.empty:
        return empty_figure(title, "no token had a next token")
    fig = figure(title, "layer (n_layers = model output)", "cross-entropy (nats)")
    fig.add_trace(
        go.Scatter(
            x=lens["layer"],
            y=lens["lens_loss_mean"],
            mode="lines+markers",
            name="lens loss",
            customdata=lens["count"],
            hovertemplate="layer %{x}<br>loss %{y:.4f}<br>tokens %{customdata}<extra></extra>",
        )
    )
    for kind, frame in (baselines or {}).items():
        rows = frame.drop_duplicates("layer").sort_values("layer")
        if not rows.empty:
            add_baseline(
                fig, kind, rows["layer"], rows["lens_loss_mean"], f"lens loss ({kind})", interval(rows, "lens_loss_mean")
            )
    fig.update_layout(updatemenus=[log_toggle("yaxis")])
    integer_axis(fig, "x", lens["layer"])
    return fig


def descent_alignment(updates: pd.DataFrame, baselines: dict[str, pd.DataFrame] | None = None) -> go.Figure:
    title = "Descent alignment cos(Δ, -dCE/dh) per layer (coloured band: 95% CI of the mean over documents)"
    steps = updates[updates["component"] != "output"]
    if steps.empty:
        return empty_figure(title, "no update was measured")
    fig = figure(title, "layer", "mean cosine")
    chance = float(steps["chance_cos_std"].iloc[0])
    layers = np.sort(steps["layer"].unique())
    fig.add_trace(
        go.Scatter(
            x=np.concatenate([layers, layers[::-1]]),
            y=np.concatenate([np.full(len(layers), 1.96 * chance), np.full(len(layers), -1.96 * chance)]),
            fill="toself",
            fillcolor="rgba(120,120,120,0.18)",
            line=dict(width=0),
            mode="lines",
            name="one token, random direction (±1.96/√d)",
            hoverinfo="skip",
        )
    )
    for component, rows in steps.groupby("component", sort=False):
        if "descent_cos_ci_low" in rows and rows["descent_cos_ci_low"].notna().any():  # over documents
            low, high = rows["descent_cos_ci_low"], rows["descent_cos_ci_high"]
        else:  # runs saved before the document bootstrap: over tokens
            spread = 1.96 * rows["descent_cos_std"] / np.sqrt(rows["count"].clip(lower=1))
            low, high = rows["descent_cos_mean"] - spread, rows["descent_cos_mean"] + spread
        half = (high - low) / 2
        colour = COMPONENT_COLOURS.get(component)
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([rows["layer"], rows["layer"][::-1]]),
                y=np.concatenate([high, low[::-1]]),
                fill="toself",
                fillcolor=colour,
                opacity=0.2,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=component,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=rows["layer"],
                y=rows["descent_cos_mean"],
                mode="lines+markers",
                name=component,
                line=dict(color=colour),
                legendgroup=component,
                customdata=np.stack([half, rows["count"]], axis=1),
                hovertemplate=(
                    f"{component}<br>layer %{{x}}<br>mean cos %{{y:.4f}} ± %{{customdata[0]:.4f}}<br>"
                    f"tokens %{{customdata[1]}}<extra></extra>"
                ),
            )
        )
    for kind, frame in (baselines or {}).items():
        for component, rows in frame[frame["component"] != "output"].groupby("component", sort=False):
            add_baseline(
                fig,
                kind,
                rows["layer"],
                rows["descent_cos_mean"],
                f"{component} ({kind})",
                interval(rows, "descent_cos_mean"),
                visible=component == "block",
            )
    fig.add_hline(y=0, line=dict(color="#888", width=1))
    integer_axis(fig, "x", layers)
    return fig


def alignment_heatmap(by_position: pd.DataFrame) -> go.Figure:
    title = "Descent alignment of the block update over layer and position"
    rows = by_position.dropna(subset=["descent_cos_mean"])
    if rows.empty:
        return empty_figure(title, "no update was measured")
    layers, cols, z, width = grid_within_budget(rows, "layer", "position", "descent_cos_mean")
    fig = figure(title, "position in window", "layer", height=460)
    where = f"positions %{{x}}..%{{x}}+{width - 1}" if width > 1 else "position %{x}"
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig.add_trace(
        go.Heatmap(
            x=cols,
            y=layers,
            z=z,
            colorscale="RdBu",
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar=dict(title="cos"),
            hovertemplate=f"layer %{{y}}<br>{where}<br>mean cos %{{z:.4f}}<extra></extra>",
        )
    )
    integer_axis(fig, "y", layers)
    return fig


def alignment_histogram(hist: pd.DataFrame | None) -> go.Figure:
    title = "Per-token descent alignment at one layer (menu: layer)"
    if hist is None or hist.empty or hist["count"].sum() == 0:
        return empty_figure(title, "no update was measured")
    fig = figure(title, "cos(Δ, -dCE/dh)", "tokens")
    layers = sorted(hist["layer"].unique())
    components = list(dict.fromkeys(hist["component"]))
    for layer in layers:
        for component in components:
            rows = hist[(hist["layer"] == layer) & (hist["component"] == component)]
            centres = (rows["bin_left"] + rows["bin_right"]) / 2
            # step outlines, not translucent bars: overlapping bars blend into colours no legend entry has
            fig.add_trace(
                go.Scatter(
                    x=centres,
                    y=rows["count"],
                    mode="lines",
                    line_shape="hvh",
                    name=component,
                    line=dict(color=COMPONENT_COLOURS.get(component), width=2),
                    visible=(layer == layers[-1]),
                    hovertemplate=f"{component}, layer {layer}<br>cos %{{x:.3f}}<br>tokens %{{y}}<extra></extra>",
                )
            )
    per_layer = len(components)
    n = len(fig.data)
    buttons = [
        dict(label=f"layer {l}", method="update", args=[{"visible": [i // per_layer == k for i in range(n)]}])
        for k, l in enumerate(layers)
    ]
    fig.update_layout(
        updatemenus=[dict(buttons=buttons, active=len(layers) - 1, x=1.0, y=1.02, xanchor="right", yanchor="bottom")]
    )
    return fig


def update_norms(updates: pd.DataFrame) -> go.Figure:
    title = "Update norm ||Δ|| per layer, by component"
    steps = updates[updates["component"] != "output"]
    if steps.empty:
        return empty_figure(title, "no update was measured")
    fig = figure(title, "layer", "mean ||Δ||")
    for component, rows in steps.groupby("component", sort=False):
        fig.add_trace(
            go.Scatter(
                x=rows["layer"],
                y=rows["update_norm_mean"],
                mode="lines+markers",
                name=component,
                line=dict(color=COMPONENT_COLOURS.get(component)),
                customdata=np.stack([rows["rel_update_mean"], rows["step_eta_mean"]], axis=1),
                hovertemplate=(
                    f"{component}<br>layer %{{x}}<br>mean ||Δ|| %{{y:.4g}}<br>"
                    f"mean ||Δ||/||h|| %{{customdata[0]:.3g}}<br>mean step η %{{customdata[1]:.3g}}<extra></extra>"
                ),
            )
        )
    fig.update_layout(updatemenus=[log_toggle("yaxis")])
    integer_axis(fig, "x", steps["layer"].unique())
    if spans_orders(steps["update_norm_mean"]):
        fig.update_yaxes(type="log")
    return fig


def render_updates(tables: dict[str, pd.DataFrame], findings: dict[str, Any], meta: dict[str, Any]) -> Section:
    updates = tables.get("updates", pd.DataFrame(columns=["layer", "component", "count", "lens_loss_mean"]))
    return Section(
        title="Inner-loop updates",
        anchor="updates",
        notes=[f"Readout: {readout_label(meta)}."] + list(UPDATES_NOTES) + data_notes(findings, "values", unread=True),
        blocks=[
            Block(
                figure=lens_loss_curve(updates, baseline_frames(meta, "updates")),
                caption=BASELINE_NOTE if meta.get("baseline_tables") else "",
            ),
            Block(
                figure=descent_alignment(updates, baseline_frames(meta, "updates")),
                caption="Grey: where 95% of single tokens' cosines with a random direction fall (±1.96/√d_model). "
                "A mean over N tokens of random cosines would fall within ±1.96/√(d_model·N), far narrower: "
                "judge a layer's mean by its confidence band, a single token by the grey band.",
            ),
            Block(
                figure=alignment_heatmap(
                    tables.get("updates_by_position", pd.DataFrame(columns=["layer", "position", "count", "descent_cos_mean"]))
                )
            ),
            Block(figure=alignment_histogram(tables.get("updates_hist"))),
            Block(figure=update_norms(updates)),
        ],
    )

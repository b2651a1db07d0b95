"""Shared pieces for renderers: a light template, escaping, point budgets, empty-figure notes."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

HEATMAP_BUDGET = 40_000  # cells per heatmap trace; larger grids are averaged down in position
MENU_LAYERS = 16  # figures with a per-layer menu offer at most this many layers, evenly spaced

TEMPLATE = go.layout.Template(
    layout=dict(
        font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=13),
        plot_bgcolor="white",
        paper_bgcolor="white",
        colorway=["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"],
        xaxis=dict(gridcolor="#e5e5e5", zerolinecolor="#bbbbbb", linecolor="#888", showline=True),
        yaxis=dict(gridcolor="#e5e5e5", zerolinecolor="#bbbbbb", linecolor="#888", showline=True),
        margin=dict(l=70, r=30, t=96, b=60),
        hovermode="closest",
    )
)


@dataclass
class Block:
    """One item of a report section: a figure, or a small HTML fragment the renderer built from text."""

    figure: go.Figure | None = None
    html: str | None = None
    caption: str = ""


@dataclass
class Section:
    title: str
    anchor: str
    # (name, value) rows of descriptive numbers, for a probe without a renderer; conclusions are claims only
    findings: list[tuple[str, str]] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one sentence each, shown under the section's title, on how to read it


def data_notes(numbers: dict[str, Any], what: str, unread: bool = False) -> list[str]:
    """Facts about the data behind a section (never conclusions): what was excluded, layers the readout cannot read."""
    notes = []
    if numbers.get("n_nonfinite"):
        notes.append(f"Non-finite {what} excluded from every statistic: {count_text(numbers['n_nonfinite'])}.")
    layers = numbers.get("readout_not_meaningful_layers") or []
    if unread and layers:
        named = ", ".join(f"L{l}" for l in layers)
        notes.append(f"The readout does not read layers {named} (lens loss above log V, a uniform guess).")
    return notes


def count_text(value: Any) -> str:
    """A count in a findings table: 'none' for zero, so it never reads like layer 0 (layers are written L0, L1...)."""
    return "none" if not value else f"{int(value):,}"


def esc(text: Any) -> str:
    """Escape text for HTML and for Plotly's own tag-aware text rendering."""
    return html.escape(str(text), quote=True)


def figure(title: str, x_title: str, y_title: str, **layout: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE, title=dict(text=esc(title), x=0.01), height=layout.pop("height", 440), **layout)
    fig.update_xaxes(title_text=esc(x_title))
    fig.update_yaxes(title_text=esc(y_title))
    return fig


def empty_figure(title: str, reason: str) -> go.Figure:
    fig = figure(title, "", "", height=220)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.add_annotation(
        text=esc(f"No data: {reason}"),
        showarrow=False,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        font=dict(size=15, color="#666"),
    )
    return fig


def log_toggle(axis: str = "yaxis", x: float = 1.0, y: float = 1.02) -> dict:
    """A pair of buttons switching one axis between linear and log scale."""
    name = axis[0]
    return dict(
        type="buttons",
        direction="right",
        x=x,
        y=y,
        xanchor="right",
        yanchor="bottom",
        showactive=True,
        buttons=[
            dict(label=f"{name}: linear", method="relayout", args=[{f"{axis}.type": "linear"}]),
            dict(label=f"{name}: log", method="relayout", args=[{f"{axis}.type": "log"}]),
        ],
    )


def integer_axis(fig: go.Figure, axis: str, values) -> None:
    """Layer axes show whole numbers; past 40 layers Plotly's own ticks read better."""
    values = np.asarray(list(values))
    if len(values) and np.ptp(values) <= 40:
        (fig.update_xaxes if axis == "x" else fig.update_yaxes)(dtick=1, tick0=0)


def f32(values) -> np.ndarray:
    """Figures carry float32: Plotly ships numpy arrays as binary, and half the bytes keep reports small."""
    return np.asarray(values, dtype=np.float32)


def spread_layers(layers, limit: int = MENU_LAYERS) -> list:
    """At most `limit` layers, evenly spaced, always the first and the last."""
    layers = sorted(layers)
    if len(layers) <= limit:
        return layers
    picks = np.unique(np.linspace(0, len(layers) - 1, limit).round().astype(int))
    return [layers[i] for i in picks]


def spans_orders(values: pd.Series | np.ndarray) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return len(v) > 1 and v.max() / v.min() > 30


def present_in_order(order, values: pd.Series) -> list:
    """The members of `order` that occur among `values`, in `order`'s order (the set is made once)."""
    present = set(values.unique())
    return [item for item in order if item in present]


def pooled_by(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Combine (count, mean, std) rows into one row per key: the exact pooled mean and std."""
    f = frame.assign(_sum=frame["mean"] * frame["count"], _sq=(frame["std"] ** 2 + frame["mean"] ** 2) * frame["count"])
    g = f.groupby(keys, sort=True)[["count", "_sum", "_sq"]].sum().reset_index()
    g["mean"] = g["_sum"] / g["count"]
    g["std"] = np.sqrt(np.clip(g["_sq"] / g["count"] - g["mean"] ** 2, 0, None))
    return g.drop(columns=["_sum", "_sq"])


def grid_within_budget(
    frame: pd.DataFrame, row: str, col: str, value: str, budget: int = HEATMAP_BUDGET
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A (row x col) grid of count-weighted means, with columns merged in equal bins to fit the budget.

    Returns rows, column starts, values and the bin width (1 when nothing was merged).
    """
    rows = np.sort(frame[row].unique())
    n_cols = int(frame[col].max()) + 1 if len(frame) else 0
    width = max(1, int(np.ceil(len(rows) * n_cols / budget))) if n_cols else 1
    binned = frame.assign(_bin=(frame[col] // width) * width, _w=frame[value] * frame["count"])
    g = binned.groupby([row, "_bin"])[["_w", "count"]].sum()
    means = (g["_w"] / g["count"]).unstack("_bin")
    means = means.reindex(index=rows)
    return rows, means.columns.to_numpy(), f32(means.to_numpy()), width

"""Figures for the lens probe, from its tables alone."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from .common import Block, Section, empty_figure, f32, figure, integer_axis
from .norms import _fmt
from .updates import readout_label

LENS_NOTES = [
    "Each layer's residual stream h_l (resid_pre) is read through the readout named above; the last row is the "
    "model's own output. KL is KL(output ‖ readout) in nats; top-1 agreement is the share of tokens whose most "
    "likely next token under the readout is the output's.",
    "Where the lens loss exceeds log V, the loss of guessing every token alike, the readout does not read the "
    "layer meaningfully. Intervals are 95% percentile intervals of the document bootstrap.",
]


def lens_findings_rows(f: dict[str, Any]) -> list[tuple[str, str]]:
    def by_layer(values: dict | None, digits: int = 3) -> str:
        return ", ".join(f"L{k}: {_fmt(v, digits)}" for k, v in (values or {}).items()) or "n/a"

    return [
        ("Lens loss by layer (nats; the last is the output)", by_layer(f.get("lens_loss"))),
        ("KL to the output by layer (nats)", by_layer(f.get("kl_to_output"))),
        ("Top-1 agreement with the output by layer", by_layer(f.get("top1_agree"), 2)),
        ("Loss of a uniform guess, log V", _fmt(f.get("uniform_loss"))),
        ("First layer whose lens loss is at most log V", str(f.get("first_meaningful_layer"))),
        ("First layer agreeing with the output on most tokens", str(f.get("first_layer_agreeing_with_output"))),
    ]


def lens_curves(lens: pd.DataFrame, metric: str, title: str, y_title: str) -> go.Figure:
    if lens.empty:
        return empty_figure(title, "the run read no tokens")
    fig = figure(title, "layer (the last is the output)", y_title)
    for component, rows in lens.groupby("component", sort=False):
        if component == "output":
            continue
        rows = pd.concat([rows, lens[lens["component"] == "output"]]).sort_values("layer")
        low, high = rows.get(f"{metric}_ci_low"), rows.get(f"{metric}_ci_high")
        error = None
        if low is not None and high is not None:
            mean = rows[f"{metric}_mean"]
            error = dict(type="data", symmetric=False, array=f32(high - mean), arrayminus=f32(mean - low))
        fig.add_trace(
            go.Scatter(
                x=rows["layer"].tolist(),
                y=f32(rows[f"{metric}_mean"]),
                error_y=error,
                mode="lines+markers",
                name=str(component),
                hovertemplate=f"{component}<br>layer %{{x}}<br>%{{y:.4f}}<extra></extra>",
            )
        )
    if metric == "lens_loss" and "uniform_loss" in lens:
        fig.add_hline(y=float(lens["uniform_loss"].iloc[0]), line_dash="dot", annotation_text="log V")
    integer_axis(fig, "x", lens["layer"])
    return fig


def render_lens(tables: dict[str, pd.DataFrame], findings: dict[str, Any], meta: dict[str, Any]) -> Section:
    lens = tables.get("lens", pd.DataFrame(columns=["layer", "component", "lens_loss_mean"]))
    return Section(
        title="Every layer read out against the output",
        anchor="lens",
        findings=[("Readout", readout_label(meta))] + lens_findings_rows(findings),
        notes=list(LENS_NOTES),
        blocks=[
            Block(figure=lens_curves(lens, "lens_loss", "Lens loss by layer", "cross-entropy (nats)")),
            Block(figure=lens_curves(lens, "kl", "KL(output ‖ readout) by layer", "KL (nats)")),
            Block(figure=lens_curves(lens, "top1_agree", "Top-1 agreement with the output by layer", "share of tokens")),
            Block(figure=lens_curves(lens, "entropy", "Entropy of the readout by layer", "entropy (nats)")),
        ],
    )

"""The section of a probe without a registered renderer: its descriptive numbers, its own figures, table previews."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from .common import TEMPLATE, Block, Section, esc


def _probe_figures(probe_class: type | None, tables: dict[str, pd.DataFrame]) -> list[Block]:
    """Figures from the probe class's optional `figures(tables)`.

    The class is one the user named (--probe-module) or installed (an entry point); a saved folder
    never names code that is imported, so without one the section shows the tables only.
    """
    if not tables:
        return []
    if probe_class is None:
        return [
            Block(
                html="<p><small>Drawn from the saved tables only: a saved run never names code to import. "
                "Pass the probe's code with --probe-module to use its own figures.</small></p>"
            )
        ]
    draw = getattr(probe_class, "figures", None)
    if draw is None:
        return []
    blocks = []
    for fig in draw(tables):
        fig.update_layout(template=TEMPLATE)
        blocks.append(Block(figure=fig))
    return blocks


def generic_findings_rows(findings: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), json.dumps(v, default=str)[:300]) for k, v in findings.items()]


def render_generic(
    probe_name: str,
    tables: dict[str, pd.DataFrame],
    findings: dict[str, Any],
    meta: dict[str, Any],
    probe_class: type | None = None,
) -> Section:
    rows = generic_findings_rows(findings)
    blocks = _probe_figures(probe_class, tables)
    for name, frame in tables.items():
        preview = frame.head(50).to_html(index=False, escape=True, border=0, classes="data")
        blocks.append(Block(html=f"<h3>{esc(name)} <small>({len(frame)} rows; first 50 shown)</small></h3>{preview}"))
    if not tables:
        blocks.append(Block(html="<p>No data: this probe returned no tables.</p>"))
    return Section(title=f"Probe: {probe_name}", anchor=f"probe-{esc(probe_name)}", findings=rows, blocks=blocks)

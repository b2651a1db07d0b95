"""The section of a probe without a registered renderer: its findings, its own figures, table previews."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from .common import TEMPLATE, Block, Section, esc


def _probe_figures(spec: str | None, tables: dict[str, pd.DataFrame]) -> list[Block]:
    """Figures from the probe class's optional `figures(tables)`, when its code can still be found."""
    if not spec or not tables:
        return []
    from ..errors import NormprobeError
    from ..registry import resolve_probe

    try:
        cls = resolve_probe(spec)
    except NormprobeError:
        return [Block(html=f"<p><small>Probe code {esc(spec)} is not importable here; showing its tables only.</small></p>")]
    draw = getattr(cls, "figures", None)
    if draw is None:
        return []
    blocks = []
    for fig in draw(tables):
        fig.update_layout(template=TEMPLATE)
        blocks.append(Block(figure=fig))
    return blocks


def generic_findings_rows(findings: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), json.dumps(v, default=str)[:300]) for k, v in findings.items()]


def render_generic(probe_name: str, tables: dict[str, pd.DataFrame], findings: dict[str, Any],
                   meta: dict[str, Any], spec: str | None = None) -> Section:
    rows = generic_findings_rows(findings)
    blocks = _probe_figures(spec, tables)
    for name, frame in tables.items():
        preview = frame.head(50).to_html(index=False, escape=True, border=0, classes="data")
        blocks.append(Block(html=f"<h3>{esc(name)} <small>({len(frame)} rows; first 50 shown)</small></h3>{preview}"))
    if not tables:
        blocks.append(Block(html="<p>No data: this probe returned no tables.</p>"))
    return Section(title=f"Probe: {probe_name}", anchor=f"probe-{esc(probe_name)}", findings=rows, blocks=blocks)

"""A plain section for probes without a registered renderer: findings and table previews."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from .common import Block, Section, esc


def render_generic(probe_name: str, tables: dict[str, pd.DataFrame], findings: dict[str, Any],
                   meta: dict[str, Any]) -> Section:
    rows = [(str(k), json.dumps(v, default=str)[:300]) for k, v in findings.items()]
    blocks = []
    for name, frame in tables.items():
        preview = frame.head(50).to_html(index=False, escape=True, border=0, classes="data")
        blocks.append(Block(html=f"<h3>{esc(name)} <small>({len(frame)} rows; first 50 shown)</small></h3>{preview}"))
    if not blocks:
        blocks.append(Block(html="<p>No data: this probe returned no tables.</p>"))
    return Section(title=f"Probe: {probe_name}", anchor=f"probe-{probe_name}", findings=rows, blocks=blocks)

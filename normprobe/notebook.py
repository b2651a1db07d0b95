"""What runs and comparisons show in a notebook: a compact HTML summary (their figures come from the report).

The summary is a plain table (no plotly.js), so a notebook that holds many results stays small.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

STYLE = "border-collapse:collapse;font-size:0.9em"
CELL = "border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table_html(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    header = "".join(f'<th style="{CELL}">{esc(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f'<td style="{CELL}">{esc(c)}</td>' for c in row) + "</tr>" for row in rows)
    return f'<table style="{STYLE}"><tr>{header}</tr>{body}</table>'


def run_line(meta: dict[str, Any]) -> str:
    """One line naming the model, its shape, the tokens read and the status."""
    shape = ", ".join(
        str(x) for x in (meta.get("family"), meta.get("n_layers") and f"{meta['n_layers']} layers", meta.get("dtype")) if x
    )
    tokens = meta.get("n_tokens")
    parts = [
        f"model {meta.get('model', '?')}" + (f" ({shape})" if shape else ""),
        f"{tokens:,} tokens in {meta.get('n_docs', 0):,} documents" if isinstance(tokens, int) else "no tokens yet",
        f"status {meta.get('status', 'complete')}",
    ]
    return " · ".join(parts)


def claims_view(frame: Any) -> str:
    """The claims as a plain table (model value [CI], baselines, differences, verdict), with the caveats."""
    if frame is None or not len(frame):
        return ""
    from .claim_text import claims_head, claims_rows, interval_note
    from .claims import NO_BASELINE_NOTE, baselines_of

    caveat = "" if baselines_of(frame) else f"<br><small>{esc(NO_BASELINE_NOTE)}</small>"
    head, rows = claims_head(frame), claims_rows(frame)
    keep = [i for i, h in enumerate(head) if h not in ("probe", "null", "min effect")]  # compact: the report has all
    cells = "".join("<tr>" + "".join(f"<td>{esc(row[i])}</td>" for i in keep) + "</tr>" for row in rows)
    header = "".join(f"<th>{esc(head[i])}</th>" for i in keep)
    return (
        f"<p><b>claims</b>{caveat}<br><small>{esc(interval_note(frame))}</small></p>"
        f'<table style="{STYLE}" border="1" cellpadding="2"><tr>{header}</tr>{cells}</table>'
    )

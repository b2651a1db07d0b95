"""Assemble sections into one HTML page: the claims first, a table of contents, plotly.js at most once."""

from __future__ import annotations

import json
from typing import Any

from .common import Section, esc

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:1.6rem;margin:.2em 0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
nav{background:#fff;border:1px solid #ddd;padding:10px 16px;border-radius:6px}
nav a{margin-right:16px}table{border-collapse:collapse;background:#fff;font-size:.92rem}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}.figure{background:#fff;border:1px solid #e2e2e2;border-radius:6px;margin:16px 0;padding:6px}
.caption{color:#555;font-size:.88rem;margin:4px 8px}
.partial{background:#fff3cd;border:1px solid #e0c060;padding:10px;border-radius:6px}
small{color:#666}
"""


def _plotly_script(plotlyjs: str) -> str:
    if plotlyjs == "cdn":
        from plotly.offline import get_plotlyjs_version

        return f'<script src="https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js" charset="utf-8"></script>'
    if plotlyjs == "inline":
        from plotly.offline import get_plotlyjs

        return f'<script type="text/javascript">{get_plotlyjs()}</script>'
    raise ValueError(f"plotlyjs must be 'inline' or 'cdn', not {plotlyjs!r}")


def _table(rows: list[tuple[str, str]], head: tuple[str, ...] = ("key", "value")) -> str:
    body = "".join(f"<tr>{''.join(f'<td>{esc(c)}</td>' for c in row)}</tr>" for row in rows)
    return f"<table><tr>{''.join(f'<th>{esc(h)}</th>' for h in head)}</tr>{body}</table>"


def _figure_html(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"responsive": True, "displaylogo": False})


META_KEYS = (
    "model",
    "resolved_model",
    "family",
    "model_type",
    "n_layers",
    "d_model",
    "n_heads",
    "d_vocab",
    "norm_type",
    "logit_postprocessing",
    "block",
    "block_outputs",
    "positional",
    "tied_unembedding",
    "dtype",
    "device",
    "attention",
    "activation",
    "corpus",
    "n_docs",
    "n_windows",
    "n_tokens",
    "seq_len",
    "batch_size",
    "prepend_bos",
    "seconds",
    "created",
    "status",
    "probes",
    "checkpoints",
)


def metadata_rows(meta: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(k, str(meta[k])) for k in META_KEYS if k in meta]
    if isinstance(meta.get("readout"), dict):
        rows.append(("readout", str(meta["readout"].get("label", meta["readout"].get("kind")))))
    if "versions" in meta:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items())))
    return rows


def render_page(
    meta: dict[str, Any],
    sections: list[Section],
    plotlyjs: str = "inline",
    title: str | None = None,
    preface: str = "",
    appendix: str | None = None,
) -> str:
    title = title or f"normprobe: {meta.get('model', 'run')}"
    parts = [f"<h1>{esc(title)}</h1>"]
    status = meta.get("status", "complete")
    if status != "complete":
        reason = meta.get("status_reason") or ""
        parts.append(
            f'<p class="partial"><b>Partial run</b>: status is {esc(status)}. {esc(reason)} '
            "This page shows only what was saved.</p>"
        )
    toc = (['<a href="#claims">Claims</a>'] if 'id="claims"' in preface else []) + [
        f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections
    ]
    toc.append('<a href="#metadata">Run metadata</a>' if appendix is None else '<a href="#details">Metadata</a>')
    parts.append(f"<nav>{''.join(toc)}</nav>")
    parts.append(preface)
    n_fig = 0
    for section in sections:
        parts.append(f'<h2 id="{esc(section.anchor)}">{esc(section.title)}</h2>')
        if section.notes:
            parts.append("<ul class=\"notes\">" + "".join(f"<li>{esc(n)}</li>" for n in section.notes) + "</ul>")
        if section.findings:  # a probe without a renderer: its own numbers, which no claim tests
            parts.append(
                "<p><small>Descriptive numbers from this probe's tables; no claim is tested on them.</small></p>"
                + _table(section.findings, ("number", "value"))
            )
        for block in section.blocks:
            if block.figure is not None:
                n_fig += 1
                inner = _figure_html(block.figure, f"fig-{n_fig}")
            else:
                inner = block.html or ""
            caption = f'<p class="caption">{block.caption}</p>' if block.caption else ""
            parts.append(f'<div class="figure">{inner}{caption}</div>')
    if appendix is not None:
        parts.append(appendix)
    else:
        parts.append('<h2 id="metadata">Run metadata</h2>' + _table(metadata_rows(meta), ("key", "value")))
        options = meta.get("options")
        if options:
            parts.append(f"<p><small>options: {esc(json.dumps(options, default=str))}</small></p>")
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{STYLE}</style>{_plotly_script(plotlyjs) if n_fig else ''}</head><body><main>{''.join(parts)}</main>"
        "</body></html>\n"
    )

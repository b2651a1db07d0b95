"""Reports: pure functions from a run's tables and findings to one self-contained HTML page."""
from __future__ import annotations

from typing import Any, Callable

from .common import Block, Section
from .page import render_page

Renderer = Callable[[dict, dict, dict], Section]
_RENDERERS: dict[str, Renderer] = {}


def register_renderer(probe_name: str) -> Callable[[Renderer], Renderer]:
    """Register the function that draws a probe's section; adding a probe never touches the page."""

    def wrap(fn: Renderer) -> Renderer:
        _RENDERERS[probe_name] = fn
        return fn

    return wrap


def renderer_for(probe_name: str) -> Renderer:
    if not _RENDERERS:
        from .norms import render_norms
        from .updates import render_updates

        _RENDERERS.setdefault("norms", render_norms)
        _RENDERERS.setdefault("updates", render_updates)
    return _RENDERERS.get(probe_name, _generic_section(probe_name))


def _generic_section(probe_name: str) -> Renderer:
    from .generic import render_generic

    return lambda tables, findings, meta: render_generic(probe_name, tables, findings, meta)


def sections_for(result: Any) -> list[Section]:
    """One section per probe of the run, each from only that probe's tables."""
    owners = result.meta.get("probe_tables", {})
    sections = []
    for probe_name in result.meta.get("probes", []):
        tables = {n: result.tables[n] for n in owners.get(probe_name, []) if n in result.tables}
        sections.append(renderer_for(probe_name)(tables, result.findings.get(probe_name, {}), result.meta))
    return sections


def render_report(result: Any, plotlyjs: str = "inline") -> str:
    return render_page(result.meta, sections_for(result), plotlyjs=plotlyjs)


__all__ = ["Block", "Section", "register_renderer", "render_report", "renderer_for"]

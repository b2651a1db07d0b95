"""Reports: pure functions from a run's tables and claims to one self-contained HTML page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def _renderers() -> dict[str, Renderer]:
    if not all(name in _RENDERERS for name in ("norms", "updates", "linesearch", "massive", "lens")):
        from .lens import render_lens
        from .linesearch import render_line_search
        from .massive import render_massive
        from .norms import render_norms
        from .updates import render_updates

        _RENDERERS.setdefault("norms", render_norms)
        _RENDERERS.setdefault("updates", render_updates)
        _RENDERERS.setdefault("linesearch", render_line_search)
        _RENDERERS.setdefault("massive", render_massive)
        _RENDERERS.setdefault("lens", render_lens)
    return _RENDERERS


def renderer_for(probe_name: str, probe_class: type | None = None) -> Renderer:
    """The registered renderer, else the generic one (tables; and the figures of `probe_class`, which the
    caller found only where the user put code: --probe-module or an installed entry point, never a folder)."""
    return _renderers().get(probe_name) or _generic_section(probe_name, probe_class)


def _generic_section(probe_name: str, probe_class: type | None) -> Renderer:
    from .generic import render_generic

    return lambda tables, findings, meta: render_generic(probe_name, tables, findings, meta, probe_class)


def sections_for(result: Any, probe_modules: list | None = None) -> list[Section]:
    """One section per probe of the run, each from only that probe's tables.

    Nothing the run's folder records is imported: a probe without a registered renderer is drawn from
    its tables, and by its own `figures(tables)` only when its class is in `probe_modules` (default:
    the result's own `probe_modules`) or installed as an entry point.
    """
    from ..registry import classes_by_name, saved_probe_class

    owners = result.meta.get("probe_tables", {})
    names = result.meta.get("probes", [])
    given = classes_by_name(probe_modules if probe_modules is not None else getattr(result, "probe_modules", None))
    sections = []
    baselines = getattr(result, "baselines", None) or {}
    for probe_name in names:
        tables = {n: result.tables[n] for n in owners.get(probe_name, []) if n in result.tables}
        meta = result.meta
        if baselines:  # each baseline's copy of this probe's tables, for its dashed lines
            meta = {
                **meta,
                "baseline_tables": {
                    kind: {n: t[n] for n in owners.get(probe_name, []) if n in t} for kind, t in baselines.items()
                },
            }
        probe_class = None if probe_name in _renderers() else saved_probe_class(probe_name, given, required=False)
        render = renderer_for(probe_name, probe_class)
        sections.append(render(tables, _descriptive(result, probe_name), meta))
    return sections


def _descriptive(result: Any, probe_name: str) -> dict[str, Any]:
    """The probe's descriptive numbers (for its figures), recomputed from its tables."""
    describe = getattr(result, "descriptive", None)
    return describe(probe_name) if describe is not None else {}


def figures_by_title(sections: list[Section]) -> dict[str, Any]:
    """Every figure of the sections, keyed by its title as shown (a repeated title gets " (2)", " (3)")."""
    import html

    out: dict[str, Any] = {}
    for section in sections:
        for block in section.blocks:
            if block.figure is None:
                continue
            title = html.unescape(block.figure.layout.title.text or section.title)
            key, n = title, 1
            while key in out:
                n += 1
                key = f"{title} ({n})"
            out[key] = block.figure
    return out


def render_report(result: Any, plotlyjs: str = "inline", probe_modules: list | None = None) -> str:
    from .claims import claims_html

    return render_page(result.meta, sections_for(result, probe_modules), plotlyjs=plotlyjs, preface=claims_html(result.claims))


__all__ = [
    "Block",
    "Section",
    "figures_by_title",
    "register_renderer",
    "render_report",
    "renderer_for",
    "sections_for",
]

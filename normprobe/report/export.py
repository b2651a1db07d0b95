"""Static images of a report's figures (PNG or SVG) through kaleido and a local Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import NormprobeError

FORMATS = ("html", "png", "svg")


SLUG_CHARS = 48
MENU_NOTE = re.compile(r"\s*\(menu: [^)]*\)")


def _slug(text: str) -> str:
    """A file-name piece of at most SLUG_CHARS characters, cut between words, never inside one."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > SLUG_CHARS:
        cut = slug.rfind("-", 0, SLUG_CHARS + 1)
        slug = slug[: cut if cut > 0 else SLUG_CHARS]
    return slug or "figure"


def static_copy(fig: Any) -> Any:
    """The figure without its menus, buttons and sliders: on paper they would only cover the plot."""
    import plotly.graph_objects as go

    still = go.Figure(fig)
    still.layout.updatemenus = []  # update_layout(updatemenus=[]) would merge, keeping them
    still.layout.sliders = []
    return still


def static_variants(fig: Any) -> list[tuple[str, Any]]:
    """One still per choice of the figure's selection menu, its title naming the choice shown.

    A menu that only relayouts (a linear/log toggle) is no choice of content; the still keeps the
    figure's own state. Without a selection menu there is one still, with the title as it is.
    """
    title = fig.layout.title.text or "figure"
    menus = [m for m in (fig.layout.updatemenus or []) if any(b.method in ("update", "restyle") for b in m.buttons or [])]
    if not menus:
        return [("", _titled(static_copy(fig), MENU_NOTE.sub("", title)))]
    variants = []
    for button in menus[0].buttons:
        still = static_copy(fig)
        args = list(button.args or [])
        if button.method == "update":
            still.plotly_update(restyle_data=args[0] if args else None, relayout_data=args[1] if len(args) > 1 else None)
        elif button.method == "restyle" and args:
            still.plotly_restyle(args[0], trace_indexes=args[1] if len(args) > 1 else None)
        label = str(button.label)
        variants.append((label, _titled(still, f"{MENU_NOTE.sub('', title)} — {label}")))
    return variants


def _titled(fig: Any, title: str) -> Any:
    fig.update_layout(title_text=title)
    return fig


def export_figures(sections: list[Any], folder: Path, fmt: str) -> list[Path]:
    """Write every figure of the sections as FOLDER/figures/NN-section-title.FMT."""
    if fmt not in ("png", "svg"):
        raise NormprobeError(f"unknown --format {fmt!r}; use html, png or svg")
    try:
        import kaleido
    except ImportError:
        raise NormprobeError("--format png/svg needs kaleido: pip install 'normprobe[export]'") from None
    figures, paths = [], []
    target = Path(folder) / "figures"
    target.mkdir(parents=True, exist_ok=True)
    blocks = [(section, block) for section in sections for block in section.blocks if block.figure is not None]
    for number, (section, block) in enumerate(blocks, start=1):
        title = MENU_NOTE.sub("", block.figure.layout.title.text or "figure")
        for choice, still in static_variants(block.figure):
            figures.append(still)
            name = f"{number:02d}-{_slug(section.anchor)}-{_slug(title)}" + (f"-{_slug(choice)}" if choice else "")
            paths.append(target / f"{name}.{fmt}")
    size = dict(format=fmt, width=1100, height=520)
    specs = [dict(fig=fig.to_dict(), path=path, opts=size) for fig, path in zip(figures, paths)]
    try:
        # No MathJax (the figures hold no TeX; kaleido would fetch it from a CDN) and no timeout per image (a
        # loaded machine is slow, not wrong): the export depends only on the local Chromium.
        kaleido.write_fig_from_object_sync(specs, kopts=dict(mathjax=False, timeout=None))
    except Exception as exc:  # noqa: BLE001 - kaleido's failures (no browser) become one line
        raise NormprobeError(
            f"static export failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "kaleido needs Chrome or Chromium installed"
        ) from None
    return paths

"""Static images of a report's figures (PNG or SVG) through kaleido and a local Chromium."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import NormprobeError

FORMATS = ("html", "png", "svg")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "figure"


def static_copy(fig: Any) -> Any:
    """The figure without its menus, buttons and sliders: on paper they would only cover the plot."""
    import plotly.graph_objects as go

    still = go.Figure(fig)
    still.layout.updatemenus = []  # update_layout(updatemenus=[]) would merge, keeping them
    still.layout.sliders = []
    return still


def export_figures(sections: list[Any], folder: Path, fmt: str) -> list[Path]:
    """Write every figure of the sections as FOLDER/figures/NN-section-title.FMT."""
    if fmt not in ("png", "svg"):
        raise NormprobeError(f"unknown --format {fmt!r}; use html, png or svg")
    try:
        import kaleido  # noqa: F401
        import plotly.io as pio
    except ImportError:
        raise NormprobeError("--format png/svg needs kaleido: pip install 'normprobe[export]'") from None
    figures, paths = [], []
    target = Path(folder) / "figures"
    target.mkdir(parents=True, exist_ok=True)
    for section in sections:
        for block in section.blocks:
            if block.figure is not None:
                title = block.figure.layout.title.text or "figure"
                figures.append(static_copy(block.figure))
                paths.append(target / f"{len(paths) + 1:02d}-{_slug(section.anchor)}-{_slug(title)}.{fmt}")
    try:
        pio.write_images(figures, paths, format=fmt, width=1100, height=520)
    except Exception as exc:  # noqa: BLE001 - kaleido's failures (no browser) become one line
        raise NormprobeError(f"static export failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                             "kaleido needs Chrome or Chromium installed") from None
    return paths

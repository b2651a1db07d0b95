"""MkDocs hooks: pages that come from the code, so that they cannot go stale.

`<!-- model-types -->` in a page becomes the table of supported and refused model types, rendered
from `normprobe.families` at build time; `changelog.md` is the repository's CHANGELOG.md.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_TYPES_MARKER = "<!-- model-types -->"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 - mkdocs' hook signature
    if MODEL_TYPES_MARKER in markdown:
        from normprobe.families import markdown_tables

        markdown = markdown.replace(MODEL_TYPES_MARKER, markdown_tables())
    return markdown

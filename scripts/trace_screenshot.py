"""Regenerate docs/trace-demo.png: the demo model's trace page in headless Chromium, one cell hovered.

Run: python scripts/trace_screenshot.py   (needs playwright and a system chromium; a few seconds after loading)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEXT = "The return statement leaves the current function call with the expression list as return value."
HOVER = (2, 10)  # (layer, position) whose top-k the picture shows


def main() -> None:
    from playwright.sync_api import sync_playwright

    import normprobe

    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if chromium is None:
        raise SystemExit("no chromium on this machine (apt-get install chromium)")
    folder = Path(tempfile.mkdtemp()) / "trace"
    normprobe.trace("demo", TEXT, device="cpu").save(folder)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page.goto((folder / "trace.html").as_uri())
        page.wait_for_timeout(500)
        page.evaluate(
            "([layer, position]) => Plotly.Fx.hover(document.querySelector('.plotly-graph-div'), "
            "{xval: position, yval: layer}, 'xy')",
            list(HOVER),
        )
        page.query_selector(".figure").screenshot(path=str(ROOT / "docs" / "trace-demo.png"))
        browser.close()
    print(f"wrote {ROOT / 'docs' / 'trace-demo.png'}")


if __name__ == "__main__":
    main()

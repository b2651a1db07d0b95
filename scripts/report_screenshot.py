"""Regenerate docs/report-demo.png: the top of the demo model's report (claims first) in headless Chromium.

Run: python scripts/report_screenshot.py   (needs playwright and a system chromium; about a minute on 2 cores)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from playwright.sync_api import sync_playwright

    import normprobe

    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if chromium is None:
        raise SystemExit("no chromium on this machine (apt-get install chromium)")
    folder = Path(tempfile.mkdtemp()) / "demo"
    result = normprobe.run(
        "demo",
        probes=["norms", "updates"],
        baselines=["random-init"],
        baseline_seeds=1,
        max_docs=60,
        device="cpu",
        progress=False,
    )
    result.save(folder)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100}, device_scale_factor=1)
        page.goto((folder / "report.html").as_uri())
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ROOT / "docs" / "report-demo.png"))
        browser.close()
    shutil.rmtree(folder.parent, ignore_errors=True)
    print(f"wrote {ROOT / 'docs' / 'report-demo.png'}")


if __name__ == "__main__":
    main()

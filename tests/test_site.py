"""The documentation site: built inside a folder of the caller's choosing, without the build's own files as
pages, with the generated fragments included, and every link working when opened from files (file://)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r'(?:href|src)="([^"]+)"')


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    return out


def test_the_build_ships_no_hook_cache_or_fragments_as_pages(site):
    shipped = {p.relative_to(site).as_posix() for p in site.rglob("*")}
    assert not [p for p in shipped if p.endswith(".py") or "__pycache__" in p or p.startswith("generated")]
    # the fragments are in the pages that include them (--8<--), not pages of their own
    fragment = (ROOT / "docs" / "generated" / "suite-cost.md").read_text()
    assert "scripts/docs_figures.py" in fragment and "scripts/docs_figures.py" in (site / "development.html").read_text()
    assert (site / "getting-started.html").is_file() and (site / "probes" / "norms.html").is_file()


def test_every_link_opens_a_file_from_file_urls(site):
    # 404.html is shown by a server only, for a path it does not have: its links are from the server's root
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    assert len(pages) > 20
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"^(?:[a-z]+:|#|//)", target):  # other sites, mail, data, anchors in the page
                continue
            path = (page.parent / target.split("#")[0].split("?")[0]).resolve()
            if not path.is_file():  # a folder opens as a bare listing from file://
                broken.append(f"{page.relative_to(site)} -> {target}")
    assert broken == []


def test_claims_page_keeps_names_whole_in_a_narrow_window(site):
    from .test_browser import CHROMIUM, FLAGS

    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 400, "height": 900})
            page.goto((site / "claims.html").as_uri())
            cut = page.evaluate(
                """() => Array.from(document.querySelectorAll('td code'))
                .filter(c => c.getClientRects().length > 1).map(c => c.textContent)"""
            )
            names = page.evaluate("() => Array.from(document.querySelectorAll('td code')).map(c => c.textContent)")
        finally:
            browser.close()
    assert "removal_raises_loss" in names and "position0_ratio" in names  # long names, in narrow columns
    assert cut == []  # no name in a table cell is broken over two lines


def test_the_api_reference_documents_every_option_of_run():
    import inspect

    from normprobe.runner import make_runner, run

    section = run.__doc__.split("Other Parameters:", 1)[1].split("Returns:", 1)[0]
    documented = re.findall(r"^        (\w+) \(", section, re.M)
    options = [name for name, p in inspect.signature(make_runner).parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert sorted(documented) == sorted(options)


def test_the_test_command_writes_only_inside_the_clone_and_ci_runs_every_test():
    import shlex

    readme = (ROOT / "README.md").read_text()
    command = readme.split("<!-- test-command -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip()
    words = shlex.split(command)
    assert [w for w in words if w.startswith("/") or "/tmp" in w] == []  # no fixed path outside the clone
    assert "-d site" in command and "--basetemp=.pytest-tmp" in command
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "site/" in ignored and ".pytest-tmp/" in ignored
    assert "export NORMPROBE_REQUIRE_ALL=1" in (ROOT / ".ci" / "run").read_text()

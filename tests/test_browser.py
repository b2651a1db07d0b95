"""Reports in a real headless Chromium: figures render, no console errors, corpus markup stays text.

Skipped, with the reason, where Chromium or Playwright is missing; .ci/run installs Debian's chromium.
"""

from __future__ import annotations

import shutil

import pytest

import normprobe
from normprobe.api import compare_to_folder

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAYLOADS = [
    '<img src=x onerror="document.title=\'pwned\'"> hello world',
    "the end </script><script>window.pwned=1</script>",
    '<a href="javascript:window.pwned=2">click me</a> and more text',
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def open_page(browser, path, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)
    return page, problems


def rendered(page) -> tuple[int, int]:
    return page.evaluate("""() => {
        const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
        return [divs.length, divs.filter(d => d.querySelector('.main-svg') && d._fullLayout).length];
    }""")


@pytest.fixture(scope="module")
def payload_run(demo_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("payload") / "run"
    normprobe.run(demo_adapter, texts=PAYLOADS * 3, probes=["norms", "updates"], progress=False).save(out)
    return out


def test_report_renders_every_figure_without_errors(browser, payload_run, tmp_path):
    page, problems = open_page(browser, payload_run / "report.html", tmp_path)
    total, ok = rendered(page)
    assert total == 9 and ok == 9
    assert problems == []
    titles = page.evaluate("Array.from(document.querySelectorAll('.gtitle')).map(t => t.textContent)")
    assert len(titles) == 9 and all(titles)
    page.close()


def test_corpus_markup_shows_as_text_and_runs_nothing(browser, payload_run, tmp_path):
    page, problems = open_page(browser, payload_run / "report.html", tmp_path)
    assert page.title().startswith("normprobe") and page.evaluate("window.pwned === undefined")
    assert page.evaluate("document.querySelectorAll('img[src=x], a[href^=\"javascript\"]').length") == 0
    # hover a token of the payload in the frequency scatter and read what the tooltip shows
    shown = page.evaluate("""() => {
        const div = Array.from(document.querySelectorAll('.plotly-graph-div'))
            .find(d => d.data.some(t => (t.text || []).some(x => String(x).includes('&lt;'))));
        div.scrollIntoView();
        const trace = div.data.findIndex(t => t.visible === true);
        const point = div.data[trace].text.findIndex(t => t.includes('&lt;'));
        Plotly.Fx.hover(div, [{curveNumber: trace, pointNumber: point}]);
        const layer = div.querySelector('.hoverlayer');
        return [layer.textContent, layer.querySelectorAll('img, a, script').length];
    }""")
    assert "<" in shown[0] and shown[1] == 0
    assert page.evaluate("window.pwned === undefined") and not page.title().startswith("pwned")
    assert problems == []
    page.close()


def test_comparison_shows_every_run(browser, demo_adapter, payload_run, tmp_path):
    other = tmp_path / "bf16"
    normprobe.run("demo", texts=PAYLOADS, probes=["norms", "updates"], dtype="bfloat16", progress=False).save(other)
    page_path = compare_to_folder([payload_run, other], tmp_path / "cmp", labels=["float32 <b>run</b>", "bfloat16"])
    page, problems = open_page(browser, page_path, tmp_path)
    total, ok = rendered(page)
    assert total == 5 and ok == 5  # four overlays and the difference view
    legends = page.evaluate("Array.from(document.querySelectorAll('.legendtext')).map(t => t.textContent)")
    assert legends.count("float32 <b>run</b>") == 4 and legends.count("bfloat16") == 5
    header = page.evaluate("document.querySelector('table th:nth-child(2)').textContent")
    assert header == "float32 <b>run</b>"
    assert problems == []
    page.close()


def test_static_svg_export(payload_run, capsys):
    pytest.importorskip("kaleido", reason="kaleido is not installed")
    from normprobe.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", str(payload_run), "--format", "svg"])
    assert exc.value.code == 0, capsys.readouterr().err
    images = sorted((payload_run / "figures").glob("*.svg"))
    from normprobe import RunResult

    def stills(fig):  # one per choice of a menu that changes what is drawn; one for a figure without such a menu
        choices = [m for m in fig.layout.updatemenus if any(b.method in ("update", "restyle") for b in m.buttons)]
        return len(choices[0].buttons) if choices else 1

    assert len(images) == sum(stills(f) for f in RunResult.load(payload_run).figures().values()) > 9
    assert all(p.read_text().lstrip().startswith("<svg") for p in images)
    # the report's linear/log buttons and layer menus stay out of the images (the page has them)
    assert "y: log" in (payload_run / "report.html").read_text()
    assert not any("y: log" in p.read_text() or "updatemenu" in p.read_text() for p in images)

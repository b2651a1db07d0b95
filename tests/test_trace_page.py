"""trace.html in a real headless Chromium: it renders without errors, the buttons switch the metric, and a token
that is markup shows as text. Skipped, like tests/test_browser.py, where Chromium or Playwright is missing."""

from __future__ import annotations

import pytest

import normprobe
from normprobe.tracing import Trace

from .test_browser import CHROMIUM, browser, open_page  # noqa: F401 - fixture

PAYLOAD = "</script><img src=x onerror=alert(1)>"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")


@pytest.fixture(scope="module")
def hostile(demo_adapter, tmp_path_factory):
    """A real trace of text holding the payload; the demo's tokenizer splits it, so one input token (position 2)
    and one top-1 token (layer 1, position 2) are then made the whole payload, as another tokenizer could have it."""
    result = normprobe.trace(demo_adapter, f"Look: {PAYLOAD} and more text", top_k=3)
    table = result.table.copy()
    table.loc[table["position"] == 2, "token"] = PAYLOAD
    cell = table.index[(table["layer"] == 1) & (table["position"] == 2)][0]
    table.at[cell, "top_tokens"] = [PAYLOAD, *list(table.at[cell, "top_tokens"])[1:]]
    trace = Trace(table, result.meta)
    return trace, trace.save(tmp_path_factory.mktemp("trace") / "t") / "trace.html"


def test_page_renders_buttons_switch_and_markup_stays_text(browser, hostile, tmp_path):  # noqa: F811
    """One page load (the page carries plotly.js, 4.6 MB): rendering, escaping, then every metric button."""
    trace, path = hostile
    page, problems = open_page(browser, path, tmp_path)
    assert page.evaluate("document.querySelectorAll('.plotly-graph-div').length") == 1
    assert page.evaluate("document.querySelector('.plotly-graph-div')._fullLayout !== undefined")
    assert page.evaluate("document.querySelectorAll('img[src=x], img').length") == 0
    ticks = page.evaluate("Array.from(document.querySelectorAll('.xtick text')).map(t => t.textContent)")
    assert ticks[2] == PAYLOAD[:11] + "…"
    shown = page.evaluate("""() => {
        const div = document.querySelector('.plotly-graph-div');
        Plotly.Fx.hover(div, {xval: 2, yval: 1}, 'xy');
        const layer = div.querySelector('.hoverlayer');
        return [layer.textContent, layer.querySelectorAll('img, a, script').length];
    }""")
    assert shown[0].count(PAYLOAD) == 2 and shown[1] == 0  # the input token and the top-1 token, as text
    assert page.evaluate("document.querySelectorAll('img').length") == 0 and problems == []

    table = trace.table.set_index(["layer", "position"])

    def shown():
        return page.evaluate("""() => {
            const div = document.querySelector('.plotly-graph-div');
            return [div.data[0].z[1][2], document.querySelector('.cbtitle').textContent];
        }""")

    value, title = shown()
    assert title == "target log-prob" and value == pytest.approx(table.loc[(1, 2), "target_logprob"], rel=1e-6)
    for index, (metric, label) in enumerate(
        [("entropy", "entropy (nats)"), ("norm", "norm ‖h‖"), ("descent_cos", "descent cos"), ("delta_loss", "Δloss")], start=1
    ):
        page.locator(".updatemenu-button").nth(index).click()
        page.wait_for_timeout(100)
        value, title = shown()
        assert title == label and value == pytest.approx(table.loc[(1, 2), metric], rel=1e-6), metric
    assert problems == []
    page.close()

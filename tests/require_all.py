"""NORMPROBE_REQUIRE_ALL=1 (set by .ci/run): a skipped test fails, so pass counts agree between machines.

A skip reports its reason in the summary (`-ra`). Only a test marked `may_skip` (it needs what a CI container
may lack, such as a root allowed to mount a tmpfs) may still be skipped. Loaded by tests/conftest.py.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL = "NORMPROBE_REQUIRE_ALL"


def pytest_configure(config):
    config.addinivalue_line("markers", "may_skip: the test may be skipped even under NORMPROBE_REQUIRE_ALL=1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or os.environ.get(REQUIRE_ALL) != "1":
        return
    if item.get_closest_marker("may_skip") is not None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped ({reason}), but {REQUIRE_ALL}=1 requires every test to run"

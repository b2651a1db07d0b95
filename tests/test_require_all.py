"""Skips print their reason, and under NORMPROBE_REQUIRE_ALL=1 (.ci/run) a skip fails unless marked may_skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="no Chromium on this machine")
def test_needs_a_browser():
    pass

@pytest.mark.may_skip
def test_needs_a_tmpfs():
    pytest.skip("cannot mount a tmpfs here")
"""


def run_example(tmp_path, require_all: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_example.py").write_text(EXAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "NORMPROBE_REQUIRE_ALL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # installed plugins (hypothesis, ...) are not needed here
    if require_all:
        env["NORMPROBE_REQUIRE_ALL"] = "1"
    # the plugin tests/conftest.py loads, on a file of its own (no project ini, no cache written)
    command = [sys.executable, "-m", "pytest", "-p", "tests.require_all", "-p", "no:cacheprovider", "-c", os.devnull]
    return subprocess.run(
        [*command, "--rootdir", str(tmp_path), "-ra", "-q", str(tmp_path / "test_example.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def test_a_skip_says_why_and_passes_without_require_all(tmp_path):
    proc = run_example(tmp_path, require_all=False)
    assert proc.returncode == 0, proc.stdout
    assert "SKIPPED" in proc.stdout and "no Chromium on this machine" in proc.stdout  # the reason, in the summary
    assert "1 passed, 2 skipped" in proc.stdout


def test_under_require_all_a_skip_fails_unless_marked_may_skip(tmp_path):
    proc = run_example(tmp_path, require_all=True)
    assert proc.returncode == 1, proc.stdout
    assert "no Chromium on this machine" in proc.stdout and "NORMPROBE_REQUIRE_ALL=1 requires every test to run" in proc.stdout
    assert "1 passed, 1 skipped, 1 error" in proc.stdout  # the skipif fails in setup; the may_skip test stays skipped

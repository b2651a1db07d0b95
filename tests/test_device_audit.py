"""The suite runs on the test device (NORMPROBE_TEST_DEVICE, see conftest): no test pins a model or its inputs
to the CPU unless it says why. A static check, so that the CPU suite catches what only a GPU run would show."""

from __future__ import annotations

import re
from pathlib import Path

ON_PURPOSE = "# cpu on purpose"
PINNED = re.compile(
    r"""device\s*=\s*["']cpu["']"""  # load_model(..., device="cpu"), from_hf_model, boot_transformers, merge_shards
    r"""|["']--device["'],\s*["']cpu["']"""  # the CLI's --device cpu
    r"""|collate\([^()]*["']cpu["']\s*\)"""  # a batch built on the CPU for a model that may sit elsewhere
)
BUILDERS = re.compile(r"\b(from_hf_model|boot_transformers)\(")  # both default to the CPU


def _calls(text: str, start: int) -> str:
    """The text of the call that opens at `start`, to its closing parenthesis."""
    depth, i = 0, text.index("(", start)
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return text[i : j + 1]
    return text[i:]


def _offences(path: Path) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    found = []
    for match in PINNED.finditer(text):
        first = text.count("\n", 0, match.start())
        last = text.count("\n", 0, match.end())
        if not any(ON_PURPOSE in lines[i] for i in range(first, last + 1)):
            found.append(f"{path.name}:{first + 1}: {match.group(0)!r}")
    for match in BUILDERS.finditer(text):
        call = _calls(text, match.end() - 1)
        line = text.count("\n", 0, match.start())
        if "TEST_DEVICE" not in call and "def " not in lines[line] and ON_PURPOSE not in lines[line]:
            found.append(f"{path.name}:{line + 1}: {match.group(1)} without device=TEST_DEVICE")
    return found


def test_no_test_pins_models_or_inputs_to_the_cpu():
    tests = sorted(p for p in Path(__file__).parent.glob("*.py") if p.name != Path(__file__).name)
    assert len(tests) > 20
    offences = [o for path in tests for o in _offences(path)]
    assert not offences, "\n".join(offences)


def test_the_audit_sees_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        'load_model(path, device="cpu")\ncollate(w, pad, "cpu")\nmain(["run", "--device",\n "cpu"])\n'
        "ModelAdapter.from_hf_model(hf, tok)\n"
        'merge(device="cpu")  # cpu on purpose: no model\nModelAdapter.from_hf_model(hf, tok, device=TEST_DEVICE)\n'
    )
    assert [o.split(":")[1] for o in _offences(bad)] == ["1", "2", "3", "5"]

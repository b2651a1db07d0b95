"""Regenerate MODEL_FACTS in normprobe/families.py, from tiny models of every supported type.

Run: python scripts/model_facts.py   (no network; about a minute on 2 cores). tests/test_model_types.py
checks the same facts on the same models, so a stale table fails the suite.
"""

from __future__ import annotations

import logging
import os
import pprint
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from normprobe.families import MODEL_TYPES
    from tests.test_model_types import FACT_KEYS, tiny_pair, word_tokenizer_in

    tokenizer = word_tokenizer_in(Path(tempfile.mkdtemp()))
    facts = {}
    for model_type in MODEL_TYPES:
        adapter, _ = tiny_pair(model_type, tokenizer)
        facts[model_type] = {k: adapter.facts()[k] for k in FACT_KEYS}
        print(model_type, facts[model_type], flush=True)
    path = ROOT / "normprobe" / "families.py"
    text = path.read_text()
    block = "MODEL_FACTS: dict[str, dict] = " + pprint.pformat(facts, width=120, sort_dicts=False) + "\n"
    marker = "MODEL_FACTS: dict[str, dict] = "
    text = text[: text.index(marker)] + block  # the table is the file's last statement
    path.write_text(text)
    print("the docs render the table from normprobe.families when the site is built")


if __name__ == "__main__":
    main()

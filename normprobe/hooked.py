"""One forward pass per batch with every probe's hooks attached, reduced where they stand."""
from __future__ import annotations

from typing import Any

from .errors import NormprobeError


class ProbeFailed(Exception):
    """A probe's own code raised; the run fails naming it."""

    def __init__(self, probe: str, error: BaseException):
        super().__init__(probe)
        self.probe, self.error = probe, error


class HookedPass:
    """One forward pass per batch with every probe's hooks attached; checks that each hook fired."""

    def __init__(self, model, probes):
        self.model = model
        self.wanted: dict[str, list] = {}
        for probe in probes:
            for point in probe.hook_points():
                self.wanted.setdefault(model.resolve_hook(point), []).append(probe)
        self.probes = probes
        self.hooks = [(name, self._make_hook(name, readers)) for name, readers in self.wanted.items()]
        self._batch = None
        self._reduced: dict[str, dict[str, Any]] = {}
        self._fired: set[str] = set()

    def _make_hook(self, hook_name: str, readers: list):
        def hook(activation, hook=None):
            self._fired.add(hook_name)
            for probe in readers:
                self._reduced[probe.name][hook_name] = probe.reduce(hook_name, activation, self._batch)
            return None
        return hook

    def forward(self, batch) -> dict[str, dict[str, Any]]:
        self._batch = batch
        self._reduced = {p.name: {} for p in self.probes}
        self._fired = set()
        self.model.forward(batch.tokens, batch.mask.long(), self.hooks)
        silent = [name for name in self.wanted if name not in self._fired]
        if silent:
            raise NormprobeError(f"hook {silent[0]} was attached but never fired on {self.model.source.name} "
                                 f"({len(silent)} of {len(self.wanted)} hooks silent)")
        return self._reduced

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
    """One forward pass per batch with every probe's hooks attached; checks that each hook fired.

    A probe that streams layers (it overrides `Probe.update_layer`) gets each layer's reduced
    activations as soon as all of that layer's hooks have fired, and they are dropped right
    after, so what is held at once does not grow with depth.
    """

    def __init__(self, model, probes):
        self.model = model
        self.wanted: dict[str, list] = {}
        for probe in probes:
            for point in probe.hook_points():
                self.wanted.setdefault(model.resolve_hook(point), []).append(probe)
        self.probes = probes
        self.layer_of = {name: model.layer_of_hook(name) for name in self.wanted}
        self.layer_groups: dict[str, dict[int, set[str]]] = {}  # streaming probe -> layer -> its hook names
        for name, readers in self.wanted.items():
            for probe in readers:
                if probe.streams_layers and self.layer_of[name] is not None:
                    self.layer_groups.setdefault(probe.name, {}).setdefault(self.layer_of[name], set()).add(name)
        self.hooks = [(name, self._make_hook(name, readers)) for name, readers in self.wanted.items()]
        self._batch = None
        self._reduced: dict[str, dict[str, Any]] = {}
        self._fired: set[str] = set()

    def _make_hook(self, hook_name: str, readers: list):
        layer = self.layer_of[hook_name]

        def hook(activation, hook=None):
            self._fired.add(hook_name)
            for probe in readers:
                held = self._reduced[probe.name]
                try:
                    held[hook_name] = probe.reduce(hook_name, activation, self._batch)
                    group = self.layer_groups.get(probe.name, {}).get(layer)
                    if group is not None and group <= held.keys():
                        probe.update_layer(layer, {name: held.pop(name) for name in group}, self._batch)
                except Exception as exc:  # noqa: BLE001 - a probe's own bug fails the run, cleanly
                    raise ProbeFailed(probe.name, exc) from exc
            return None

        return hook

    def forward(self, batch) -> dict[str, dict[str, Any]]:
        """Run one batch; returns each probe's reduced activations not yet handed to `update_layer`."""
        self._batch = batch
        self._reduced = {p.name: {} for p in self.probes}
        self._fired = set()
        for probe in self.probes:
            try:
                probe.begin_batch(batch)
            except Exception as exc:  # noqa: BLE001
                raise ProbeFailed(probe.name, exc) from exc
        if self.hooks:  # probes that read nothing here (they ran their own passes in begin_batch) need no forward
            self.model.forward(batch.tokens, batch.mask.long(), self.hooks)
        silent = [name for name in self.wanted if name not in self._fired]
        if silent:
            raise NormprobeError(
                f"hook {silent[0]} was attached but never fired on {self.model.source.name} "
                f"({len(silent)} of {len(self.wanted)} hooks silent)"
            )
        return self._reduced

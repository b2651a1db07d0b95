"""Finding probes: built-ins, the `normprobe.probes` entry-point group, files and module:Class specs."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from .errors import NormprobeError, did_you_mean

ENTRY_POINT_GROUP = "normprobe.probes"


@dataclass(frozen=True)
class ProbeEntry:
    name: str
    target: str  # "module:Class"
    origin: str  # "built-in", "entry point (dist)", a file path
    description: str = ""


BUILTIN = (
    ProbeEntry(
        "norms",
        "normprobe.probes.norms:NormsProbe",
        "built-in",
        "L2 norm of each token's vector per (site, layer, position); growth, position-0 and frequency claims",
    ),
    ProbeEntry(
        "updates",
        "normprobe.probes.updates:UpdatesProbe",
        "built-in",
        "per-layer residual updates: size, lens loss, alignment with -dCE/dh, step fit, first-order check",
    ),
    ProbeEntry(
        "lens",
        "normprobe.probes.lens:LensProbe",
        "built-in",
        "each layer read out against the output: cross-entropy, KL to the output, entropy, target rank, top-1 agreement",
    ),
    ProbeEntry(
        "linesearch",
        "normprobe.probes.linesearch:LineSearchProbe",
        "built-in",
        "lens loss along h_l + αΔ per layer and component; the best step α* and whether it is near 1",
    ),
    ProbeEntry(
        "massive",
        "normprobe.probes.massive:MassiveProbe",
        "built-in",
        "massive activations (max/median |h_i|) per position, top dimensions' share of the norm, attention sinks",
    ),
)


def registered_probes() -> dict[str, ProbeEntry]:
    """Built-in and installed probes by name; a name claimed twice is an error."""
    found: dict[str, ProbeEntry] = {}
    entries = list(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", "?")
        entries.append(ProbeEntry(ep.name, ep.value, f"entry point ({dist})"))
    for entry in entries:
        if entry.name in found:
            raise NormprobeError(
                f"probe name {entry.name!r} is claimed twice: by {found[entry.name].origin} ({found[entry.name].target}) "
                f"and by {entry.origin} ({entry.target}); uninstall or rename one"
            )
        found[entry.name] = entry
    return found


def _load_target(target: str, origin: str):
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NormprobeError(f"cannot import probe {target!r} ({origin}): {exc}") from None
    if not attr:
        return _single_probe_class(module, target)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise NormprobeError(f"module {module_name!r} has no {attr!r} (probe {target!r})") from None


def _probe_classes(module) -> list[type]:
    from .probe import Probe

    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Probe) and obj is not Probe and obj.__module__ == module.__name__
    ]


def _single_probe_class(module, where: str):
    classes = _probe_classes(module)
    if len(classes) != 1:
        names = ", ".join(c.__name__ for c in classes) or "none"
        raise NormprobeError(f"{where} must define exactly one Probe subclass (found: {names}); name one as FILE.py:Class")
    return classes[0]


def _load_file(spec: str):
    path_text, _, attr = spec.partition(".py:")
    path = Path(path_text + ".py" if attr else spec)
    if not path.is_file():
        raise NormprobeError(f"probe file not found: {path}")
    module_name = f"normprobe_user_probe_{path.stem}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise NormprobeError(f"probe file {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - a user's file can fail in any way
        raise NormprobeError(f"probe file {path} failed to import: {type(exc).__name__}: {exc}") from None
    if attr:
        if not hasattr(module, attr):
            raise NormprobeError(f"probe file {path} has no class {attr!r}")
        return getattr(module, attr)
    return _single_probe_class(module, str(path))


def is_probe_name(spec: str) -> bool:
    """A registered name, as opposed to a file (`path.py[:Class]`) or `package.module:Class`."""
    return not (spec.endswith(".py") or ".py:" in spec or ":" in spec)


def check_probe_names(specs: list) -> None:
    """Refuse an unknown probe name without importing any probe (files and module:Class are checked on import)."""
    entries = registered_probes()
    for spec in specs:
        if isinstance(spec, str) and is_probe_name(spec) and spec not in entries:
            raise NormprobeError(
                f"unknown probe {spec!r}; available: {', '.join(sorted(entries))} (or a FILE.py / module:Class)"
                + did_you_mean(spec, entries, 0.6)
            )


def resolve_probe(spec: str):
    """The probe class for a name, a file (`path.py` or `path.py:Class`) or `package.module:Class`."""
    from .probe import Probe

    if spec.endswith(".py") or ".py:" in spec:
        cls = _load_file(spec)
    elif ":" in spec:
        cls = _load_target(spec, spec)
    else:
        entries = registered_probes()
        check_probe_names([spec])
        cls = _load_target(entries[spec].target, entries[spec].origin)
    if not (inspect.isclass(cls) and issubclass(cls, Probe)):
        raise NormprobeError(f"{spec!r} is not a normprobe Probe subclass")
    if not cls.name:
        raise NormprobeError(f"probe class {cls.__name__} ({spec}) sets no `name`")
    return cls


def resolve_probes(specs: list) -> list[type]:
    """Probe classes for names, files, module:Class specs or classes given directly."""
    from .probe import Probe

    classes = [s if inspect.isclass(s) and issubclass(s, Probe) else resolve_probe(str(s)) for s in specs]
    names = [c.name for c in classes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise NormprobeError(f"probe name given twice: {', '.join(duplicates)}")
    if not classes:
        raise NormprobeError("no probe given; use --probe norms (see `normprobe probes`)")
    return classes


def classes_by_name(probe_modules: list | None) -> dict[str, type]:
    """The probe classes the user named (FILE.py[:Class], module:Class, or classes), keyed by their `name`."""
    if not probe_modules:
        return {}
    return {getattr(cls, "name", cls.__name__): cls for cls in resolve_probes(list(probe_modules))}


def saved_probe_class(name: str, given: dict[str, type], *, required: bool, where: str = "") -> type | None:
    """The code for a probe that a saved folder names, found only where the user put it.

    A folder is data: what it records about its probes (names, the specs they were run from) is never
    imported. The class comes from what the user names now (`given`, from --probe-module), from the
    built-ins, or from an entry point installed in this environment. Otherwise `None`, or, when the
    code is `required` (merge), one line saying how to name it.
    """
    if name in given:
        return given[name]
    try:
        entries = registered_probes()
    except NormprobeError:
        if required:
            raise
        entries = {}
    entry = entries.get(name)
    if entry is not None:
        try:
            return resolve_probe(name)
        except NormprobeError:
            if required:
                raise
            return None
    if required:
        raise NormprobeError(
            f"probe {name!r} of {where or 'this folder'} is neither built in nor installed; "
            "normprobe never imports code that a saved folder names: pass its code with "
            "--probe-module FILE.py or --probe-module package.module:Class (probe_modules= in Python)"
        )
    return None

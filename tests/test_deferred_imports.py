"""Deferred modules and placeholders (normprobe.deferred_imports), on throwaway packages and on
TransformerLens itself in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from normprobe.deferred_imports import DeferredName, defer_module, deferring, is_deferred


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package `np_probe_pkg` that counts how often its code runs (in `ran`), with a submodule and a class."""
    root = tmp_path / "np_probe_pkg"
    root.mkdir()
    counting = "import builtins\nbuiltins.np_probe_runs = getattr(builtins, 'np_probe_runs', 0) + 1\n"
    (root / "__init__.py").write_text(counting + "VALUE = 7\n")
    (root / "things.py").write_text(
        "class Thing:\n    def __init__(self, x=1):\n        self.x = x\n\n\ndef make(x):\n    return Thing(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import builtins

    monkeypatch.setattr(builtins, "np_probe_runs", 0, raising=False)
    yield "np_probe_pkg"
    for name in [n for n in sys.modules if n.startswith("np_probe_pkg")]:
        del sys.modules[name]


def runs() -> int:
    import builtins

    return builtins.np_probe_runs  # type: ignore[attr-defined]


def test_a_deferred_module_runs_at_its_first_attribute_and_once(package):
    defer_module(package)
    module = sys.modules[package]
    assert is_deferred(package) and runs() == 0
    assert module.__file__.endswith("__init__.py") and module.__spec__.name == package  # introspection: no run
    assert runs() == 0
    assert module.VALUE == 7 and runs() == 1 and not is_deferred(package)
    import np_probe_pkg  # noqa: F401 - the same module, not run again

    assert sys.modules[package] is module and runs() == 1


def test_importing_a_submodule_runs_the_package_first(package):
    defer_module(package)
    from np_probe_pkg.things import make

    assert runs() == 1 and make(3).x == 3


def test_a_module_imported_already_or_absent_is_left_alone(package):
    import np_probe_pkg

    defer_module(package)
    assert sys.modules[package] is np_probe_pkg and not is_deferred(package)
    defer_module("np_no_such_package")
    assert "np_no_such_package" not in sys.modules


def test_a_deferred_module_that_fails_is_forgotten_like_a_failed_import(package, tmp_path):
    (tmp_path / package / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    defer_module(package)
    with pytest.raises(RuntimeError, match="broken on purpose"):
        sys.modules[package].anything  # noqa: B018
    assert package not in sys.modules
    with pytest.raises(RuntimeError, match="broken on purpose"):
        import np_probe_pkg  # noqa: F401


def test_placeheld_names_resolve_at_first_use_and_leave_no_placeholder(package):
    with deferring(modules=(), placeheld=(package,)):
        import np_probe_pkg
        from np_probe_pkg.things import Thing, make
    assert isinstance(Thing, DeferredName) and isinstance(make, DeferredName) and runs() == 0
    assert package not in sys.modules  # the placeholders are gone: the next import is the real one
    made = make(4)  # a call
    real = sys.modules["np_probe_pkg.things"]
    assert runs() == 1 and type(made) is real.Thing and made.x == 4
    assert isinstance(made, Thing) and not isinstance(3, Thing)  # isinstance
    assert issubclass(real.Thing, Thing)

    class Sub(Thing):  # a subclass of the real class
        pass

    assert Sub.__mro__[1] is real.Thing and Sub(5).x == 5
    assert Thing.__name__ == "Thing" and np_probe_pkg.VALUE == 7  # attributes, of a name and of a module
    import np_probe_pkg as again

    assert again.VALUE == 7 and not isinstance(again, DeferredName)


def test_a_placeheld_constant_is_the_real_value_where_it_is_used(package):
    with deferring(modules=(), placeheld=(package,)):
        from np_probe_pkg import VALUE

        assert VALUE == 7 and VALUE > 6 and hash(VALUE) == hash(7) and bool(VALUE)  # read at import time
    assert runs() == 1


def test_transformer_lens_imports_without_pandas_pyarrow_or_datasets():
    """In a fresh interpreter: the bridge's import leaves pandas deferred and pyarrow and `datasets`
    unimported, and what TransformerLens took from `datasets` and pandas works when used."""
    script = textwrap.dedent(
        """
        import json, sys
        from normprobe.adapter import _bridge_class
        from normprobe.deferred_imports import DeferredName, is_deferred
        _bridge_class()
        seen = {"pandas_deferred": is_deferred("pandas"), "pyarrow": "pyarrow" in sys.modules,
                "datasets": "datasets" in sys.modules}
        from transformer_lens.utilities import hf_utils
        from transformer_lens import patching
        seen["placeheld"] = isinstance(hf_utils.load_dataset, DeferredName)
        import datasets
        seen["real_datasets"] = hf_utils.load_dataset.resolve() is datasets.load_dataset
        seen["isinstance"] = isinstance(datasets.Dataset.from_dict({"a": [1, 2]}), hf_utils.Dataset)
        seen["pandas_works"] = bool(patching.pd.DataFrame({"a": [1, 2]})["a"].sum() == 3)
        print(json.dumps(seen))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "pandas_deferred": True,
        "pyarrow": False,
        "datasets": False,
        "placeheld": True,
        "real_datasets": True,
        "isinstance": True,
        "pandas_works": True,
    }


def test_a_transformer_lens_that_fails_under_deferral_is_imported_plainly():
    """If TransformerLens's import fails with the placeholders in place, the bridge is imported again
    without them (and then loads `datasets` and pandas as it always did)."""
    script = textwrap.dedent(
        """
        import contextlib, json, sys
        import normprobe.deferred_imports as deferred
        from normprobe.adapter import _bridge_class
        real = deferred.deferring

        @contextlib.contextmanager
        def failing(*args, **kwargs):
            with real(*args, **kwargs):
                yield
            raise ImportError("as if TransformerLens had used a placeholder")

        deferred.deferring = failing
        bridge = _bridge_class()
        import transformer_lens.model_bridge as tl
        print(json.dumps({"bridge": bridge is tl.TransformerBridge, "datasets": "datasets.arrow_dataset" in sys.modules,
                          "pandas_deferred": deferred.is_deferred("pandas")}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"bridge": True, "datasets": True, "pandas_deferred": False}


def test_a_run_loads_pandas_only_after_its_passes():
    """In a fresh interpreter, through the runner as a user calls it: when the model is released, pandas
    has not run and pyarrow and `datasets` are not imported (a module-level `from pandas import ...` on
    the run's path would break this)."""
    script = textwrap.dedent(
        """
        import json, sys
        import normprobe
        import normprobe.runner as runner
        from normprobe.deferred_imports import is_deferred
        seen = {}
        release = runner.Runner._release

        def watched(self, handoff):
            seen.update(pandas_deferred=is_deferred("pandas"), pyarrow="pyarrow" in sys.modules)
            seen["datasets"] = "datasets" in sys.modules
            release(self, handoff)

        runner.Runner._release = watched
        result = normprobe.run("demo", texts=["A short text.", "Another one."], probes=["norms", "lens"], progress=False)
        seen["tables"] = sorted(result.tables)[:2]
        print(json.dumps(seen))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"pandas_deferred": True, "pyarrow": False, "datasets": False, "tables": ["lens", "lens_replicates"]}

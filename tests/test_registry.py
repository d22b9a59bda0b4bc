"""The stage registry loads its modules once, under a lock, and names a module that fails every time.

Each test points the registry at modules written into tmp_path (on sys.path) instead of the
built-in ones, with an empty registry and no plugins.
"""

from __future__ import annotations

import sys
import threading

import pytest

import stagegraph.pipeline.registry as registry
from stagegraph.errors import StageError

SLOW = '''
import time
from pathlib import Path

from stagegraph.pipeline.registry import register

with open(Path(__file__).with_name("imports.log"), "a") as log:
    log.write("imported\\n")
time.sleep(0.3)  # every thread asks while this module is still loading


@register
class SlowStage:
    type_name = "slow_stage"
'''


@pytest.fixture
def modules(monkeypatch, tmp_path):
    """A folder on sys.path for the test's stage modules; the registry empty and unloaded."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [])
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("sg_test_")]:
        del sys.modules[name]


@pytest.mark.parametrize(("source", "error"), [
    ("raise RuntimeError('the GPU driver is too old\\nsecond line')\n", "RuntimeError: the GPU driver is too old"),
    ("import sg_no_such_library\n", "ModuleNotFoundError: No module named 'sg_no_such_library'"),
])
def test_a_module_that_fails_to_import_is_named_by_every_lookup_until_it_imports(modules, monkeypatch, source, error):
    (modules / "sg_test_broken.py").write_text(source)
    monkeypatch.setattr(registry, "BUILTIN_MODULES", ("sg_test_broken",))
    expected = (f"the built-in stage module 'sg_test_broken' failed to import ({error}), so no stage type can be "
                "looked up; fix it or the installation (`python -c 'import sg_test_broken'` shows where it fails), "
                "then look up again")
    for lookup in (lambda: registry.stage_class("bm25"), lambda: registry.stage_class("bm25"), registry.available_types):
        with pytest.raises(StageError) as failed:
            lookup()
        assert str(failed.value) == expected  # the second time too: not "unknown stage type 'bm25'"
        assert failed.value.__cause__ is not None  # the module's own traceback is kept
    (modules / "sg_test_broken.py").write_text(SLOW.replace("time.sleep(0.3)", "pass"))
    assert registry.stage_class("slow_stage").__module__ == "sg_test_broken"


def test_threads_looking_up_at_start_up_all_wait_for_the_one_import(modules, monkeypatch):
    (modules / "sg_test_slow.py").write_text(SLOW)
    monkeypatch.setattr(registry, "BUILTIN_MODULES", ("sg_test_slow",))
    start = threading.Barrier(8)
    found: list[object] = []
    failures: list[str] = []

    def look_up() -> None:
        start.wait()
        try:
            found.append(registry.stage_class("slow_stage"))
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=look_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert len(found) == 8 and {cls.__name__ for cls in found} == {"SlowStage"} and len(set(map(id, found))) == 1
    assert (modules / "imports.log").read_text() == "imported\n"  # imported once

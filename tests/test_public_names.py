"""The names `stagegraph` exports: `from stagegraph import *` never replaces a builtin, while
`sg.open` (a collection's stack) keeps working and is listed by `dir(sg)`."""

from __future__ import annotations

import builtins

import stagegraph as sg
from stagegraph.collection.stack import open_stack


def test_a_starred_import_keeps_pythons_open_and_takes_every_other_name():
    namespace: dict = {}
    exec("from stagegraph import *", namespace)
    assert eval("open", namespace) is builtins.open
    assert "open" not in namespace
    assert sorted(n for n in namespace if n != "__builtins__") == sorted(sg.__all__)


def test_sg_open_is_still_the_stack_opener_and_is_listed():
    assert sg.open is open_stack
    assert "open" in dir(sg) and "open" not in sg.__all__


def test_no_starred_name_is_a_builtin():
    shadowing = sorted(set(sg.__all__) & set(dir(builtins)))
    assert shadowing == [], (
        f"`from stagegraph import *` would replace the builtin(s) {shadowing}; add them to NOT_STARRED in "
        "stagegraph/__init__.py (they stay importable as sg.NAME)"
    )

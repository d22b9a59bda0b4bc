"""The one place progress bars are made: tqdm's, redrawn freely on a terminal and sparingly anywhere else.

On a terminal a bar redraws itself in place ten times a second. Written to a file or a pipe (a CI
log, `nohup`, `2> run.log`) every redraw is another `\\r`-separated copy of the bar, and a long run
leaves hundreds of kilobytes of them. So where the bar's stream is not a terminal, `progress_bar`
prints a bar of known length at most once per tenth of it (`miniters`), and one of unknown length at
most once a minute (`mininterval`); tqdm's monitor thread, which would otherwise force a redraw after
`maxinterval` seconds without one, is kept off those bars. What a caller sets itself wins, and
`disable=True` (a `--quiet`, `progress=False`) still shows nothing. In a notebook (tqdm's widget,
which never floods) the bar is left as tqdm makes it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm as Bar
from tqdm.autonotebook import tqdm as _auto
from tqdm.std import tqdm as _std

STEPS = 10  # redraws of a bar of known length away from a terminal: one per tenth
UNSIZED_INTERVAL_S = 60.0  # and of one of unknown length: at most one a minute

__all__ = ["Bar", "progress_bar", "is_terminal"]


def is_terminal(stream: IO[Any] | None) -> bool:
    """Whether `stream` (None: stderr, tqdm's default) is an open terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def progress_bar(iterable: Iterable[Any] | None = None, **options: Any) -> Bar:
    """`tqdm(iterable, **options)`, drawn at most once per tenth (or once a minute without a total)
    when its stream is not a terminal."""
    if _auto is _std and not is_terminal(options.get("file")):
        total = options.get("total")
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        if total:
            options.setdefault("miniters", max(1, math.ceil(total / STEPS)))
            options.setdefault("mininterval", 0.0)
        else:
            options.setdefault("mininterval", UNSIZED_INTERVAL_S)
        options.setdefault("maxinterval", math.inf)
    return Bar(iterable, **options)

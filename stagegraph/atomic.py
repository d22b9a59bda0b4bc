"""The one atomic writer: files and directories appear whole or not at all.

* `atomic_file(path)` yields a handle on a temporary sibling; when the block ends without an error
  the data is flushed (and fsync'ed with `durable=True`) and renamed over `path` in one step. On an
  error the temporary file is removed and `path` is left as it was.
* `write_text`, `write_bytes`, `write_json` are the one-call forms;
* `atomic_path(path)` yields the temporary sibling's path, for libraries that write files by name
  (ONNX export, quantisation).
* `atomic_dir(path)` does the same for a whole directory (an index): build into a temporary sibling,
  then swap it into place; an existing directory survives a failed rebuild.

`durable=True` also fsyncs the containing directory after the rename, so the new name survives a
power cut; use it where an acknowledged write is promised (collections), not for caches.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Persist a directory's entries (a rename inside it) where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """A temporary sibling path; when the block succeeds, whatever was written there replaces `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", *, durable: bool = False) -> Iterator[IO[Any]]:
    """A handle whose contents replace `path` in one rename when the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path, durable=durable) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())


def write_text(path: str | os.PathLike[str], text: str, *, durable: bool = False) -> Path:
    with atomic_file(path, "w", durable=durable) as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> Path:
    with atomic_file(path, "wb", durable=durable) as fh:
        fh.write(data)
    return Path(path)


def write_json(path: str | os.PathLike[str], payload: Any, *, durable: bool = False) -> Path:
    """JSON with sorted keys and an indent, written atomically."""
    return write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str), durable=durable)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` in one rename.

    On an exception the temporary directory is removed and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

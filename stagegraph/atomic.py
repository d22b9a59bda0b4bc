"""The one atomic writer: files and directories appear whole or not at all.

* `atomic_file(path)` yields a handle on a temporary sibling; when the block ends without an error
  the data is flushed (and fsync'ed with `durable=True`) and renamed over `path` in one step. On an
  error the temporary file is removed and `path` is left as it was.
* `write_text`, `write_bytes`, `write_json` are the one-call forms;
* `atomic_path(path)` yields the temporary sibling's path, for libraries that write files by name
  (ONNX export, quantisation).
* `atomic_dir(path)` does the same for a whole directory (an index): build into a temporary sibling,
  then swap it into place; an existing directory survives a failed rebuild.

Permissions: `tempfile.mkstemp` and `mkdtemp` create 0600 files and 0700 directories, which the
rename would carry over, leaving a report or an index readable by its owner alone. So the final file
gets `0o666 & ~umask` and the final directory `0o777 & ~umask`, what `open()` and `mkdir` would have
given it, unless the caller passes `permissions` (e.g. 0o600 for something private). The umask is
read once per process, without changing it where the platform lets it be read (Linux's
/proc/self/status); elsewhere it is set and put back at once, under a lock, the first time.

`durable=True` also fsyncs the containing directory after the rename, so the new name survives a
power cut; use it where an acknowledged write is promised (collections), not for caches.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
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


_umask_lock = threading.Lock()
_umask: list[int] = []  # read once


def umask() -> int:
    """The process's umask, read once (see the module's notes)."""
    if not _umask:
        with _umask_lock:
            if not _umask:
                _umask.append(_read_umask())
    return _umask[0]


def _read_umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # the only portable way to read it: set it, and put it back at once
    os.umask(mask)
    return mask


def default_permissions(directory: bool = False) -> int:
    """What `open()` (0o666) or `mkdir` (0o777) would give a new file or directory under the umask."""
    return (0o777 if directory else 0o666) & ~umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = False, permissions: int | None = None) -> Iterator[Path]:
    """A temporary sibling path; when the block succeeds, whatever was written there replaces `path`,
    with `permissions` (default: `default_permissions()`, as `open()` would create it)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_permissions() if permissions is None else permissions)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", *, durable: bool = False,
                permissions: int | None = None) -> Iterator[IO[Any]]:
    """A handle whose contents replace `path` in one rename when the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path, durable=durable, permissions=permissions) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())


def write_text(path: str | os.PathLike[str], text: str, *, durable: bool = False, permissions: int | None = None) -> Path:
    with atomic_file(path, "w", durable=durable, permissions=permissions) as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = False, permissions: int | None = None) -> Path:
    with atomic_file(path, "wb", durable=durable, permissions=permissions) as fh:
        fh.write(data)
    return Path(path)


def write_json(path: str | os.PathLike[str], payload: Any, *, durable: bool = False, permissions: int | None = None) -> Path:
    """JSON with sorted keys and an indent, written atomically."""
    return write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str), durable=durable,
                      permissions=permissions)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, permissions: int | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` in one rename, with `permissions`
    (default: `default_permissions(directory=True)`, as `mkdir` would create it).

    On an exception the temporary directory is removed and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, default_permissions(directory=True) if permissions is None else permissions)
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

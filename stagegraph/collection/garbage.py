"""What a collection no longer needs, removed: the writer's garbage collection.

A generation stays while it is current or a reader in a live process leases it (`readers/*.lease`:
leases of dead processes are dropped); a segment stays while a kept generation names it, a deletion
file while a kept generation uses it, an artefact (index) while a kept manifest lists it; half-built
directories never stay. Called with the writer lock held, after each commit and merge.
"""

from __future__ import annotations

import json
import os
import shutil

from stagegraph.collection.generation import read_current
from stagegraph.collection.layout import GenerationManifest, Layout


def live_leases(layout: Layout) -> set[int]:
    """Generations that open readers on this host still use (leases of dead processes are ignored)."""
    used: set[int] = set()
    if not layout.readers.is_dir():
        return used
    for lease in layout.readers.glob("*.lease"):
        try:
            data = json.loads(lease.read_text(encoding="utf-8"))
            pid, generation = int(data["pid"]), int(data["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(pid):
            used.add(generation)
        else:
            lease.unlink(missing_ok=True)
    return used


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect_garbage(layout: Layout) -> list[str]:
    """Remove what no reader can need: unpublished or superseded generations without a live lease,
    half-built directories, segments and deletion files no kept generation names, and the artefacts
    only removed generations used. Call with the lock held."""
    current = read_current(layout)
    keep = {current} | live_leases(layout)
    removed = []
    if layout.generations.is_dir():
        for path in layout.generations.iterdir():
            if path.name.startswith(".building-") or (path.name.isdigit() and int(path.name) not in keep):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    referenced: set[str] = set()
    files: dict[str, set[str]] = {}  # segment id -> deletion files in use
    for number in keep:
        if number == 0:
            continue
        try:
            manifest = GenerationManifest.model_validate_json((layout.generation(number) / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return removed  # cannot tell what is referenced: remove nothing more
        referenced.update(manifest.artefacts)
        for ref in manifest.segments or []:
            files.setdefault(ref.id, set()).update([ref.deleted] if ref.deleted else [])
    if layout.segments.is_dir():
        for path in layout.segments.iterdir():
            if path.name not in files:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(f"segments/{path.name}")
                continue
            for stale in path.glob("deleted-*.npz"):
                if stale.name not in files[path.name]:
                    stale.unlink(missing_ok=True)
                    removed.append(f"segments/{path.name}/{stale.name}")
    if layout.artefacts.is_dir():
        for kind in layout.artefacts.iterdir():
            if not kind.is_dir():
                continue
            for artefact in kind.iterdir():
                rel = f"{kind.name}/{artefact.name}"
                if rel not in referenced:
                    shutil.rmtree(artefact, ignore_errors=True)
                    removed.append(rel)
    return removed

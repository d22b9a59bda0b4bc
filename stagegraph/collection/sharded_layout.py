"""What a sharded collection directory holds, how a document is routed, and the records that describe it.

```
ROOT/
  sharded.json                ShardedSettings: the shard count, the routing rule, the collection settings
  CURRENT                     the published sharded generation: one atomic, fsync'ed rename
  generations/00000007.json   ShardedManifest: which generation of each shard the sharded generation is
  shards/000/ ...             shard 0, a collection of its own (`stagegraph.collection.layout`)
  writer.lock                 one writer at a time, taken before any shard's own lock
```

`roll_forward` points each shard's own `CURRENT` at what a sharded manifest names. How they are
written and read together: `stagegraph.collection.sharded`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stagegraph.collection.generation import publish, read_current
from stagegraph.collection.layout import CollectionDamaged, CollectionSettings, Layout, now

SHARDED_FILE = "sharded.json"
ROUTING = "sha256(id)[:8] mod shards"
MAX_SHARDS = 256
#: sharded manifests kept besides the current one (a reader needs one only while it opens)
KEEP_MANIFESTS = 8


def shard_of(doc_id: str, shards: int) -> int:
    """The shard a document id lives in (see the module docstring); ids are NFC already."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def is_sharded(root: str | Path) -> bool:
    return (Path(root) / SHARDED_FILE).is_file()


class ShardedSettings(BaseModel):
    """How a sharded collection is laid out; fixed at creation (another shard count is a reshard)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    shards: int = Field(ge=1, le=MAX_SHARDS)
    routing: str = ROUTING
    collection: CollectionSettings


class ShardedManifest(BaseModel):
    """One sharded generation: the generation of each shard it is made of."""

    model_config = ConfigDict(extra="forbid")

    generation: int
    created: str = Field(default_factory=now)
    shards: list[int]


class ShardedLayout:
    """The paths of a sharded collection directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def settings(self) -> Path:
        return self.root / SHARDED_FILE

    @property
    def current(self) -> Path:
        return self.root / "CURRENT"

    @property
    def generations(self) -> Path:
        return self.root / "generations"

    def generation(self, number: int) -> Path:
        return self.generations / f"{number:08d}.json"

    def shard(self, index: int) -> Path:
        return self.root / "shards" / f"{index:03d}"

    @property
    def lock(self) -> Path:
        return self.root / "writer.lock"

    def exists(self) -> bool:
        return self.settings.is_file()


def read_sharded_manifest(layout: ShardedLayout, number: int) -> ShardedManifest:
    path = layout.generation(number)
    try:
        return ShardedManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError) as exc:
        raise CollectionDamaged(f"{path} cannot be read ({type(exc).__name__}); run `stagegraph collection repair "
                                f"{layout.root}`") from None


def roll_forward(layout: ShardedLayout, manifest: ShardedManifest) -> None:
    """Point each shard's own `CURRENT` at the generation the sharded manifest names (after a crash
    between the sharded publish and this, they lag). Call with the sharded writer lock held."""
    for index, number in enumerate(manifest.shards):
        shard = Layout(layout.shard(index))
        if number and read_current(shard) != number:
            publish(shard, number)

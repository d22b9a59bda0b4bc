"""Collections: a user's own documents, chunked, indexed, kept current by atomic generations.

* `collection` - `Collection`: open, read, refresh, the door to the writer; `repair`;
* `writer`     - the single writer: changes in, a generation published atomically, garbage out;
* `generation` - one generation's tables (documents, chunks), checked and turned into a corpus;
* `layout`     - the directory's files and the records that describe them;
* `ingest`     - files and folders into a collection (`stagegraph ingest`);
* `stack`      - `stagegraph.open(CONFIG, collection=DIR)`: a pipeline over a collection;
* `context`    - `Stack.context`: the passages for an LLM prompt within a token budget, with their sources;
* `sharded`    - N shard collections under one manifest, published together (`--shards N`);
  `sharded_layout` its directory, routing rule and records.
"""

from stagegraph.collection.collection import Collection, repair
from stagegraph.collection.ingest import IngestReport, ingest
from stagegraph.collection.layout import CollectionDamaged, CollectionError
from stagegraph.collection.sharded import ShardedCollection, open_collection
from stagegraph.collection.stack import Stack, open_stack

__all__ = ["Collection", "CollectionDamaged", "CollectionError", "IngestReport", "ShardedCollection", "Stack", "ingest",
           "open_collection", "open_stack", "repair"]

"""`stagegraph collection info|repair|merge|compact DIR` and `reshard SRC DST --shards N`: what a collection
holds (documents per source, segments, shards), going back to its newest intact generation, merging
its segments (`merge`: what the merge policy asks for; `compact`: everything into one segment per
shard, which also converts a collection written before segments), and rebuilding it into another
number of shards. Every verb takes sharded and unsharded collections alike."""

from __future__ import annotations

import argparse
import json

from stagegraph.cli.app import Exit, say


def register(sub) -> None:
    p = sub.add_parser("collection", help="inspect or repair a collection")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    info = verbs.add_parser("info", help="what the collection holds: generation, documents per source, chunks, settings")
    info.add_argument("collection")
    info.add_argument("--json", action="store_true", help="print the whole description as JSON")
    info.set_defaults(func=handle_info)
    fix = verbs.add_parser("repair", help="point the collection at its newest intact generation and clear debris")
    fix.add_argument("collection")
    fix.set_defaults(func=handle_repair)
    merge = verbs.add_parser("merge", help="run every merge the merge policy asks for (searches go on meanwhile)")
    merge.add_argument("collection")
    merge.set_defaults(func=handle_merge)
    compact = verbs.add_parser("compact", help="merge every segment into one, dropping deleted rows "
                                               "(converts a collection written before segments)")
    compact.add_argument("collection")
    compact.set_defaults(func=handle_compact)
    reshard = verbs.add_parser("reshard", help="rebuild a collection into a new directory with another number of "
                                               "shards (chunks and vectors copied, nothing encoded again)")
    reshard.add_argument("collection", help="the collection to read (sharded or not; only read)")
    reshard.add_argument("target", help="a new directory")
    reshard.add_argument("--shards", type=int, required=True, help="shards of the new collection (1-256)")
    reshard.set_defaults(func=handle_reshard)


def handle_info(args: argparse.Namespace) -> int:
    from stagegraph.collection.sharded import open_collection

    with open_collection(args.collection) as collection:
        info = collection.info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return Exit.OK
    chunker = info["chunker"]
    changes = ", ".join(f"{k} {v}" for k, v in info["changes"].items()) or "-"
    print(f"collection {info['collection']}: generation {info['generation']} ({info['created']})")
    print(f"  {info['documents']} documents, {info['chunks']} chunks; last change: {changes}")
    print(f"  chunker {chunker['kind']}, {chunker['max_tokens']} tokens, overlap {chunker['overlap_tokens']} "
          f"({info['chunk_tokenizer']})")
    print(f"  stages: {', '.join(info['stages']) or '-'}; artefacts: {len(info['artefacts'])}")
    segments = info["segments"]
    deleted = sum(s["deleted_chunks"] for s in segments)
    print(f"  segments: {len(segments)} ({', '.join(str(s['chunks']) for s in segments) or '-'} live chunks; "
          f"{deleted} deleted rows not yet merged away)")
    for shard in info.get("shards", []):
        print(f"  shard {shard['shard']}: generation {shard['generation']}, {shard['documents']} documents, "
              f"{shard['chunks']} chunks")
    for row in info["sources"]:  # what `ingest --sync` of each folder may delete, and what it never does
        print(f"  source {row['label']}: {row['documents']} documents")
    return Exit.OK


def handle_repair(args: argparse.Namespace) -> int:
    from stagegraph.collection import repair
    from stagegraph.collection.layout import CollectionDamaged
    from stagegraph.collection.sharded import is_sharded, repair_sharded

    number = repair_sharded(args.collection) if is_sharded(args.collection) else repair(args.collection)
    if number == 0:
        raise CollectionDamaged(
            f"no intact generation in {args.collection}: rebuild it with `stagegraph ingest PATH --collection NEW_DIR`"
        )
    say(args, f"{args.collection}: generation {number} is current and intact")
    return Exit.OK


def handle_merge(args: argparse.Namespace) -> int:
    from stagegraph.collection.sharded import open_collection

    with open_collection(args.collection) as collection:
        done = collection.merge(say=lambda line: say(args, line))
        count = len(collection.generation.manifest.segments or [])
    say(args, f"{args.collection}: {done} merge{'s' if done != 1 else ''}; {count} segments")
    return Exit.OK


def handle_compact(args: argparse.Namespace) -> int:
    from stagegraph.collection import Collection
    from stagegraph.collection.sharded import ShardedCollection, is_sharded

    opened = ShardedCollection(args.collection) if is_sharded(args.collection) else Collection(args.collection, convert=True)
    with opened as collection:
        generation = collection.compact(say=lambda line: say(args, line))
    say(args, f"{args.collection}: generation {generation.number}, one segment {'per shard ' if is_sharded(args.collection) else ''}"
              f"of {generation.manifest.chunks} chunks")
    return Exit.OK


def handle_reshard(args: argparse.Namespace) -> int:
    from stagegraph.collection.sharded import reshard

    generation = reshard(args.collection, args.target, shards=args.shards, progress=not getattr(args, "quiet", False),
                         say=lambda line: say(args, line))
    say(args, f"{args.target}: {args.shards} shards, {generation.manifest.documents} documents, "
              f"{generation.manifest.chunks} chunks (generation {generation.number})")
    return Exit.OK

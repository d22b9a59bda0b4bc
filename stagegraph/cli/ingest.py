"""`stagegraph ingest PATH... --collection DIR`: a user's files into a collection, as one new generation.

Re-running it on a changed folder re-reads everything but re-chunks, re-analyses and re-encodes only
documents whose content changed; `--sync` also deletes the documents that came from these paths and
are no longer found (never those of other folders, the Python API or HTTP), `--delete ID` removes one. The collection is created on first use with `--config` (default: the bundled `hybrid`
pipeline) and the chunker options; later runs must use the same ones (or rebuild into a new folder).
`--executor ray` encodes the new chunks on a Ray cluster; the generation written is the same.
"""

from __future__ import annotations

import argparse

from stagegraph.cli.app import Exit, add_executor_args, executor_config, opened_executor, progress, say
from stagegraph.cli.limits import add_metadata_limit_args, metadata_limits_of


def register(sub) -> None:
    p = sub.add_parser("ingest", help="read files and folders into a collection (created on first use), incrementally",
                       description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", help="files and folders (.txt .md .rst .html .pdf .json .jsonl)")
    p.add_argument("--collection", required=True, help="the collection directory")
    p.add_argument("--config", help="pipeline of a new collection: a YAML path or a bundled name (default hybrid)")
    p.add_argument("--sync", action="store_true", help="delete documents that came from these paths and are no longer found under them "
                   "(documents of other folders, the Python API or HTTP are kept)")
    p.add_argument("--delete", action="append", default=[], metavar="DOC_ID", help="remove this document (repeatable)")
    p.add_argument("--chunker", choices=["recursive", "sentence", "none"], help="how a new collection cuts documents (default recursive)")
    p.add_argument("--max-tokens", type=int, help="chunk size in tokens of the dense model (default 200)")
    p.add_argument("--overlap", type=int, help="overlap between chunks in tokens (default 30)")
    p.add_argument("--id-field", help="JSON/JSONL records: the id field (default id)")
    p.add_argument("--text-field", help="JSON/JSONL records: the text field (default text)")
    p.add_argument("--title-field", help="JSON/JSONL records: the title field (default title)")
    p.add_argument("--vector-field", help="JSON/JSONL records: a precomputed embedding in this field (a new collection; "
                                          "every record carries one; needs --vector-model; the chunker defaults to none)")
    p.add_argument("--vector-model", help="the model that made those embeddings: the dense stage's model: (it encodes the queries)")
    p.add_argument("--max-file-mb", type=float, default=50.0, help="skip files larger than this (default 50)")
    p.add_argument("--shards", type=int, help="a new collection split into this many shards by document id, searched "
                   "on Ray by `serve --executor ray` (docs/scaling.md); an existing one keeps its own")
    p.add_argument("--lock-timeout", type=float, default=60.0, help="seconds to wait for another writer (default 60)")
    p.add_argument("--absolute-paths", action="store_true", help="metadata.path is the file's absolute path "
                   "(default: relative to the path given, so no client learns the server's folders)")
    p.add_argument("--file-facts", action="store_true", help="add each file's size and mtime to its metadata (default: not)")
    add_metadata_limit_args(p)
    add_executor_args(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    import sys

    from pydantic import ValidationError

    from stagegraph.collection.ingest import ingest
    from stagegraph.corpora.ingest import ChunkerConfig, FileFacts, RecordFields
    from stagegraph.errors import InputError
    from stagegraph.pipeline.compose import Pipeline
    from stagegraph.pipeline.config import load_config

    if not args.paths and not args.delete:
        raise InputError("give files or folders to ingest (or --delete DOC_ID)")
    chunker = None
    if args.chunker or args.max_tokens or args.overlap is not None:
        options = {"kind": args.chunker, "max_tokens": args.max_tokens, "overlap_tokens": args.overlap}
        try:
            chunker = ChunkerConfig(**{k: v for k, v in options.items() if v is not None})
        except ValueError as exc:
            raise InputError(f"invalid chunker settings: {' '.join(str(exc).split())}") from None
    records = None
    if args.id_field or args.text_field or args.title_field or args.vector_field or args.vector_model:
        fields = {"id": args.id_field, "text": args.text_field, "title": args.title_field,
                  "vector": args.vector_field, "vector_model": args.vector_model}
        try:
            records = RecordFields(**{k: v for k, v in fields.items() if v})
        except ValidationError as exc:
            reasons = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise InputError(f"invalid record fields: {reasons}") from None
    pipeline = load_config(args.config) if args.config else None
    distributed = executor_config(args, Pipeline.from_config(pipeline) if pipeline else None)
    with opened_executor(args, distributed) as executor:
        report = ingest(
            args.paths, args.collection, pipeline=pipeline, chunker=chunker,
            records=records, sync=args.sync, delete=args.delete, max_file_bytes=int(args.max_file_mb * 1024 * 1024),
            limits=metadata_limits_of(args), file_facts=FileFacts(absolute_paths=args.absolute_paths,
                                                                  size_and_mtime=args.file_facts),
            lock_timeout=args.lock_timeout, progress=progress(args), warn=lambda line: print(f"warning: {line}", file=sys.stderr),
            encode=executor.encoder() if executor is not None else None, shards=args.shards,
        )
    for line in report.lines():
        say(args, line)
    return Exit.OK

"""The metadata limits' flags, shared by `stagegraph ingest` and `stagegraph serve` (`MetadataLimits`,
`stagegraph.corpora.validate`; the limits without a flag keep their defaults)."""

from __future__ import annotations

import argparse

FLAGS = {  # flag -> (MetadataLimits field, scale from the flag's unit, help)
    "--max-metadata-fields": ("max_fields", 1, "top-level metadata fields per document (default 256)"),
    "--max-metadata-depth": ("max_depth", 1, "levels of nesting in a document's metadata (default 8)"),
    "--max-metadata-kb": ("max_metadata_bytes", 1024, "a document's metadata as JSON, in KiB (default 64)"),
    "--max-collection-fields": ("max_collection_fields", 1, "distinct metadata fields per collection (default 1024)"),
}


def add_metadata_limit_args(parser: argparse.ArgumentParser) -> None:
    for flag, (_, _, text) in FLAGS.items():
        parser.add_argument(flag, type=int, help=text)


def metadata_limits_of(args: argparse.Namespace):
    """The `MetadataLimits` the flags ask for (the defaults for those not given); `InputError` when out of range."""
    from pydantic import ValidationError

    from stagegraph.corpora.validate import MetadataLimits
    from stagegraph.errors import InputError

    given = {name: getattr(args, flag[2:].replace("-", "_")) * scale
             for flag, (name, scale, _) in FLAGS.items() if getattr(args, flag[2:].replace("-", "_"), None) is not None}
    try:
        return MetadataLimits(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = next(f for f, (name, _, _) in FLAGS.items() if name == first["loc"][0])
        raise InputError(f"{flag}: {first['msg']}") from None

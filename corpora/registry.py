"""One entry point for datasets: `load_dataset(name_or_path)` and `available_datasets()`.

Resolution order for `load_dataset(x)`:
1. `x == "sample"`: the bundled sample (`corpora/sample/`, BEIR layout, shipped in the package);
   `x` starting `irds:`: that ir_datasets id, through ir_datasets' own registry, download and cache
   (`stagegraph.corpora.irds`; the id names the split, e.g. `irds:beir/scifact/test`);
2. `x` is an existing directory: BEIR loader when it has `corpus.jsonl` + `queries.jsonl` +
   `qrels/*.tsv`, else the JSONL loader (`docs.jsonl`/`id` keys, TREC qrels ...);
3. a name: the folder `<dir>/<x>` in each dataset directory (`$STAGEGRAPH_DATASETS`, a
   `os.pathsep`-separated list; then `shared/datasets` beside the repository when it exists), then
   the download cache; a known BEIR name is downloaded only when `download=True`;
4. otherwise a `DataError` listing every place it looked and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from stagegraph.corpora.beir import is_beir_dir, load_beir
from stagegraph.corpora.download import KNOWN_ARCHIVES, cached_path, default_cache_dir, download_beir
from stagegraph.corpora.jsonl import find_jsonl_files, load_jsonl_dir
from stagegraph.corpora.types import DataError, Dataset

PathLike = str | os.PathLike

SAMPLE_NAME = "sample"
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
# <repo>/../shared/datasets: where this project's shared collections live next to a checkout.
_SIBLING_SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


class DatasetEntry(BaseModel):
    """A dataset `load_dataset` can open: its name, where it comes from and its folder (if local)."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: Literal["bundled", "local", "cache", "download"]
    path: str | None = None


def load_sample(progress: bool = False) -> Dataset:
    """The bundled sample dataset (see `corpora/sample/DATASHEET.md`), named "sample"."""
    if not (SAMPLE_DIR / "corpus.jsonl").is_file():
        raise DataError(f"{SAMPLE_DIR}: the bundled sample is missing from this installation; reinstall stagegraph.")
    return load_beir(SAMPLE_DIR, name=SAMPLE_NAME, progress=progress)


def dataset_dirs() -> list[Path]:
    """Folders searched for a dataset by name, in order (the download cache comes after these)."""
    dirs = [Path(p).expanduser() for p in os.environ.get("STAGEGRAPH_DATASETS", "").split(os.pathsep) if p]
    if _SIBLING_SHARED.is_dir():
        dirs.append(_SIBLING_SHARED)
    return dirs


def load_directory(path: PathLike, *, name: str | None = None, progress: bool = True) -> Dataset:
    """A dataset folder: BEIR when its files are BEIR's, else the JSONL loader.

    A folder with a `qrels/` subfolder in which no loader finds a qrels file is refused with BEIR's
    message (what `qrels/` holds and what it should); a folder with no qrels at all loads with no
    split (it can be searched, and `Dataset.split` says how to add judgments).
    """
    path = Path(path)
    if is_beir_dir(path):
        return load_beir(path, name=name, progress=progress)
    found = find_jsonl_files(path)
    if found is not None and (found[2] or not (path / "qrels").exists()):
        return load_jsonl_dir(path, name=name, progress=progress)
    return load_beir(path, name=name, progress=progress)  # raises a DataError naming what is missing


def load_dataset(
    name_or_path: PathLike,
    progress: bool = True,
    *,
    download: bool = False,
    cache_dir: PathLike | None = None,
) -> Dataset:
    """A `Dataset` from the bundled sample, a folder, a named local dataset, an ir_datasets id
    (`irds:beir/scifact/test`) or (opt-in) a BEIR download."""
    text = os.fspath(name_or_path)
    if text == SAMPLE_NAME:
        return load_sample(progress=progress)
    if text.startswith("irds:"):
        from stagegraph.corpora.irds import load_irds

        return load_irds(text, progress=progress)
    path = Path(text).expanduser()
    if path.is_dir():
        return load_directory(path, progress=progress)
    looks_like_path = os.sep in text or (os.altsep and os.altsep in text) or text.startswith(".")
    if looks_like_path and path.exists():
        raise DataError(
            f"{path}: is a file, not a dataset folder; pass the folder that holds corpus.jsonl, "
            "queries.jsonl and qrels/<split>.tsv."
        )
    tried: list[str] = [f"{path} (not a directory)"]
    if not looks_like_path:
        tried = []
        for folder in dataset_dirs():
            candidate = folder / text
            if candidate.is_dir():
                return load_directory(candidate, name=text, progress=progress)
            tried.append(str(candidate))
        cached = cached_path(text, cache_dir)
        if (cached / "corpus.jsonl").is_file():
            return load_beir(cached, name=text, progress=progress)
        tried.append(f"{cached} (download cache)")
        if text in KNOWN_ARCHIVES:
            if download:
                return load_beir(download_beir(text, cache_dir, progress=progress), name=text, progress=progress)
            tried.append(
                f"download: {text!r} is a public BEIR dataset; --download (load_dataset({text!r}, download=True)) fetches it "
                f"({KNOWN_ARCHIVES[text].url})"
            )
    if not os.environ.get("STAGEGRAPH_DATASETS"):
        tried.append("$STAGEGRAPH_DATASETS is not set (a folder holding dataset folders)")
    raise DataError(
        f"No dataset {text!r}. Looked at:\n  - "
        + "\n  - ".join(tried)
        + f"\nPass a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), {SAMPLE_NAME!r}, "
        f"or one of: {', '.join(e.name for e in available_datasets(cache_dir=cache_dir))}."
    )


def available_datasets(*, cache_dir: PathLike | None = None) -> list[DatasetEntry]:
    """Every dataset name `load_dataset` resolves: bundled, local folders, cached, downloadable."""
    entries: dict[str, DatasetEntry] = {SAMPLE_NAME: DatasetEntry(name=SAMPLE_NAME, source="bundled", path=str(SAMPLE_DIR))}
    for folder in dataset_dirs():
        if folder.is_dir():
            for child in sorted(folder.iterdir()):
                if child.is_dir() and child.name not in entries and (is_beir_dir(child) or find_jsonl_files(child)):
                    entries[child.name] = DatasetEntry(name=child.name, source="local", path=str(child))
    cache = Path(cache_dir or default_cache_dir())
    if cache.is_dir():
        for child in sorted(cache.iterdir()):
            if child.name not in entries and (child / "corpus.jsonl").is_file():
                entries[child.name] = DatasetEntry(name=child.name, source="cache", path=str(child))
    for name in sorted(KNOWN_ARCHIVES):
        entries.setdefault(name, DatasetEntry(name=name, source="download"))
    return list(entries.values())

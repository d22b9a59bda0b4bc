"""Downloads the public BEIR zips into a cache folder, checked, extracted atomically, reused.

`https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip`. Each known name
carries the MD5 that the BEIR README publishes for its zip; SciFact also carries a SHA-256 (and
byte size) recorded from the same archive. Where a SHA-256 is unknown it is None and the MD5 plus a
full zip integrity test (`ZipFile.testzip`) stand in for it. With no network the download fails
within `timeout` seconds with a message that says how to do it by hand: fetch the zip elsewhere,
unzip it, and pass the extracted folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from stagegraph.progress import progress_bar

from stagegraph.atomic import atomic_dir
from stagegraph.corpora.types import DataError

PathLike = str | os.PathLike

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
DEFAULT_TIMEOUT_S = 10.0


class DownloadError(DataError):
    """A dataset could not be fetched or failed its check; the message says how to get it by hand."""


class BeirArchive(BaseModel):
    """One public BEIR zip: its name, the MD5 the BEIR README publishes, and a SHA-256 where known."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None

    @property
    def url(self) -> str:
        return BEIR_URL.format(name=self.name)


# MD5s: the "md5" column of the BEIR README's dataset table. The SciFact SHA-256 and byte size were
# recorded from the same archive (its MD5 matches). Other SHA-256s are unknown here: None.
KNOWN_ARCHIVES: dict[str, BeirArchive] = {
    a.name: a
    for a in (
        BeirArchive(
            name="scifact",
            md5="5f7d1de60b170fc8027bb7898e2efca1",
            sha256="536e14446a0ba56ed1398ab1055f39fe852686ecad24a6306c80c490fa8e0165",
            size=2_816_079,
        ),
        BeirArchive(name="nfcorpus", md5="a89dba18a62ef92f7d323ec890a0d38d"),
        BeirArchive(name="arguana", md5="8ad3e3c2a5867cdced806d6503f29b99"),
        BeirArchive(name="scidocs", md5="38121350fc3a4d2f48850f6aff52e4a9"),
        BeirArchive(name="fiqa", md5="17918ed23cd04fb15047f73e6c3bd9d9"),
        BeirArchive(name="trec-covid", md5="ce62140cb23feb9becf6270d0d1fe6d1"),
        BeirArchive(name="webis-touche2020", md5="46f650ba5a527fc69e0a6521c5a23563"),
        BeirArchive(name="quora", md5="18fb154900ba42a600f84b839c173167"),
        BeirArchive(name="cqadupstack", md5="4e41456d7df8ee7760a7f866133bda78"),
        BeirArchive(name="nq", md5="d4d3d2e48787a744b6f6e691ff534307"),
        BeirArchive(name="hotpotqa", md5="f412724f78b0d91183a0e86805e16114"),
        BeirArchive(name="dbpedia-entity", md5="c2a39eb420a3164af735795df012ac2c"),
        BeirArchive(name="fever", md5="5a818580227bfb4b35bb6fa46d9b6c03"),
        BeirArchive(name="climate-fever", md5="8b66f0a9126c521bae2bde127b4dc99d"),
        BeirArchive(name="msmarco", md5="444067daf65d982533ea17ebd59501e4"),
    )
}


def default_cache_dir() -> Path:
    """`$STAGEGRAPH_CACHE/datasets`, else `$XDG_CACHE_HOME/stagegraph/datasets`, else `~/.cache/...`."""
    if os.environ.get("STAGEGRAPH_CACHE"):
        return Path(os.environ["STAGEGRAPH_CACHE"]) / "datasets"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "stagegraph" / "datasets"


def cached_path(name: str, cache_dir: PathLike | None = None) -> Path:
    """Where `download_beir(name)` puts (or has put) the extracted dataset folder."""
    return Path(cache_dir or default_cache_dir()) / name


def manual_hint(name: str, url: str) -> str:
    return (
        f"Download {url} on a machine with network, unzip it, and pass the extracted folder "
        f"(--dataset /path/to/{name}), or put it under $STAGEGRAPH_DATASETS/{name}."
    )


def _fetch(url: str, dest: Path, *, timeout: float, opener: Callable, progress: bool, name: str) -> None:
    try:
        with opener(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(total=total, unit="B", unit_scale=True, desc=f"downloading {name}", disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"Could not download {url} ({reason}); this machine may have no network. {manual_hint(name, url)}"
        ) from None


def _verify(archive: BeirArchive, file: Path) -> None:
    data_md5, data_sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 20):
            data_md5.update(chunk)
            data_sha.update(chunk)
    problems = []
    if archive.size is not None and file.stat().st_size != archive.size:
        problems.append(f"size {file.stat().st_size} != {archive.size}")
    if archive.sha256 and data_sha.hexdigest() != archive.sha256:
        problems.append(f"sha256 {data_sha.hexdigest()} != {archive.sha256}")
    if archive.md5 and data_md5.hexdigest() != archive.md5:
        problems.append(f"md5 {data_md5.hexdigest()} != {archive.md5}")
    try:
        with zipfile.ZipFile(file) as zf:
            bad = zf.testzip()
    except zipfile.BadZipFile as err:
        problems.append(f"not a valid zip ({err})")
    else:
        if bad is not None:
            problems.append(f"corrupt zip member {bad}")
    if problems:
        raise DownloadError(
            f"{archive.url}: the downloaded archive failed its check ({'; '.join(problems)}). "
            f"Try again (nothing was kept). {manual_hint(archive.name, archive.url)}"
        )


def _extract(file: Path, name: str, target: Path) -> None:
    """Unzip `<name>/` (or the archive's root) into `target` atomically (a leftover is replaced)."""
    with atomic_dir(target) as out:
        scratch = out / ".unzip"
        with zipfile.ZipFile(file) as zf:
            for member in zf.namelist():
                resolved = (scratch / member).resolve()
                if not resolved.is_relative_to(scratch.resolve()):
                    raise DownloadError(f"{file}: refusing zip member {member!r} that escapes the folder.")
            zf.extractall(scratch)
        inner = scratch / name if (scratch / name).is_dir() else scratch
        if not (inner / "corpus.jsonl").is_file():
            raise DownloadError(f"{file}: the archive holds no {name}/corpus.jsonl; it is not a BEIR dataset zip.")
        for child in inner.iterdir():
            os.replace(child, out / child.name)
        shutil.rmtree(scratch)


def download_beir(
    name: str,
    cache_dir: PathLike | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
    opener: Callable = urllib.request.urlopen,
    allow_unknown: bool = False,
) -> Path:
    """The extracted folder of BEIR dataset `name`, downloading and checking it on first use.

    A name outside `KNOWN_ARCHIVES` is refused unless `allow_unknown` (then only the zip test
    checks it). `opener(url, timeout=)` is `urllib.request.urlopen` (replaceable in tests).
    """
    archive = KNOWN_ARCHIVES.get(name)
    if archive is None:
        if not allow_unknown:
            raise DownloadError(
                f"{name!r} is not a known BEIR dataset; known: {', '.join(sorted(KNOWN_ARCHIVES))}. "
                "Pass allow_unknown=True to try its URL without a checksum."
            )
        archive = BeirArchive(name=name)
    target = cached_path(name, cache_dir)
    if (target / "corpus.jsonl").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_zip = tempfile.mkstemp(prefix=f".{name}.", suffix=".zip", dir=target.parent)
    except OSError as err:
        raise DownloadError(
            f"{target.parent}: cannot write the download cache ({err.strerror or err}); set $STAGEGRAPH_CACHE "
            f"to a writable folder. {manual_hint(name, archive.url)}"
        ) from None
    os.close(fd)
    try:
        _fetch(archive.url, Path(tmp_zip), timeout=timeout, opener=opener, progress=progress, name=name)
        _verify(archive, Path(tmp_zip))
        _extract(Path(tmp_zip), name, target)
    finally:
        Path(tmp_zip).unlink(missing_ok=True)
    return target

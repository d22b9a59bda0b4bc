"""load_dataset resolution (folders, names, cache), available_datasets, and the BEIR downloader offline."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import zipfile
from pathlib import Path

import pytest

import stagegraph.corpora.download as download
import stagegraph.corpora.registry as registry
from stagegraph.corpora.download import DownloadError, download_beir
from stagegraph.corpora.registry import available_datasets, load_dataset
from stagegraph.corpora.types import DataError


def make_beir(root: Path, doc_key: str = "_id") -> Path:
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text(json.dumps({doc_key: "d1", "title": "t", "text": "x"}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({doc_key: "q1", "text": "y"}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No env var, no sibling shared folder, an empty cache: only what each test adds."""
    monkeypatch.delenv("STAGEGRAPH_DATASETS", raising=False)
    monkeypatch.setattr(registry, "_SIBLING_SHARED", tmp_path / "no-shared")
    monkeypatch.setenv("STAGEGRAPH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_directory_loads_as_beir(isolated):
    ds = load_dataset(make_beir(isolated / "mine"), progress=False)
    assert ds.name == "mine" and len(ds.corpus) == 1


def test_jsonl_directory_dispatches_to_jsonl_loader(isolated):
    root = isolated / "plain"
    root.mkdir()
    (root / "docs.jsonl").write_text('{"id": "d1", "text": "x"}\n')
    (root / "queries.jsonl").write_text('{"id": "q1", "text": "y"}\n')
    (root / "qrels.txt").write_text("q1 0 d1 2\n")
    ds = load_dataset(str(root), progress=False)
    assert ds.qrels["test"].judgments == {"q1": {"d1": 2}}


def test_name_found_in_env_dirs_then_cache(isolated, monkeypatch):
    make_beir(isolated / "envdir" / "alpha")
    make_beir(isolated / "cache" / "datasets" / "beta")
    monkeypatch.setenv("STAGEGRAPH_DATASETS", str(isolated / "envdir"))
    assert load_dataset("alpha", progress=False).name == "alpha"
    assert load_dataset("beta", progress=False).name == "beta"
    names = {e.name: e.source for e in available_datasets()}
    assert names["alpha"] == "local" and names["beta"] == "cache" and names["sample"] == "bundled"
    assert names["scifact"] == "download"


def test_unknown_name_lists_what_was_tried(isolated, monkeypatch):
    monkeypatch.setenv("STAGEGRAPH_DATASETS", str(isolated / "envdir"))
    with pytest.raises(DataError) as info:
        load_dataset("nosuch")
    message = str(info.value)
    assert str(isolated / "envdir" / "nosuch") in message
    assert "download cache" in message
    assert "sample" in message


def test_known_beir_name_offers_download_without_fetching(isolated, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("must not download unless asked")

    monkeypatch.setattr(registry, "download_beir", no_network)
    with pytest.raises(DataError, match=r"download=True"):
        load_dataset("scifact")


def test_missing_path_is_reported_as_path(isolated):
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(str(isolated / "absent" / "dir"))


# ---- downloader ------------------------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    headers: dict = {}


def zip_bytes(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{name}/corpus.jsonl", '{"_id": "d1", "text": "x"}\n')
        zf.writestr(f"{name}/queries.jsonl", '{"_id": "q1", "text": "y"}\n')
        zf.writestr(f"{name}/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return buf.getvalue()


def test_no_network_fails_fast_with_manual_instructions(tmp_path):
    calls = []

    def offline(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(DownloadError) as info:
        download_beir("scifact", tmp_path, opener=offline, timeout=2, progress=False)
    message = str(info.value)
    assert "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip" in message
    assert "name resolution" in message and "unzip it" in message and "--dataset" in message
    assert calls == [(download.KNOWN_ARCHIVES["scifact"].url, 2)]
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_real_opener_fails_fast_on_refused_connection(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "BEIR_URL", "http://127.0.0.1:9/{name}.zip")  # discard port: refused
    start = time.perf_counter()
    with pytest.raises(DownloadError, match="no network"):
        download_beir("scifact", tmp_path, timeout=1.0, progress=False)
    assert time.perf_counter() - start < 5


def test_unknown_name_refused_without_opt_in(tmp_path):
    with pytest.raises(DownloadError, match="not a known BEIR dataset"):
        download_beir("my-private-set", tmp_path, opener=lambda url, timeout: FakeResponse(b""))


def test_download_checks_extracts_and_reuses_cache(tmp_path):
    served = []

    def opener(url, timeout):
        served.append(url)
        return FakeResponse(zip_bytes("tiny"))

    folder = download_beir("tiny", tmp_path, opener=opener, progress=False, allow_unknown=True)
    assert folder == tmp_path / "tiny" and (folder / "qrels" / "test.tsv").is_file()
    assert download_beir("tiny", tmp_path, opener=opener, progress=False, allow_unknown=True) == folder
    assert len(served) == 1  # second call served from the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_checksum_mismatch_is_refused_and_nothing_kept(tmp_path):
    with pytest.raises(DownloadError, match=r"failed its check \(size .*sha256 .*md5 "):
        download_beir("scifact", tmp_path, opener=lambda url, timeout: FakeResponse(zip_bytes("scifact")), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_zip_is_refused(tmp_path):
    with pytest.raises(DownloadError, match="not a valid zip"):
        download_beir("odd", tmp_path, opener=lambda url, timeout: FakeResponse(b"not a zip"), allow_unknown=True, progress=False)


def test_load_dataset_downloads_only_when_asked(isolated, monkeypatch):
    monkeypatch.setitem(download.KNOWN_ARCHIVES, "tiny", download.BeirArchive(name="tiny"))
    monkeypatch.setattr(
        registry, "download_beir", lambda name, cache_dir, progress: download_beir(
            name, cache_dir, progress=progress, opener=lambda url, timeout: FakeResponse(zip_bytes("tiny"))
        )
    )
    with pytest.raises(DataError, match="download=True"):
        load_dataset("tiny", progress=False)
    ds = load_dataset("tiny", progress=False, download=True)
    assert ds.name == "tiny" and ds.qrels["test"].judgments == {"q1": {"d1": 1}}

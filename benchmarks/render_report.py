"""Check that a report.html renders: take a headless-Chromium screenshot of it.

    python benchmarks/render_report.py [REPORT_DIR_OR_HTML] [--out docs/report.png]

Without a report argument it builds a small demo report from stub stages (no models, no dataset)
so the page has every section (table, funnel, latency plots, branch contributions). Chromium runs
with networking, sync and component updates off, in a throw-away profile. Skips (exit 0, with a
message) when no chromium binary is installed; install it with `apt-get install -y chromium`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def demo_report_dir(out: Path) -> Path:
    """A report from stub stages on a random tiny dataset, saved under `out`."""
    import numpy as np

    from stagegraph.corpora.types import Dataset, Qrels, Queries
    from stagegraph.evaluation.evaluate import evaluate
    from stagegraph.evaluation.writer import save_report
    from stagegraph.stages.fusion import CandidatePool
    from stubs import StubRerank, StubRetriever, tiny_corpus

    corpus = tiny_corpus(400)
    rng = np.random.default_rng(7)
    qids = [f"q{i}" for i in range(60)]
    queries = Queries(qids, [f"demo query {i}" for i in range(60)])
    qrels = Qrels({q: {f"d{j}": int(rng.integers(1, 4)) for j in rng.choice(400, 10, replace=False)} for q in qids})
    dataset = Dataset("demo", corpus, queries, {"test": qrels})
    graph = (
        (StubRetriever("bm25", k=100, seed=1, sleep_ms=0.3) | StubRetriever("dense", k=100, seed=2, sleep_ms=1.0))
        >> CandidatePool("rrf", k=100, name="pool")
        >> StubRerank("rerank", k=10)
    )
    report = evaluate(graph, dataset, progress=False, metrics=["recall@10", "recall@100", "ndcg@10", "mrr@10", "map"])
    save_report(report, out)
    return out


def screenshot(browser: str, html: Path, png: Path, size: str = "1200,1600") -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size}", html.resolve().as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", help="a report directory or report.html (default: a stub demo)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "report.png"), help="screenshot path")
    parser.add_argument("--size", default="1200,1600", help="window size W,H")
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("skipped: no chromium found (apt-get install -y chromium); the HTML was not rendered")
        return 0
    if args.report:
        html = Path(args.report)
        html = html / "report.html" if html.is_dir() else html
    else:
        html = demo_report_dir(Path(tempfile.mkdtemp(prefix="stagegraph-report-"))) / "report.html"
    png = Path(args.out)
    screenshot(browser, html, png, args.size)
    print(f"rendered {html} -> {png} ({png.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

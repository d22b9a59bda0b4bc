"""Writing a `Report` to a directory: `report.json`, `per_query.csv`, `report.html` and the runs.

Every file is written atomically (`stagegraph.atomic`), so an interrupted write leaves the previous
file whole. The TREC run files (`runs/<stage>.trec`) are written when the report still holds its
rankings (a report fresh from `evaluate`, not one read back from disk).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stagegraph import atomic
from stagegraph.corpora.trec import write_run
from stagegraph.evaluation.html import render_html
from stagegraph.evaluation.loss import loss_tsv
from stagegraph.evaluation.report import Report


def save_report(report: Report, out_dir: str | os.PathLike[str]) -> Path:
    """Write report.json, per_query.csv, report.html, loss.tsv and runs/<stage>.trec under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "report.json", report.to_json())
    atomic.write_text(out / "per_query.csv", report.per_query_csv())
    atomic.write_text(out / "report.html", render_html(report))
    if report.losses or report.loss is not None:
        atomic.write_text(out / "loss.tsv", loss_tsv(report.losses))
    qids, runs, corpus = report.runs
    if runs and corpus is not None:
        for stage, rankings in runs.items():
            write_trec_run(out / "runs" / f"{stage}.trec", stage, qids, rankings, corpus)
    return out / "report.json"


def write_trec_run(path: Path, run_name: str, qids: Sequence[str], rankings: Sequence, corpus: Any) -> Path:
    """Six-column TREC run file in each ranking's order (ties already broken by row)."""
    return write_run(path, run_name.replace(" ", "_"), list(qids), list(rankings), corpus)

"""Figures with their conditions: the machine's load in every report, progress bars that do not flood a
log, the HTML report's numbers and labels written for people, and report files readable as the user's
other files are."""

from __future__ import annotations

import io
import json
import os
import re
import stat

import pytest
import tqdm.std
from rich.console import Console

from eval_fixtures import tiny_dataset
from stagegraph import atomic
from stagegraph.evaluation import conditions
from stagegraph.evaluation.conditions import BUSY_LOAD_PER_CORE, MachineLoad
from stagegraph.evaluation.console import print_report, render_report
from stagegraph.evaluation.evaluate import evaluate
from stagegraph.evaluation.html import render_html
from stagegraph.evaluation.report import Report
from stagegraph.evaluation.svg import histogram, human_ms, latency_strips
from stagegraph.evaluation.writer import save_report
from stagegraph.pipeline.executor import progress_over
from stagegraph.progress import progress_bar
from stubs import StubRerank, StubRetriever

WARNING = "Warning: busy machine"


@pytest.fixture(scope="module")
def dataset():
    return tiny_dataset()


def run(dataset, monkeypatch, loads: tuple[float, float, float], cpus: int = 2) -> Report:
    """A small evaluation on a machine with `cpus` CPUs and the given load averages."""
    monkeypatch.setattr(os, "getloadavg", lambda: loads)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(conditions, "process_age_s", lambda: None)  # no share of its own before the run
    # the stage is named as its type: the HTML shows it once
    graph = StubRetriever("stub_retriever", k=20) >> StubRerank("rerank", k=10)
    return evaluate(graph, dataset, progress=False)


# -- the machine's load ---------------------------------------------------------------------------
def test_the_load_is_in_report_json_and_round_trips(dataset, monkeypatch, tmp_path):
    report = run(dataset, monkeypatch, (0.25, 0.2, 0.1))
    save_report(report, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())["machine_load"]
    assert data["cpus"] == 2 and data["load_start"] == 0.25 and data["load_end"] == 0.25
    assert data["busy_above"] == pytest.approx(BUSY_LOAD_PER_CORE * 2) and data["busy"] is False
    assert {"cpus_usable", "own_start", "own_end"} <= set(data)
    loaded = Report.load(tmp_path)
    assert loaded.machine_load == report.machine_load and loaded.model_dump() == report.model_dump()


def test_a_busy_machine_is_named_in_the_console_and_the_page(dataset, monkeypatch):
    report = run(dataset, monkeypatch, (3.7, 3.5, 3.0))
    assert report.machine_load.busy and report.machine_load.load_start == 3.7
    text = render_report(report, width=100)
    warnings = [line for line in text.splitlines() if WARNING in line]
    assert len(warnings) == 1 and "latencies not comparable with a quiet machine's" in warnings[0]
    assert "load 3.70 -> 3.70, 2 CPUs" in warnings[0] and len(warnings[0]) <= 100
    buf = io.StringIO()
    print_report(report, quiet=True, console=Console(file=buf, width=60))  # quiet, narrow: still one line
    assert sum(WARNING in line for line in buf.getvalue().splitlines()) == 1
    html = render_html(report)
    assert "class='warn'" in html and "not comparable with figures measured on a quiet machine" in html


def test_a_quiet_machine_gets_no_warning_but_its_load_is_shown(dataset, monkeypatch):
    report = run(dataset, monkeypatch, (0.3, 0.2, 0.1))
    text = render_report(report, width=100)
    assert WARNING not in text and "Machine: 2 CPUs, 1-minute load 0.30 at the start" in text
    html = render_html(report)
    assert "class='warn'" not in html and "1-minute load 0.30 at the start" in html


def test_the_runs_own_work_is_not_held_against_the_machine():
    # 1.9 on 2 CPUs, 1.5 of it this run's own: others' 0.4 is quiet; 1.5 with none of its own is busy
    assert not MachineLoad(cpus=2, load_start=0.2, load_end=1.9, own_end=1.5).busy
    assert MachineLoad(cpus=2, load_start=0.2, load_end=1.9, own_end=0.2).busy
    assert MachineLoad(cpus=2, load_start=1.5).busy and not MachineLoad(cpus=4, load_start=1.5).busy
    assert not MachineLoad(cpus=2).busy  # no load average on this platform: never called busy


def test_the_probe_counts_the_runs_own_cpu_time(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 1.0, 1.0))
    monkeypatch.setattr(conditions, "process_age_s", lambda: 120.0)
    clock = iter([100.0, 160.0])  # the run takes a minute of wall time ...
    monkeypatch.setattr(conditions.time, "monotonic", lambda: next(clock))
    cpu = iter([60.0, 180.0])  # ... and two minutes of CPU: two cores busy with its own work
    monkeypatch.setattr(conditions, "cpu_seconds", lambda: next(cpu))
    load = conditions.LoadProbe().finish()
    assert load.own_start == pytest.approx(0.5 * (1 - 2.718281828 ** -2), abs=0.01)
    assert load.own_end == pytest.approx(load.own_start * 2.718281828 ** -1 + 2 * (1 - 2.718281828 ** -1), abs=0.01)


def test_an_older_report_without_the_load_still_loads(dataset, monkeypatch, tmp_path):
    report = run(dataset, monkeypatch, (0.3, 0.2, 0.1))
    data = json.loads(report.to_json())
    del data["machine_load"]
    (tmp_path / "report.json").write_text(json.dumps(data))
    old = Report.load(tmp_path)
    assert old.machine_load is None
    assert WARNING not in render_report(old) and "Machine:" not in render_report(old)
    assert "class='warn'" not in render_html(old)


# -- progress bars --------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def slow_clock(monkeypatch):
    """tqdm's clock moves 0.5 s a reading: without a limit on redraws every update would draw the bar."""
    now = [0.0]

    def tick() -> float:
        now[0] += 0.5
        return now[0]

    monkeypatch.setattr(tqdm.std, "time", tick)


def redraws(text: str) -> int:
    return len([part for part in re.split(r"[\r\n]", text) if part.strip()])


def test_a_bar_away_from_a_terminal_draws_once_per_tenth(slow_clock):
    log = io.StringIO()
    with progress_bar(total=1000, desc="scoring", file=log) as bar:
        for _ in range(1000):
            bar.update(1)
    assert redraws(log.getvalue()) < 20 and len(log.getvalue()) < 2000
    assert "100%" in log.getvalue()
    log = io.StringIO()
    for _ in progress_over(range(1000), True, desc="queries", file=log):  # the executor's bars
        pass
    assert redraws(log.getvalue()) < 20
    log = io.StringIO()
    with progress_bar(desc="reading files", file=log) as bar:  # no total: by time, at most once a minute
        for _ in range(1000):
            bar.update(1)
    assert redraws(log.getvalue()) < 20


def test_a_bar_on_a_terminal_redraws_and_a_disabled_bar_draws_nothing(slow_clock):
    tty = Terminal()
    with progress_bar(total=1000, file=tty) as bar:
        for _ in range(1000):
            bar.update(1)
    assert redraws(tty.getvalue()) > 100  # a terminal redraws in place: no limit there
    log = io.StringIO()
    with progress_bar(total=1000, file=log, disable=True) as bar:  # --quiet, progress=False
        for _ in range(1000):
            bar.update(1)
    assert log.getvalue() == ""


# -- the HTML page --------------------------------------------------------------------------------
def test_latencies_are_written_for_people():
    assert [human_ms(v) for v in (1020.4, 184.6, 14.52, 2.414, 0.2413)] == [
        "1,020 ms", "185 ms", "14.5 ms", "2.41 ms", "0.241 ms"]
    svg = histogram([10.0] * 200 + [1020.4, 1500.0], "rerank")
    assert "above" in svg and "1,500 ms" in svg and not re.search(r"\de[+-]\d", svg)


def test_a_stage_named_as_its_type_is_named_once(dataset, monkeypatch):
    html = render_html(run(dataset, monkeypatch, (0.1, 0.1, 0.1)))
    assert "<td>stub_retriever</td>" in html and "stub_retriever <span" not in html
    assert "rerank <span class='muted'>stub_rerank</span>" in html  # a type that differs is still shown


def test_axis_labels_do_not_overlap():
    # six decades of latency: the 1-2-5 labels of every decade cannot all fit in 550 pixels
    svg = latency_strips(["bm25", "rerank"], [[0.02, 0.05, 0.3], [900.0, 4000.0, 9000.0]], "latency")
    labels = [(float(x), s) for x, s in re.findall(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle" '
                                                     r'font-size="10" fill="#555">([^<]+)</text>', svg)]
    assert len(labels) >= 5 and "1 ms" in [s for _, s in labels]
    for (x0, a), (x1, b) in zip(labels, labels[1:]):
        assert x1 - x0 >= (len(a) + len(b)) / 2 * 5.5, f"{a!r} at {x0} overlaps {b!r} at {x1}"


# -- file modes -----------------------------------------------------------------------------------
@pytest.fixture
def umask(monkeypatch):
    """Run under a given umask (set for real, put back after; the module's cached reading forgotten)."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_to(mask: int) -> None:
        os.umask(mask)
        monkeypatch.setattr(atomic, "_umask", [])

    yield set_to
    os.umask(saved)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_report_files_get_the_mode_the_umask_gives(dataset, monkeypatch, tmp_path, umask, mask, mode):
    report = run(dataset, monkeypatch, (0.1, 0.1, 0.1))
    umask(mask)
    save_report(report, tmp_path / "out")
    for name in ("report.json", "report.html", "per_query.csv", "runs/rerank.trec"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == mode, name
    with atomic.atomic_dir(tmp_path / "index") as d:
        (d / "x").write_text("x")
    assert stat.S_IMODE((tmp_path / "index").stat().st_mode) == 0o777 & ~mask


def test_a_caller_may_ask_for_another_mode(tmp_path, umask):
    umask(0o022)
    atomic.write_text(tmp_path / "private", "x", permissions=0o600)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600

"""`stagegraph check-expectations [--dir DIR] [--id ID ...] [--slow]`: run the pinned expectations.

Runs every entry whose dataset is present here (and, without `--slow` or STAGEGRAPH_SLOW=1, only
the fast ones), prints measured against expected figures, and exits 1 when any entry is off by
more than its tolerance, 2 when a file is invalid, 0 otherwise. Skipped entries are listed with why.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from stagegraph.cli.app import Exit
from stagegraph.evaluation.expectations import EXPECTATIONS_DIR, ExpectationError, Outcome, check, load_expectations, skip_reason



def register(sub) -> None:
    p = sub.add_parser("check-expectations", help="check the pinned expected figures (configs/expectations/*.yaml)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=str(EXPECTATIONS_DIR), help="folder of expectation files")
    p.add_argument("--id", action="append", help="only this entry (repeatable)")
    p.add_argument("--slow", action="store_true", help="also run the entries marked cost: slow")
    p.add_argument("--list", action="store_true", help="list the entries and whether they would run, then stop")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    console = Console(width=100)
    entries = load_expectations(Path(args.dir))
    if not entries:
        raise ExpectationError(f"{args.dir}: no pinned expectations found (no *.yaml entries); give --dir a folder of them")
    if args.id:
        unknown = set(args.id) - {e.id for e in entries}
        if unknown:
            raise ExpectationError(f"no expectation with id {', '.join(sorted(unknown))}; ids: {', '.join(e.id for e in entries)}")
        entries = [e for e in entries if e.id in args.id]
    slow = True if args.slow else None
    outcomes: list[Outcome] = []
    for entry in entries:
        reason = skip_reason(entry, slow=slow)
        if reason or args.list:
            status = "skipped" if reason else "listed"
            outcomes.append(Outcome(id=entry.id, dataset=entry.dataset, status=status, reason=reason or "would run"))
            continue
        try:
            outcomes.append(check(entry, work_dir=getattr(args, "work_dir", None),
                                  progress=not getattr(args, "quiet", False)))
        except Exception as exc:  # one broken entry must not hide the others
            outcomes.append(Outcome(id=entry.id, dataset=entry.dataset, status="error", reason=str(exc)))
    console.print(outcome_table(outcomes, entries))
    failed = [o for o in outcomes if o.status in ("failed", "error")]
    for o in failed:
        for line in o.failures or [o.reason]:
            console.print(f"{o.id}: {line}", markup=False, highlight=False)
    return Exit.CHECK_FAILED if failed else Exit.OK


def outcome_table(outcomes: list[Outcome], entries) -> Table:
    by_id = {e.id: e for e in entries}
    table = Table(title="pinned expectations", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name in ("id", "metric", "expected", "measured", "±", "status"):
        table.add_column(name, justify="left" if name in ("id", "metric", "status") else "right",
                         no_wrap=name != "status", max_width=34 if name == "id" else None)
    for o in outcomes:
        entry = by_id[o.id]
        if o.status == "listed":
            for m, pinned in entry.metrics.items():
                table.add_row(o.id, m, f"{pinned.expected:.4f}", "", f"{pinned.tolerance:g}", "would run")
            continue
        if o.status in ("skipped", "error"):
            table.add_row(o.id, "", "", "", "", f"{o.status}: {o.reason}"[:60])
            continue
        for m, pinned in entry.metrics.items():
            value = o.measured.get(m)
            ok = value is not None and abs(value - pinned.expected) <= pinned.tolerance + 1e-12
            shown = "-" if m not in o.measured else "n/a" if value is None else f"{value:.4f}"
            table.add_row(o.id, m, f"{pinned.expected:.4f}", shown,
                          f"{pinned.tolerance:g}", "ok" if ok else "[bold red]OFF[/bold red]")
    return table

"""What the benchmark scripts share: a result table printed as Markdown, ready for the README or a docs page."""

from __future__ import annotations

from collections.abc import Sequence


def print_markdown(head: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")

"""Small inline-SVG charts for the HTML reports, written by hand: no plotting library, no network.

* `grouped_bars`   - horizontal bars, one group per row label (the recall funnel: a group per stage);
* `latency_strips` - one row per stage: every query as a dot, with a box (P25-P75), the median and
                     P95 tick, on a shared log-scale axis so microsecond and second stages fit together;
* `histogram`      - a small linear histogram of one stage's per-query latencies;
* `xy_plot`        - points joined by a line, each labelled (quality vs P95 latency in a sweep).

Every function returns an `<svg>` string; text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
FONT = 'font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="12"'


def _svg(width: float, height: float, body: list[str], label: str) -> str:
    return (
        f'<svg width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{escape(label)}" {FONT}>'
        + "".join(body)
        + "</svg>"
    )


def standalone(svg: str) -> str:
    """The same chart as a file of its own (an .svg needs the SVG namespace; inline HTML does not)."""
    return svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)


def _text(x: float, y: float, s: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{escape(s)}</text>'


def human_ms(v: float) -> str:
    """A latency in milliseconds as people write it: 1,020 ms, 185 ms, 14.5 ms, 2.41 ms, 0.241 ms."""
    a = abs(v)
    digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 1 else 3
    return f"{v:,.{digits}f} ms"


def _label_width(s: str, font_px: float = 10) -> float:
    """A generous estimate of a label's width in pixels (no font metrics at hand: 0.62 em a character)."""
    return len(s) * font_px * 0.62


def spaced_labels(ticks: Sequence[tuple[float, str]], font_px: float = 10, gap: float = 6) -> list[tuple[float, str]]:
    """Of the (x, label) pairs of centred tick labels, given in order of priority, those that fit without
    overlapping one kept before them, left to right (a label left out keeps its grid line)."""
    kept: list[tuple[float, str]] = []
    for x, label in ticks:
        half = _label_width(label, font_px) / 2
        if all(abs(x - kx) >= half + _label_width(k, font_px) / 2 + gap for kx, k in kept):
            kept.append((x, label))
    return sorted(kept)


def _tick(t: float) -> str:
    """A linear axis's tick: 2,500 rather than 2500, 0.25 as it is."""
    return f"{int(t):,}" if float(t).is_integer() and abs(t) < 1e15 else f"{t:g}"


def _fmt_ms(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g} s"
    if v >= 1:
        return f"{v:g} ms"
    return f"{v * 1000:g} µs"


def grouped_bars(
    rows: Sequence[str],
    series: Sequence[str],
    values: Sequence[Sequence[float]],
    title: str,
    max_value: float = 1.0,
    width: int = 720,
) -> str:
    """`values[i][j]` is row i's value for series j; bars are labelled with the value ("n/a" for None)."""
    bar_h, gap, left, right, top = 14, 10, 150, 60, 40
    plot_w = width - left - right
    group_h = max(len(series), 1) * bar_h + gap
    height = top + len(rows) * group_h + 20
    body = [_text(8, 18, title, extra='font-weight="600" font-size="14"')]
    for j, name in enumerate(series):  # legend
        x = left + j * 120
        body.append(f'<rect x="{x}" y="26" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>')
        body.append(_text(x + 14, 35, name))
    scale = plot_w / max(max_value, 1e-12)
    for i, row in enumerate(rows):
        y0 = top + i * group_h + 4
        body.append(_text(left - 8, y0 + group_h / 2, row, "end"))
        for j, _ in enumerate(series):
            y = y0 + j * bar_h
            if values[i][j] is None:  # not applicable: no bar, a label that says so
                body.append(_text(left + 4, y + bar_h - 4, "n/a", extra='font-size="11" fill="#888"'))
                continue
            v = float(values[i][j])
            w = max(v * scale, 0.0)
            body.append(
                f'<rect x="{left}" y="{y:.1f}" width="{w:.1f}" height="{bar_h - 2}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(row)} {escape(series[j])}: {v:.4f}</title></rect>'
            )
            body.append(_text(left + w + 4, y + bar_h - 4, f"{v:.3f}", extra='font-size="11"'))
    body.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - 16}" stroke="#999"/>')
    return _svg(width, height, body, title)


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks 1, 2, 5 x 10^e between lo and hi, for a log axis."""
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0**e
            if lo <= t <= hi:
                ticks.append(t)
    return ticks


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    span = max(hi - lo, 1e-12)
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def latency_strips(rows: Sequence[str], samples: Sequence[Sequence[float]], title: str, width: int = 720) -> str:
    """Per row, each value as a dot plus a P25-P75 box, a median bar and a P95 tick; log x axis."""
    row_h, left, right, top = 34, 150, 20, 34
    kept = [np.asarray(s, dtype=np.float64) for s in samples]
    positive = np.concatenate([s[s > 0] for s in kept]) if kept else np.empty(0)
    lo = float(positive.min()) if positive.size else 0.001
    hi = float(positive.max()) if positive.size else 1.0
    lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(max(hi, lo * 10)))
    plot_w = width - left - right
    height = top + len(rows) * row_h + 34

    def x_of(v: float) -> float:
        return left + plot_w * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    body = [_text(8, 18, title, extra='font-weight="600" font-size="14"')]
    axis_y = top + len(rows) * row_h
    ticks = log_ticks(lo, hi)
    for t in ticks:
        body.append(f'<line x1="{x_of(t):.1f}" y1="{top - 4}" x2="{x_of(t):.1f}" y2="{axis_y}" stroke="#eee"/>')
    # powers of ten first, so a crowded axis keeps 1, 10, 100 and drops the 2s and 5s
    by_priority = sorted(ticks, key=lambda t: not math.log10(t).is_integer())
    for x, label in spaced_labels([(x_of(t), _fmt_ms(t)) for t in by_priority]):
        body.append(_text(x, axis_y + 14, label, "middle", 'font-size="10" fill="#555"'))
    body.append(_text(left + plot_w / 2, axis_y + 28, "per-query latency (log scale)", "middle", 'fill="#555"'))
    rng = np.random.default_rng(0)
    for i, (row, values) in enumerate(zip(rows, kept)):
        yc = top + i * row_h + row_h / 2
        color = PALETTE[i % len(PALETTE)]
        body.append(_text(left - 8, yc + 4, row, "end"))
        if values.size == 0:
            body.append(_text(left + 4, yc + 4, "cached: not timed", extra='fill="#888"'))
            continue
        p25, p50, p75, p95 = np.percentile(values, [25, 50, 75, 95])
        jitter = rng.uniform(-8, 8, size=values.size)
        for v, j in zip(values.tolist(), jitter.tolist()):
            body.append(f'<circle cx="{x_of(v):.1f}" cy="{yc + j:.1f}" r="1.8" fill="{color}" fill-opacity="0.45"/>')
        body.append(
            f'<rect x="{x_of(p25):.1f}" y="{yc - 10:.1f}" width="{max(x_of(p75) - x_of(p25), 1):.1f}" height="20" '
            f'fill="none" stroke="#222"><title>{escape(row)}: P25 {p25:.3f} ms, P75 {p75:.3f} ms</title></rect>'
        )
        body.append(f'<line x1="{x_of(p50):.1f}" y1="{yc - 12:.1f}" x2="{x_of(p50):.1f}" y2="{yc + 12:.1f}" stroke="#222" stroke-width="2"/>')
        body.append(f'<line x1="{x_of(p95):.1f}" y1="{yc - 7:.1f}" x2="{x_of(p95):.1f}" y2="{yc + 7:.1f}" stroke="#C44E52" stroke-width="2"><title>P95 {p95:.3f} ms</title></line>')
    return _svg(width, height, body, title)


def histogram(values: Sequence[float], title: str, bins: int = 24, width: int = 340, color: str = PALETTE[0]) -> str:
    """Counts of per-query latencies in equal-width bins (linear ms axis) up to the P99; the slower
    queries beyond it are counted in the title rather than stretching the axis."""
    v = np.asarray(values, dtype=np.float64)
    left, bottom, top, height = 36, 30, 26, 150
    plot_w, plot_h = width - left - 10, height - top - bottom
    if v.size == 0:
        body = [_text(4, 16, title, extra='font-weight="600"'), _text(left, top + 20, "cached: not timed", extra='fill="#888"')]
        return _svg(width, height, body, title)
    lo, cap = float(v.min()), float(np.percentile(v, 99))
    hi = cap if cap > lo else lo + 1e-3
    beyond = int(np.count_nonzero(v > hi))
    label = title + (f"  (+{beyond} above {human_ms(hi)}, max {human_ms(float(v.max()))})" if beyond else "")
    body = [_text(4, 16, label, extra='font-weight="600"')]
    counts, edges = np.histogram(v[v <= hi], bins=bins, range=(lo, hi))
    peak = max(int(counts.max()), 1)
    bw = plot_w / bins
    for c, e0 in zip(counts.tolist(), edges[:-1].tolist()):
        h = plot_h * c / peak
        x = left + (e0 - edges[0]) / (edges[-1] - edges[0]) * plot_w
        body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" fill="{color}"/>')
    base = top + plot_h
    body.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#999"/>')
    low, high = human_ms(float(edges[0])), human_ms(float(edges[-1]))
    if _label_width(low) + _label_width(high) + 6 <= plot_w:
        body.append(_text(left, base + 14, low, "start", 'font-size="10"'))
    body.append(_text(left + plot_w, base + 14, high, "end", 'font-size="10"'))
    body.append(_text(left - 4, top + 8, str(peak), "end", 'font-size="10"'))
    body.append(_text(left - 4, base, "0", "end", 'font-size="10"'))
    return _svg(width, height, body, title)


def xy_plot(
    series: dict[str, Sequence[tuple[float, float, str]]],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 720,
    height: int = 380,
) -> str:
    """Each series is a list of (x, y, point label), drawn as labelled points joined by a line."""
    left, right, top, bottom = 64, 24, 48, 48
    pts = [p for s in series.values() for p in s]
    xs = np.array([p[0] for p in pts], dtype=np.float64) if pts else np.array([0.0, 1.0])
    ys = np.array([p[1] for p in pts], dtype=np.float64) if pts else np.array([0.0, 1.0])
    x_ticks = nice_ticks(0.0, float(xs.max()) * 1.1 or 1.0)
    x0, x1 = 0.0, max(x_ticks[-1], float(xs.max()) * 1.1) or 1.0
    y_pad = (float(ys.max()) - float(ys.min())) * 0.15 or 0.05
    y_ticks = nice_ticks(max(float(ys.min()) - y_pad, 0.0), float(ys.max()) + y_pad)
    y0, y1 = min(y_ticks[0], float(ys.min())), max(y_ticks[-1], float(ys.max()) + y_pad / 2)
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + pw * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return top + ph * (1 - (y - y0) / (y1 - y0))

    body = [_text(8, 18, title, extra='font-weight="600" font-size="14"')]
    for t in y_ticks:
        body.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#eee"/>')
        body.append(_text(left - 6, py(t) + 4, _tick(t), "end", 'font-size="10"'))
    for t in x_ticks:
        body.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" stroke="#f3f3f3"/>')
    for x, label in spaced_labels([(px(t), _tick(t)) for t in x_ticks]):
        body.append(_text(x, top + ph + 16, label, "middle", 'font-size="10"'))
    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    body.append(_text(left + pw / 2, height - 10, x_label, "middle"))
    body.append(_text(14, top + ph / 2, y_label, "middle", f'transform="rotate(-90 14 {top + ph / 2:.1f})"'))
    for j, (name, points) in enumerate(series.items()):
        color = PALETTE[j % len(PALETTE)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in points)
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y, label in points:
            body.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{color}"><title>{escape(label)}: {y:.4f} at {x:.3f} ms</title></circle>')
            body.append(_text(px(x) + 6, py(y) - 6, label, extra='font-size="11"'))
        lx = left + pw - 160 * (len(series) - j)
        body.append(f'<rect x="{lx}" y="{top - 16}" width="10" height="10" fill="{color}"/>')
        body.append(_text(lx + 14, top - 7, name))
    return _svg(width, height, body, title)

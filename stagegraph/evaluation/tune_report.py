"""What a `tune_rerank` run found, in words, a picture and files: the summary lines, the
quality-vs-P95 frontier (SVG), the HTML page, the CSV and `save`. Reads a `TuneResult`
(`stagegraph.evaluation.tune_result`); measures and decides nothing (that is
`stagegraph.evaluation.tune_rerank`)."""

from __future__ import annotations

import json
import math
import os
from html import escape
from pathlib import Path

from stagegraph import atomic
from stagegraph.evaluation.svg import PALETTE, log_ticks, nice_ticks, standalone
from stagegraph.evaluation.tune_result import RerankStep, TuneResult


def _step_text(s: RerankStep) -> str:
    depth = f"adaptive<= {s.depth} m={s.margin:g}" if s.margin is not None else f"depth {s.depth}"
    return f"{s.label} {s.backend} {depth} -> {s.k}"


def to_csv(r: TuneResult) -> str:
    """Every configuration, one row each."""
    head = "label,kind,ndcg@10,mean_ms,p95_ms,pairs_per_query,pareto,calibrated,stages"
    rows = [head]
    for p in r.points:
        stages = " >> ".join(_step_text(s) for s in p.steps) or "pool only"
        rows.append(f"{json.dumps(p.label)},{p.kind},{p.ndcg:.6f},{p.mean_ms:.3f},{p.p95_ms:.3f},{p.pairs:.2f},"
                    f"{int(p.pareto)},{int(p.calibrated)},{json.dumps(stages)}")
    return "\n".join(rows) + "\n"


def to_html(r: TuneResult) -> str:
    """The report page: findings, the frontier, the backends, every configuration, the recommendation."""
    css = ("body{font:14px system-ui,sans-serif;margin:24px auto;max-width:980px}table{border-collapse:collapse}"
           "th,td{padding:3px 9px;border-bottom:1px solid #eee;text-align:right}th{background:#f6f6f6}"
           "td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:8px}")
    rows = "".join(
        f"<tr><td>{'<b>' if p.pareto else ''}{escape(p.label)}{'</b>' if p.pareto else ''}</td><td>{p.ndcg:.4f}</td>"
        f"<td>{p.mean_ms:.1f}</td><td>{p.p95_ms:.1f}</td><td>{p.pairs:.1f}</td></tr>"
        for p in sorted(r.points, key=lambda p: p.p95_ms)
    )
    back = "".join(
        f"<tr><td>{escape(b.model)} {escape(b.backend)}</td><td>{'yes' if b.supported else 'no'}</td>"
        f"<td>{'' if b.ms_per_query is None else f'{b.ms_per_query:.0f}'}</td>"
        f"<td>{'' if b.ndcg is None else f'{b.ndcg:.4f}'}</td><td>{'' if b.delta is None else f'{b.delta:+.4f}'}</td>"
        f"<td>{'kept' if b.kept else ''}</td><td style='text-align:left'>{escape(b.reason)}</td></tr>"
        for b in r.backends
    )
    lines = "".join(f"<li>{escape(line)}</li>" for line in r.lines)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>tune-rerank {escape(r.dataset)}</title>"
        f"<style>{css}</style></head><body><h1>Reranker configurations under a {r.budget_ms:g} ms P95 budget</h1>"
        f"<p>{escape(r.dataset)} / {escape(r.split)}, {r.queries} queries, online; CPU: {escape(r.cpu)}</p>"
        f"<ul>{lines}</ul>{frontier_svg(r)}"
        "<h2>Backends (calibration queries)</h2><table><thead><tr><th>model, backend</th><th>supported</th><th>ms/query</th>"
        f"<th>nDCG@10</th><th>vs fp32</th><th></th><th>why</th></tr></thead><tbody>{back}</tbody></table>"
        "<h2>Every configuration</h2><table><thead><tr><th>configuration (Pareto in bold)</th><th>nDCG@10</th>"
        f"<th>mean ms</th><th>P95 ms</th><th>pairs/query</th></tr></thead><tbody>{rows}</tbody></table>"
        f"<h2>Recommended pipeline</h2><pre>{escape(r.recommended_yaml)}</pre></body></html>\n"
    )


def save(r: TuneResult, out: str | os.PathLike[str]) -> Path:
    """tune.json, tune.csv, frontier.svg, tune.html and recommended.yaml under `out`, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "tune.json", r.model_dump_json(indent=2))
    atomic.write_text(out / "tune.csv", to_csv(r))
    atomic.write_text(out / "frontier.svg", standalone(frontier_svg(r)))
    atomic.write_text(out / "tune.html", to_html(r))
    if r.recommended_yaml:
        atomic.write_text(out / "recommended.yaml", r.recommended_yaml)
    return out


def summary_lines(r: TuneResult) -> list[str]:
    """The run's findings in plain words."""
    lines = [f"{r.dataset} {r.split}: {r.queries} queries measured online on {r.machine}"
             + (f" (stopped at the time limit: {r.queries} of {r.queries_total}; rerun to continue from the cache)" if r.stopped_early else "")]
    lines.append(f"pool ({r.pool}) alone: nDCG@10 {r.pool_ndcg:.4f}")
    for model, backend in r.auto_picks.items():
        row = next(b for b in r.backends if b.model == model and b.backend == backend)
        lines.append(f"backend for {model}: the auto rule picks {backend} on this CPU "
                     f"({row.ms_per_query:.0f} ms/query at depth {max(r.settings.depths)}, nDCG@10 {row.delta:+.4f} vs fp32 "
                     f"on {min(r.settings.calibration_queries, r.queries)} calibration queries)")
    naive = r.point(r.naive)
    if naive is not None:
        lines.append(f"naive: {naive.label}: nDCG@10 {naive.ndcg:.4f}, mean {naive.mean_ms:.0f} ms, P95 {naive.p95_ms:.0f} ms")
        c = r.near_naive()
        if c is not None:
            lines.append(f"within 0.005 nDCG@10 of naive at <= 25% of its mean time: {c.label}: nDCG@10 {c.ndcg:.4f}, "
                         f"mean {c.mean_ms:.0f} ms ({c.mean_ms / max(naive.mean_ms, 1e-9):.0%} of naive), P95 {c.p95_ms:.0f} ms")
        else:
            lines.append("no configuration is within 0.005 nDCG@10 of naive at <= 25% of its mean time")
    ninety = r.point(r.ninety)
    if ninety is not None:
        lines.append(f"90% of the maximum gain over the pool: {ninety.label}: nDCG@10 {ninety.ndcg:.4f}, P95 {ninety.p95_ms:.0f} ms")
    best = r.point(r.recommended)
    if best is None:
        lines.append(f"no configuration fits a P95 of {r.budget_ms:g} ms, not even the pool alone")
    else:
        lines.append(f"recommended for a {r.budget_ms:g} ms P95 budget: {best.label}: nDCG@10 {best.ndcg:.4f}, "
                     f"mean {best.mean_ms:.0f} ms, P95 {best.p95_ms:.0f} ms")
    verdicts = r.depth_verdicts
    if verdicts:
        top = max(verdicts, key=lambda v: v.gain)
        wins = [v for v in verdicts if v.gain > 0.005]
        cal = [v for v in verdicts if v.calibrated]
        text = (f"per-query depth vs fixed depth at the same mean cost: best gain {top.gain:+.4f} ({top.scorer}, margin {top.margin:g}); "
                f"{len(wins)} of {len(verdicts)} adaptive points beat fixed depth by more than 0.005")
        if cal:
            text += "; calibrated margins: " + ", ".join(f"{v.scorer} {v.gain:+.4f}" for v in cal)
        lines.append(text + (" (adaptive_depth stays off by default)" if not wins else ""))
    for v in r.verifications:
        lines.append(f"verified as a pipeline on {v.queries} queries: {v.label}: nDCG@10 {v.ndcg_measured:.4f} "
                     f"(estimated {v.ndcg_estimated:.4f}), mean {v.mean_ms_measured:.0f} ms (estimated {v.mean_ms_estimated:.0f}), "
                     f"P95 {v.p95_ms_measured:.0f} ms (estimated {v.p95_ms_estimated:.0f})")
    return lines


# --------------------------------------------------------------------------- the picture


def _tick_ms(v: float) -> str:
    return f"{v / 1000:g} s" if v >= 1000 else f"{v:g} ms"


def frontier_svg(r: TuneResult, width: int = 760, height: int = 440) -> str:
    """nDCG@10 against P95 rerank time (log scale): every configuration, the Pareto front joined,
    the 90%-of-maximum-gain point, the recommendation and the budget marked."""
    left, right, top, bottom = 64, 190, 44, 48
    pw, ph = width - left - right, height - top - bottom
    pts = [p for p in r.points if p.kind != "pool"]
    xs = [max(p.p95_ms, 1e-3) for p in pts] + [r.budget_ms]
    lo, hi = min(xs) / 1.5, max(xs) * 1.5
    ys = [p.ndcg for p in r.points]
    ypad = (max(ys) - min(ys)) * 0.08 or 0.01
    yt = nice_ticks(min(ys) - ypad, max(ys) + ypad)
    y0, y1 = min(yt[0], min(ys) - ypad), max(yt[-1], max(ys) + ypad)

    def px(x: float) -> float:
        return left + pw * (math.log10(max(x, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    def py(y: float) -> float:
        return top + ph * (1 - (y - y0) / (y1 - y0))

    def text(x: float, y: float, s: str, anchor: str = "start", extra: str = "") -> str:
        return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{escape(s)}</text>'

    title = f"nDCG@10 vs P95 rerank time: {r.dataset} {r.split}, {r.queries} queries, online"
    body = [text(8, 18, title, extra='font-weight="600" font-size="14"'),
            text(8, 34, r.machine, extra='font-size="11" fill="#555"')]
    for t in yt:
        body.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#eee"/>')
        body.append(text(left - 6, py(t) + 4, f"{t:g}", "end", 'font-size="10"'))
    for t in log_ticks(lo, hi):
        body.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" stroke="#f3f3f3"/>')
        body.append(text(px(t), top + ph + 14, _tick_ms(t), "middle", 'font-size="10"'))
    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    body.append(text(left + pw / 2, height - 10, "P95 rerank time per query (log scale)", "middle"))
    body.append(text(14, top + ph / 2, "nDCG@10", "middle", f'transform="rotate(-90 14 {top + ph / 2:.1f})"'))
    bx = px(r.budget_ms)
    body.append(f'<line x1="{bx:.1f}" y1="{top}" x2="{bx:.1f}" y2="{top + ph}" stroke="#C44E52" stroke-dasharray="5,4"/>')
    body.append(text(bx + 4, top + 12, f"budget {r.budget_ms:g} ms", extra='font-size="11" fill="#C44E52"'))
    body.append(f'<line x1="{left}" y1="{py(r.pool_ndcg):.1f}" x2="{left + pw}" y2="{py(r.pool_ndcg):.1f}" stroke="#888" stroke-dasharray="2,3"/>')
    body.append(text(left + 4, py(r.pool_ndcg) - 4, f"pool alone {r.pool_ndcg:.3f}", extra='font-size="10" fill="#666"'))
    kinds = {"fixed": PALETTE[0], "adaptive": PALETTE[2], "cascade": PALETTE[4]}
    for p in pts:
        color = kinds[p.kind]
        body.append(f'<circle cx="{px(p.p95_ms):.1f}" cy="{py(p.ndcg):.1f}" r="{4 if p.pareto else 2.6}" fill="{color}" '
                    f'fill-opacity="{0.95 if p.pareto else 0.35}"><title>{escape(p.label)}: nDCG@10 {p.ndcg:.4f}, '
                    f'P95 {p.p95_ms:.1f} ms, mean {p.mean_ms:.1f} ms</title></circle>')
    front = sorted((p for p in pts if p.pareto), key=lambda p: p.p95_ms)
    if front:
        path = []
        for a, b in zip(front, front[1:]):
            path += [f"{px(a.p95_ms):.1f},{py(a.ndcg):.1f}", f"{px(b.p95_ms):.1f},{py(a.ndcg):.1f}"]
        path.append(f"{px(front[-1].p95_ms):.1f},{py(front[-1].ndcg):.1f}")
        body.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="#222" stroke-width="1.2"/>')
    marks = [(r.point(r.ninety), "90% of max gain", "#DD8452"), (r.point(r.recommended), "recommended", "#C44E52"),
             (r.point(r.naive), "naive", "#222")]
    for i, (p, name, color) in enumerate(marks):
        if p is None or p.kind == "pool":
            continue
        x, y = px(p.p95_ms), py(p.ndcg)
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="8" fill="none" stroke="{color}" stroke-width="2"/>')
        lx, ly = left + pw + 12, top + 20 + 46 * i
        body.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{lx - 4:.1f}" y2="{ly - 4:.1f}" stroke="{color}" stroke-width="0.8"/>')
        body.append(text(lx, ly, name, extra=f'font-size="11" font-weight="600" fill="{color}"'))
        for j, part in enumerate(_wrap(p.label, 30)[:2]):
            body.append(text(lx, ly + 13 + 12 * j, part, extra='font-size="10"'))
    ly = top + 20 + 46 * 3 + 10
    for j, (kind, color) in enumerate(kinds.items()):
        body.append(f'<circle cx="{left + pw + 16}" cy="{ly + 16 * j - 4}" r="4" fill="{color}"/>')
        body.append(text(left + pw + 26, ly + 16 * j, {"fixed": "fixed depth", "adaptive": "per-query depth",
                                                        "cascade": "cascade"}[kind], extra='font-size="11"'))
    body.append(text(left + pw + 12, ly + 16 * 3 + 4, "large dots: Pareto front", extra='font-size="10" fill="#555"'))
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
            'font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="12">' + "".join(body) + "</svg>")


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])

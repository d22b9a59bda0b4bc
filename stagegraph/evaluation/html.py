"""`report.html`: one self-contained page per evaluation (inline CSS and SVG; no script, font or
image is fetched from anywhere, so it opens offline and can be mailed as one file).

Sections: the summary (dataset, split, mode, queries, warm-up, machine, its CPU count and load at
the start and end of the run, and a warning when other work kept it busy), the per-stage table
(metrics next to P50/P95/P99), the recall funnel (recall@k bars per stage), the latency
distribution of every stage (all queries as dots on a shared log axis, plus a histogram per stage),
what each branch alone added to a pool, and the pipeline config.
"""

from __future__ import annotations

import json
from html import escape

from stagegraph.evaluation.report import PERCENTILE_MIN, Report
from stagegraph.evaluation.svg import PALETTE, grouped_bars, histogram, latency_strips
from stagegraph.evaluation.measures import label_of

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555} table{border-collapse:collapse;margin:8px 0} th,td{padding:4px 10px;text-align:right;border-bottom:1px solid #eee}
th:first-child,td:first-child{text-align:left;white-space:nowrap} th{background:#f6f6f6;font-weight:600} td.best{font-weight:700}
.muted{color:#888} .grid{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #eee;border-radius:6px;padding:6px}
pre{background:#f6f6f6;padding:10px;border-radius:6px;overflow:auto;font-size:12px} .note{color:#555;font-size:13px}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:6px 10px;margin:8px 0}
"""


def _ms(v: float | None) -> str:
    return "–" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}")


def _stage_label(name: str, type_name: str) -> str:
    """The stage's name, and its type beside it only where the two differ (`bm25`, not `bm25 bm25`)."""
    if type_name == name:
        return escape(name)
    return f"{escape(name)} <span class='muted'>{escape(type_name)}</span>"


def _summary(r: Report) -> str:
    m = r.machine
    cpu = escape(f"{m.get('cpu_model', 'unknown CPU')} × {m.get('cpu_count', '?')}")
    return (
        f"<h1>stagegraph report: {escape(r.dataset)} / {escape(r.split)}</h1>"
        f"<p class='meta'>{r.queries} judged queries · mode <b>{escape(r.mode)}</b> · "
        f"{r.warmup_queries} warm-up queries left out · {r.cache_hits} stage(s) from cache · "
        f"{r.missing_queries} judged queries missing from the output · {r.corpus_docs:,} documents "
        f"(fingerprint {escape(r.dataset_fingerprint[:12])})<br>{cpu} · {escape(str(m.get('platform', '')))} · "
        f"{escape(r.created)}{_load(r)}</p>{_busy(r)}"
    )


def _load(r: Report) -> str:
    return "" if r.machine_load is None else f"<br>{escape(r.machine_load.describe())}"


def _busy(r: Report) -> str:
    if r.machine_load is None or not r.machine_load.busy:
        return ""
    return (f"<p class='warn'><b>Busy machine</b>: other work kept its load above {r.machine_load.busy_above:g} "
            f"({escape(r.machine_load.describe())}). These latencies are not comparable with figures measured on a "
            "quiet machine.</p>")


def _table(r: Report) -> str:
    online = r.mode == "online"
    head = "".join(f"<th>{escape(label_of(m))}</th>" for m in r.metrics)
    flagged = r.thin_percentiles() if online else []
    head += "".join(f"<th>{p} ms{'†' if p in flagged else ''}</th>" for p in ("P50", "P95", "P99")) if online else ""
    head += "<th>mean ms</th><th>max ms</th>" if online else ""
    alone = online and any(s.latency_alone_ms for s in r.stages.values())
    head += "<th>alone P50</th><th>alone P95</th>" if alone else ""
    head += "<th>q/s</th><th>queries</th><th>missing</th>"
    best = {m: max((s.metrics.get(m, 0.0) for s in r.stages.values() if m not in s.not_applicable), default=0.0)
            for m in r.metrics}
    rows = []
    for name, s in r.stages.items():
        cells = [f"<td>{_stage_label(name, s.type)}</td>"]
        for m in r.metrics:
            v = s.metrics.get(m)
            if m in s.not_applicable:
                cells.append(f"<td class='muted' title='the stage returns at most {s.limit}'>n/a</td>")
                continue
            cls = " class='best'" if v is not None and v == best[m] and v > 0 else ""
            cells.append(f"<td{cls}>{'–' if v is None else f'{v:.4f}'}</td>")
        if online:
            lat = s.latency_ms
            if s.cache_hit or lat is None:
                cells.append(f"<td colspan='{7 if alone else 5}' class='muted'>cached: not timed</td>")
            else:
                cells += [f"<td>{_ms(x)}</td>" for x in (lat.p50, lat.p95, lat.p99, lat.mean, lat.max)]
                if alone:
                    a = s.latency_alone_ms
                    cells += [f"<td>{_ms(a.p50) if a else '–'}</td>", f"<td>{_ms(a.p95) if a else '–'}</td>"]
        qps = f"{s.throughput_qps:,.1f}" if s.throughput_qps else "–"
        cells += [f"<td>{qps}</td>", f"<td>{s.queries}</td>", f"<td>{s.missing}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    e2e = r.end_to_end
    if online and e2e.latency_ms is not None:
        lat = e2e.latency_ms
        blanks = "<td></td>" * len(r.metrics)
        cells = "".join(f"<td>{_ms(x)}</td>" for x in (lat.p50, lat.p95, lat.p99, lat.mean, lat.max))
        cells += "<td></td><td></td>" if alone else ""
        qps = f"{e2e.throughput_qps:,.1f}" if e2e.throughput_qps else "–"
        rows.append(f"<tr class='muted'><td>end to end</td>{blanks}{cells}<td>{qps}</td><td></td><td></td></tr>")
    notes = []
    if online and r.timed_queries is not None:
        notes.append(f"Percentiles over {r.timed_queries} queries."
                     + (f" † {' and '.join(flagged)} rest on fewer queries than they need "
                        f"({', '.join(f'{p}: {PERCENTILE_MIN[p]}' for p in flagged)}): read them as about the maximum."
                        if flagged else ""))
    if r.cache_hits and online:
        timed = [n for n, s in r.stages.items() if not s.cache_hit]
        notes.append(f"End to end covers {escape(', '.join(timed) or 'no stage')} only: the other stages came from "
                     "the cache and were not timed.")
    note = f"<p class='note'>{' '.join(notes)}</p>" if notes else ""
    return (f"<h2>Stages</h2><table><thead><tr><th>stage</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            f"</table>{note}")


def _funnel(r: Report) -> str:
    recall = [m for m in r.metrics if m.startswith("recall")] or list(r.metrics)
    values = [[None if m in s.not_applicable else s.metrics.get(m, 0.0) for m in recall] for s in r.stages.values()]
    chart = grouped_bars(list(r.stages), [label_of(m) for m in recall], values, "Recall funnel: what each stage keeps")
    return (
        "<h2>Recall funnel</h2><p class='note'>The pool's recall@100 is the ceiling of any reranker "
        "placed after it; n/a: the stage returns fewer documents than the cut-off (truncation, not loss).</p>"
        f"{chart}"
    )


def _latency(r: Report) -> str:
    if r.mode != "online":
        return "<h2>Latency</h2><p class='note'>Batch mode measures throughput, not per-query latency.</p>"
    names = list(r.stages)
    samples = [r.per_query.latency_ms.get(n, []) for n in names]
    cards = []
    for i, (name, values) in enumerate(zip(names, samples)):
        cards.append(f"<div class='card'>{histogram(values, name, color=PALETTE[i % len(PALETTE)])}</div>")
    e2e = r.per_query.latency_ms.get("end_to_end")
    if e2e:
        cards.append(f"<div class='card'>{histogram(e2e, 'end to end', color='#555')}</div>")
        names, samples = names + ["end to end"], samples + [e2e]
    strips = latency_strips(names, samples, "Per-query latency (box P25–P75, bar median, red P95)")
    parts = ["<h2>Latency per query</h2>", strips]
    parts.append(f"<div class='grid'>{''.join(cards)}</div>")
    return "".join(parts)


def _branches(r: Report) -> str:
    rows = []
    for name, s in r.stages.items():
        for b, c in s.branches.items():
            rows.append(
                f"<tr><td>{escape(name)}</td><td>{escape(b)}</td><td>{c.found:.1f}</td>"
                f"<td>{c.unique:.1f}</td><td>{c.unique_relevant:.2f}</td></tr>"
            )
    if not rows:
        return ""
    return (
        "<h2>What each branch adds to a pool</h2><p class='note'>Means per query over the pooled documents.</p>"
        "<table><thead><tr><th>pool</th><th>branch</th><th>found</th><th>found only by it</th>"
        f"<th>relevant, only by it</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _workers(r: Report) -> str:
    if not r.workers:
        return ""
    rows = "".join(
        f"<tr><td>{w.worker}</td><td>{escape(w.node)}</td><td>{w.pid}</td><td>{w.queries}</td><td>{w.shards}</td>"
        f"<td>{w.seconds:.2f}</td></tr>" for w in r.workers
    )
    return (
        f"<h2>Workers ({escape(r.executor)})</h2><p class='note'>The queries were sharded over {len(r.workers)} workers; "
        "a stage's throughput is over the busiest worker's time in it.</p>"
        "<table><thead><tr><th>worker</th><th>node</th><th>pid</th><th>queries</th><th>shards</th><th>seconds</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _config(r: Report) -> str:
    config = json.dumps(r.config, indent=2) if r.config is not None else "(not recorded)"
    versions = ", ".join(f"{k} {v}" for k, v in r.versions.items() if v != "not installed")
    return (
        f"<h2>Pipeline</h2><pre>{escape(config)}</pre>"
        f"<p class='note'>Libraries: {escape(versions)}</p>"
    )


def _losses(r: Report) -> str:
    loss = r.loss
    if loss is None or not loss.missing:
        return ""
    shares = loss.shares()
    chart = grouped_bars(list(shares), [f"share of misses at R@{loss.at}"], [[v] for v in shares.values()],
                         f"Where the {loss.missing} relevant documents missing from {r.output}'s top {loss.at} were lost")
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{n}</td><td>{shares[name]:.0%}</td></tr>" for name, n in loss.by.items())
    return (
        f"<h2>Where answers were lost</h2><p class='note'>For each judged query, every relevant document not in "
        f"{escape(r.output)}'s top {loss.at}, and the step that lost it: never retrieved by any leg, filtered, cut by a "
        "stage that kept fewer documents than its rank, beyond a reranker's depth, or demoted below the top "
        f"{loss.at} (loss.tsv lists each).</p>{chart}<table><thead><tr><th>lost at</th><th>documents</th>"
        f"<th>share</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def render_html(report: Report) -> str:
    body = "".join([_summary(report), _table(report), _funnel(report), _losses(report), _latency(report), _branches(report), _workers(report), _config(report)])
    title = escape(f"stagegraph · {report.dataset} · {report.split}")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{title}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )

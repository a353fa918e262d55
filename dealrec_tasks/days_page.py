"""HTML of the DEALRec view: the list of days and the page of one day, from ``dealrec_tasks.days``' dicts.

Plain server-side HTML (no JavaScript, no assets to serve): the score distributions are inline SVG, the report
figure is an <img> served beside the page. Every value is escaped. Links to Airflow and MLflow open in the top
window, since Airflow shows the view in an iframe.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2rem;color:#1a202c}
h1{font-size:1.4rem;margin:0 0 .6rem} h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;margin:.3rem 0} td,th{border:1px solid #cbd5e0;padding:.25rem .6rem;text-align:right}
td:first-child{white-space:nowrap}
th{background:#edf2f7} td.l,th.l{text-align:left} .muted{color:#718096} .ok{color:#276749} .todo{color:#9c4221}
.empty{padding:1rem;background:#f7fafc;border:1px dashed #a0aec0;max-width:46rem}
.stages span{display:inline-block;margin-right:.4rem;padding:.1rem .45rem;border-radius:.6rem;font-size:.85rem}
.stages .done{background:#c6f6d5} .stages .missing{background:#edf2f7;color:#718096}
img.report{max-width:100%;border:1px solid #cbd5e0} svg{margin-right:1rem}
"""


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return '<span class="muted">-</span>'
    if isinstance(value, float):
        return escape(f"{value:.{digits}f}")
    if isinstance(value, int):
        return escape(f"{value:,}")
    return escape(str(value))


def _number(text: str | None) -> str:
    """A metric recorded as a tag (text): 4 decimals when it is a number, else as is."""
    try:
        return _fmt(float(text)) if text is not None else _fmt(None)
    except ValueError:
        return _fmt(text)


def _stages(stages: dict[str, bool]) -> str:
    return (
        '<span class="stages">'
        + "".join(f'<span class="{"done" if ok else "missing"}">{escape(k)}</span>' for k, ok in stages.items())
        + "</span>"
    )


def days_page(days: list[dict[str, Any]], lake: str) -> str:
    """The list of days, newest first; a clear empty state when the lake has none. The notes of ``days`` (a
    ``days.DayRows``: folders that are not a day, ignored) are shown above the table."""
    head = f'<h1>DEALRec: coresets by day</h1><p class="muted">Lake <code>{escape(lake)}</code></p>'
    head += "".join(f'<p class="muted">{escape(note)}</p>' for note in getattr(days, "notes", ()))
    if not days:
        return _page(
            "DEALRec",
            head + '<div class="empty"><b>No day published yet.</b> Trigger <code>dealrec_daily</code> (or wait for '
            "its daily run): each day it scores the new samples, publishes a coreset and fine-tunes on it. "
            "Days appear here as soon as their first stage is published.</div>",
        )
    rows = []
    for d in days:
        cov = (
            f"{_fmt(d['items_coreset'])} <span class=muted>(random {_fmt(d['items_random'])})</span>"
            if d["items_coreset"] is not None
            else _fmt(None)
        )
        rows.append(
            f'<tr><td class="l"><a href="day/{quote(d["dt"])}/">{escape(d["dt"])}</a></td>'
            f'<td class="l">{escape(d["status"])}</td><td class="l">{_stages(d["stages"])}</td>'
            f"<td>{_fmt(d['selected'])} / {_fmt(d['candidates'])}</td><td class=l>{_fmt(d['strategy'])}</td>"
            f"<td>{_fmt(d['pruned'])}</td><td>{cov}</td><td>{_fmt(d['recall@20'])}</td><td>{_fmt(d['ndcg@20'])}</td>"
            f"<td>{escape(interval_text(d.get('vs_random')))}</td><td class=l>{_fmt(d.get('verdict'))}</td>"
            f"<td class=l>{_fmt(d.get('decision'))}</td></tr>"
        )
    table = (
        "<table><tr><th class=l>day</th><th class=l>status</th><th class=l>stages</th><th>coreset / candidates</th>"
        "<th class=l>strategy</th><th>pruned</th><th>items covered</th><th>recall@20</th><th>ndcg@20</th>"
        "<th>primary − random [95%]</th><th class=l>running verdict</th><th class=l>gate</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return _page("DEALRec", head + table)


def _histogram_svg(name: str, h: dict[str, Any] | None, width: int = 420, height: int = 150) -> str:
    if h is None:
        return f'<div class="empty">No {escape(name)} scores published for this day yet.</div>'
    if not h["all"]:
        return f'<div class="empty">The {escape(name)} scores are empty.</div>'
    top = max(h["all"]) or 1
    bw = width / len(h["all"])
    bars = []
    for i, c in enumerate(h["all"]):
        bh = (height - 20) * c / top
        bars.append(
            f'<rect x="{i * bw:.1f}" y="{height - 20 - bh:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}" fill="#cbd5e0"/>'
        )
        if h["kept"] is not None and h["kept"][i]:
            kh = (height - 20) * h["kept"][i] / top
            bars.append(
                f'<rect x="{i * bw:.1f}" y="{height - 20 - kh:.1f}" width="{bw - 1:.1f}" height="{kh:.1f}" '
                'fill="#dd6b20"/>'
            )
    lo, hi = h["edges"][0], h["edges"][-1]
    label = (
        f'<text x="0" y="{height - 4}" font-size="11">{lo:.3g}</text>'
        f'<text x="{width}" y="{height - 4}" font-size="11" text-anchor="end">{hi:.3g}</text>'
    )
    legend = f"{escape(name)}: {h['n']:,} candidates (grey)" + (", coreset (orange)" if h["kept"] is not None else "")
    return (
        f'<figure style="display:inline-block;margin:0 1rem 0 0"><svg role="img" aria-label="{escape(name)} '
        f'histogram" width="{width}" height="{height}">{"".join(bars)}{label}</svg>'
        f'<figcaption class="muted">{legend}</figcaption></figure>'
    )


def _kv(rows: list[tuple[str, Any]]) -> str:
    return (
        "<table>" + "".join(f'<tr><th class="l">{escape(k)}</th><td>{_fmt(v)}</td></tr>' for k, v in rows) + "</table>"
    )


def day_page(d: dict[str, Any], airflow_url: str = "/") -> str:
    """The page of one day: stages, coreset, coverage against random, figures, scores, arms and the MLflow side."""
    dt = d["dt"]
    body = [f'<p><a href="../">&larr; all days</a></p><h1>DEALRec: day {escape(dt)}</h1>']
    body.append(f"<p><b>{escape(d['status'])}</b> &nbsp; {_stages(d['stages'])}</p>")
    pub = "".join(
        f'<tr><td class="l">{escape(k)}</td><td class="l">{_fmt(v["created_at"]) if v else _fmt(None)}</td>'
        f'<td class="l"><code>{escape(v["uri"]) if v else ""}</code></td></tr>'
        for k, v in d["published"].items()
    )
    body.append("<h2>Published</h2><table><tr><th class=l>stage</th><th class=l>at</th><th class=l>where</th></tr>")
    body.append(pub + "</table>")
    if d.get("samples"):
        s = d["samples"]
        body.append(
            _kv(
                [
                    ("train samples (candidates)", s.get("train")),
                    ("valid / test users", f"{s.get('valid', 0):,} / {s.get('test', 0):,}"),
                    ("rejected log rows (quarantined)", d.get("rejected_rows")),
                ]
            )
        )

    body.append("<h2>Coreset</h2>")
    c = d.get("coreset")
    if c is None:
        body.append('<div class="empty">No coreset published for this day yet (it needs both score sets).</div>')
    else:
        counts, cfg, cov = c.get("counts") or {}, c.get("config") or {}, c.get("coverage") or {}
        groups = counts.get("groups") or {}
        budgets = groups.get("budgets") or []
        body.append(
            _kv(
                [
                    ("strategy", cfg.get("strategy")),
                    ("selected / candidates", f"{counts.get('selected', 0):,} / {counts.get('candidates', 0):,}"),
                    ("lambda, k, hard prune", f"{cfg.get('lam')}, {cfg.get('k')}, {cfg.get('hard_prune')}"),
                    ("pruned before the strata", groups.get("pruned")),
                    (
                        {"stratum": "strata used", "cluster": "clusters used"}.get(groups.get("kind"), "groups used"),
                        sum(1 for b in budgets if b > 0) if budgets else None,
                    ),
                ]
            )
        )
        if cov:
            items, targets = cov.get("items", {}), cov.get("target_items", {})
            body.append(
                "<table><tr><th class=l>coverage</th><th>coreset</th><th>random, same size</th><th>all candidates</th>"
                "</tr>"
                f"<tr><td class=l>distinct items</td><td>{_fmt(items.get('coreset'))}</td>"
                f"<td>{_fmt(items.get('random'))}</td><td>{_fmt(items.get('candidates'))}</td></tr>"
                f"<tr><td class=l>distinct target items</td><td>{_fmt(targets.get('coreset'))}</td>"
                f"<td>{_fmt(targets.get('random'))}</td><td>{_fmt(targets.get('candidates'))}</td></tr></table>"
            )
            ua = cov.get("users_by_activity") or {}
            if ua.get("bins"):
                head = "".join(f"<th>{escape(b)}</th>" for b in ua["bins"])
                rows = "".join(
                    f"<tr><td class=l>{escape(k)}</td>"
                    + "".join(f"<td>{_fmt(v)}</td>" for v in ua.get(k, []))
                    + "</tr>"
                    for k in ("coreset", "random", "candidates")
                )
                body.append(f"<table><tr><th class=l>users by interactions</th>{head}</tr>{rows}</table>")
        if c.get("has_report"):
            body.append(
                f'<h2>Report figure</h2><img class="report" alt="coreset report of {escape(dt)}" src="report.png">'
            )

    body.append("<h2>Score distributions</h2>")
    scores = d.get("scores") or {}
    body.append("".join(_histogram_svg(name, scores.get(name)) for name in ("influence", "effort")))

    body.append("<h2>Fine-tuning</h2>")
    arms = d.get("arms") or []
    if not arms:
        body.append('<div class="empty">Not fine-tuned and evaluated yet for this day.</div>')
    else:
        keys = sorted({k for a in arms for k in a if "@" in k})
        head = "".join(f"<th>{escape(k)}</th>" for k in keys)
        rows = "".join(
            f"<tr><td class=l>{escape(a['arm'])}</td><td>{_fmt(a.get('users'))}</td>"
            + "".join(f"<td>{_fmt(a.get(k))}</td>" for k in keys)
            + "</tr>"
            for a in arms
        )
        body.append(f"<table><tr><th class=l>arm</th><th>test users</th>{head}</tr>{rows}</table>")
    gate = d.get("gate")
    if gate:
        body.append(_gate_section(gate))

    body.append(_mlflow_section(d.get("mlflow"), airflow_url))
    return _page(f"DEALRec {dt}", "".join(body))


def interval_text(interval: dict[str, Any] | None) -> str:
    """``+0.0123 [−0.0040, +0.0286]`` of a paired interval record, or what is missing."""
    if not interval or interval.get("mean") is None:
        return "n/a"
    if interval.get("lower") is None:
        return f"{interval['mean']:+.4f} (unresolved: {interval.get('users', 0)} users)"
    return f"{interval['mean']:+.4f} [{interval['lower']:+.4f}, {interval['upper']:+.4f}]"


def _gate_section(gate: dict[str, Any]) -> str:
    """The gate's decision with its paired test, and the primary arm against random that day and over all days."""
    metric = gate.get("metric", "metric")
    challenger = gate.get("challenger") or {}
    vs_champion = gate.get("challenger_vs_champion")
    rows = [
        ("challenger (declared: the primary arm)", f"{challenger.get('strategy')} v{challenger.get('version')}"),
        ("champion before", gate.get("champion_before")),
        (f"challenger − champion, {metric}, same users, 95%", interval_text(vs_champion)),
        ("p (H0: difference = margin)", None if not vs_champion else vs_champion.get("p")),
        ("margin", gate.get("margin")),
        ("decision", gate.get("decision")),
        ("why", gate.get("reason")),
    ]
    vs_random, running = gate.get("primary_vs_random"), gate.get("running_vs_random")
    if vs_random:
        rows += [
            (f"{challenger.get('strategy')} − random today, {metric}, 95%", interval_text(vs_random)),
            ("users today", vs_random.get("users")),
            (
                f"running estimate over {running.get('days')} day(s), {running.get('observations')} user-days",
                interval_text(running),
            ),  # fmt: skip
            ("verdict", running.get("verdict")),
        ]
    else:
        rows.append(("vs random", "no random arm evaluated on these users"))
    return (
        f"<h2>Gate ({escape(gate.get('test', ''))})</h2>"
        + _kv(rows)
        + ('<img class="report" alt="arms, champion and the lift over random by day" src="arms.png">')
    )


def _link(text: str, url: str | None) -> str:
    return f'<a target="_top" href="{escape(url)}">{escape(text)}</a>' if url else escape(text)


def _mlflow_section(m: dict[str, Any] | None, airflow_url: str) -> str:
    out = ["<h2>MLflow and Airflow</h2>"]
    if m is None:
        return out[0] + '<div class="empty">MLflow not configured for this view.</div>'
    if m.get("error"):
        return out[0] + f'<div class="empty">MLflow unreachable: {escape(m["error"])}</div>'
    runs = m.get("runs") or []
    if not runs:
        out.append('<div class="empty">No MLflow run for this day yet.</div>')
    else:
        rows = []
        for r in runs:
            air = "-"
            if r.get("airflow_dag_id") and r.get("airflow_run_id"):
                url = f"{airflow_url.rstrip('/')}/dags/{quote(r['airflow_dag_id'])}/runs/{quote(r['airflow_run_id'])}"
                air = _link(f"{r['airflow_dag_id']} / {r['airflow_run_id']}", url)
            metrics = ", ".join(
                f"{k} {v:g}" if float(v).is_integer() else f"{k} {v:.4f}" for k, v in r["metrics"].items()
            )
            rows.append(
                f"<tr><td class=l>{escape(r['kind'])}</td><td class=l>{_link(r['run_id'], r.get('url'))}</td>"
                f"<td class=l>{escape(r['status'])}</td><td class=l>{air}</td>"
                f"<td class=l>{escape(metrics or '-')}</td></tr>"
            )
        out.append(
            "<table><tr><th class=l>run</th><th class=l>MLflow run id</th><th class=l>status</th>"
            "<th class=l>Airflow run</th><th class=l>metrics</th></tr>" + "".join(rows) + "</table>"
        )
    versions = m.get("versions") or []
    aliases = m.get("aliases") or {}
    now = ", ".join(f"{k}: version {v}" for k, v in aliases.items() if v is not None) or "no alias set"
    out.append(f"<p>Model <code>{escape(m['model'])}</code>, now {escape(now)}.</p>")
    if versions:
        rows = "".join(
            f"<tr><td class=l>{_link('version ' + str(v['version']), v.get('url'))}</td>"
            f"<td class=l>{_fmt(v['decision'])}</td><td class=l>{_fmt(v['metric'])}</td>"
            f"<td>{_number(v['difference'])}</td><td class=l>{_fmt(v['interval'])}</td>"
            f"<td class=l>{escape(', '.join(v['aliases'])) or '-'}</td><td class=l>{_fmt(v['reason'])}</td></tr>"
            for v in versions
        )
        out.append(
            "<table><tr><th class=l>model version of the day</th><th class=l>decision</th><th class=l>metric</th>"
            "<th>minus champion</th><th class=l>95% interval</th><th class=l>aliases now</th><th class=l>why</th></tr>"
            + rows
            + "</table>"
        )
    else:
        out.append('<div class="empty">No model version registered for this day yet.</div>')
    return "".join(out)

"""Select step: the day's scores -> ``coreset/dt=D/`` (coreset.parquet + report.png, manifest last).

Candidates are the day's ``train`` samples, ordered by sample_id (the order of every score table and of
``train_seqs``), so a selection is a pure function of the inputs and the config, and a rerun is a no-op.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dealrec_tasks.config import parse_dt
from dealrec_tasks.data.samples import TRAIN
from dealrec_tasks.data.schema import CORESET, ITEMS, SAMPLES, SCORES_EFFORT, SCORES_INFLUENCE, SURROGATE, VOCAB
from dealrec_tasks.errors import InputError, PartitionNotFound
from dealrec_tasks.selection import (
    Candidates,
    SelectConfig,
    Selection,
    hard_prune,
    overall_score,
    random_baseline,
)
from dealrec_tasks.selection import select as run_selection
from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.steps.llm import item_titles
from dealrec_tasks.storage import MANIFEST, Lake, join_uri, sha256

CORESET_FILE = "coreset.parquet"
REPORT_FILE = "report.png"
MODEL_NEEDS = ("grand", "el2n", "user_repr")
# Which command publishes each input, for the error message of a missing partition.
PRODUCER = {
    SCORES_INFLUENCE: "dealrec influence + merge-influence",
    SCORES_EFFORT: "dealrec effort + merge-effort",
    SURROGATE: "dealrec surrogate",
    SAMPLES: "dealrec samples",
}

CORESET_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("user_id", pa.string()),
        ("history", pa.list_(pa.int32())),
        ("history_titles", pa.list_(pa.string())),
        ("target", pa.int32()),
        ("target_title", pa.string()),
        ("influence", pa.float64()),
        ("effort", pa.float64()),
        ("overall", pa.float64()),
        ("stratum", pa.int32()),
        ("strategy", pa.string()),
        ("score", pa.float64()),
    ]
)


class _Sources:
    """The input partitions read, with the sha256 of their manifests (the coreset's source snapshot)."""

    def __init__(self, lake: Lake):
        self.lake = lake
        self.entries: dict[str, dict[str, str]] = {}

    def add(self, name: str, dataset: str, dt: str | None) -> None:
        uri = self.lake.partition(dataset, dt)
        digest = sha256(self.lake.storage.read_bytes(join_uri(uri, MANIFEST)))
        self.entries[name] = {"uri": uri, "manifest_sha256": digest}


def _require(lake: Lake, dataset: str, dt: str, strategy: str) -> None:
    if lake.manifest(dataset, dt) is None:
        raise PartitionNotFound(
            f"select strategy={strategy!r} needs {lake.partition(dataset, dt)}, which is not published; "
            f"run `{PRODUCER.get(dataset, 'the step that writes it')} --dt {dt}` first"
        )


def _aligned(lake: Lake, dataset: str, dt: str, name: str, column: str, ids: np.ndarray) -> np.ndarray:
    """``column`` of ``dataset/dt=D/name`` in the order of the candidate ``ids`` [N]; every id exactly once."""
    table = lake.read(dataset, dt, name)
    got = table.column("sample_id").to_numpy()
    values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    order = np.argsort(got, kind="stable")
    got, values = got[order], values[order]
    pos = np.minimum(np.searchsorted(got, ids), max(len(got) - 1, 0))
    found = (got[pos] == ids) if len(got) else np.zeros(len(ids), bool)
    dup = int((np.diff(got) == 0).sum())
    if not found.all() or dup:
        raise InputError(
            f"{lake.partition(dataset, dt)}/{name}: {int((~found).sum())} of the {len(ids)} training samples have "
            f"no {column} score ({dup} duplicate sample_ids); rerun the step that writes it for dt={dt}"
        )
    return values[pos]


def _model_inputs(lake: Lake, dt: str, samples: pa.Table, cfg: SelectConfig, sources: _Sources) -> dict[str, Any]:
    """GraNd / EL2N / user representations of the train rows (ordered by sample_id) from the day's surrogate."""
    from dealrec_tasks.scoring import baselines
    from dealrec_tasks.scoring.influence import negative_set
    from dealrec_tasks.steps.surrogate import load_model, read_samples, source
    from dealrec_tasks.surrogate.batching import train_seqs

    src = source(dt, None)
    model, _ = load_model(lake, src)
    _, n_items = read_samples(lake, src)
    if n_items != model.n_items:
        raise InputError(f"surrogate dt={dt} has {model.n_items} items, the samples' vocab {n_items}; retrain it")
    sources.add("surrogate", SURROGATE, dt)
    seqs = train_seqs(samples, n_items)
    negatives = negative_set(n_items, cfg.negatives, cfg.neg_seed)
    out: dict[str, Any] = {}
    needs = set(cfg.needs)
    if "grand" in needs:
        out["grand"] = baselines.grand_scores(model, seqs, negatives, cfg.block, cfg.batch_size)
    if "el2n" in needs:
        out["el2n"] = baselines.el2n_scores(model, seqs, negatives, cfg.batch_size)
    if "user_repr" in needs:
        out["user_repr"] = baselines.user_representations(model, seqs, cfg.batch_size)
    return out


def _with_titles(lists: pa.ListArray, titles: np.ndarray) -> pa.ListArray:
    """list<int item_idx> -> list<string title>, without a Python loop over the rows."""
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    return pa.ListArray.from_arrays(lists.offsets, pa.array(titles[flat - 1], pa.string()))


def select(lake: Lake, dt: str, cfg: SelectConfig) -> StepResult:
    """Pick the coreset of ``dt`` with ``cfg.strategy`` and publish ``coreset/dt=D/`` (table, report, manifest).

    Refuses, naming the partition, when an input the strategy needs is missing; scores a strategy does not need
    are still copied into the table when they are published (to compare strategies on the same columns).
    """
    parse_dt(dt)
    strategy = cfg.strategy
    needs = set(cfg.needs)
    _require(lake, SAMPLES, dt, strategy)
    if "influence" in needs:
        _require(lake, SCORES_INFLUENCE, dt, strategy)
    if "effort" in needs:
        _require(lake, SCORES_EFFORT, dt, strategy)
    if needs & set(MODEL_NEEDS):
        _require(lake, SURROGATE, dt, strategy)

    sources = _Sources(lake)
    samples = lake.read(SAMPLES, dt, "samples.parquet")
    sources.add("samples", SAMPLES, dt)
    train = samples.filter(pc.equal(samples.column("split"), TRAIN))
    train = train.take(pc.sort_indices(train, [("sample_id", "ascending")]))
    n_cand = train.num_rows
    if n_cand == 0:
        raise InputError(f"{lake.partition(SAMPLES, dt)}: no train samples to select from")
    ids = train.column("sample_id").to_numpy()

    scores: dict[str, np.ndarray | None] = {}
    for key, dataset, file in (
        ("influence", SCORES_INFLUENCE, "influence.parquet"),
        ("effort", SCORES_EFFORT, "effort.parquet"),
    ):
        scores[key] = None
        if lake.manifest(dataset, dt) is not None:
            scores[key] = _aligned(lake, dataset, dt, file, key, ids)
            sources.add(key, dataset, dt)
    history = train.column("history").combine_chunks()
    interactions = pc.list_value_length(history).to_numpy(zero_copy_only=False).astype(np.int64) + 1  # [N]
    extra = _model_inputs(lake, dt, train, cfg, sources) if needs & set(MODEL_NEEDS) else {}
    cands = Candidates(
        n_cand, influence=scores["influence"], effort=scores["effort"], interactions=interactions, **extra
    )
    sel = run_selection(cands, cfg)

    titles = np.asarray(item_titles(lake, dt), dtype=object)
    sources.add("vocab", VOCAB, dt)
    sources.add("items", ITEMS, None)
    overall = None
    if scores["influence"] is not None and scores["effort"] is not None:
        overall = overall_score(scores["influence"], scores["effort"], cfg.lam)
    table = _coreset_table(train, sel, titles, scores, overall, strategy)

    rand = random_baseline(n_cand, len(sel.indices), cfg.seed + 1)
    coverage = _coverage(train, sel.indices, rand, interactions)
    png = _report(sel, cfg, coverage, interactions, dt)
    groups = sel.groups.to_dict() if sel.groups is not None else None
    source_digest = {k: v["manifest_sha256"] for k, v in sorted(sources.entries.items())}
    counts = {"candidates": n_cand, "selected": len(sel.indices)}
    pub = lake.publish(
        CORESET,
        dt,
        {CORESET_FILE: table},
        # Input identity is part of the config: new inputs republish even if the picks happen to be equal.
        config=cfg.to_dict() | {"source_sha256": source_digest},
        extra={
            "strategy": strategy,
            "counts": counts | {"groups": groups},
            "coverage": coverage,
            "source": sources.entries,
        },
        blobs={REPORT_FILE: png},
    )
    summary = counts | {"strategy": strategy}
    if sel.groups is not None:
        summary[{"stratum": "strata_used", "cluster": "clusters_used"}[sel.groups.kind]] = int(
            (sel.groups.budgets > 0).sum()
        )
        if sel.groups.kind == "stratum":
            summary["pruned"] = sel.groups.pruned
    summary["items_covered"] = f"{coverage['items']['coreset']} (random {coverage['items']['random']})"
    uris = {"coreset": pub.uri, "report": join_uri(pub.uri, REPORT_FILE)}
    return StepResult("select", uris, summary, pub.changed)


def _coreset_table(
    train: pa.Table,
    sel: Selection,
    titles: np.ndarray,
    scores: dict[str, np.ndarray | None],
    overall: np.ndarray | None,
    strategy: str,
) -> pa.Table:
    rows = train.take(pa.array(sel.indices))
    hist = rows.column("history").combine_chunks()
    target = rows.column("target").to_numpy().astype(np.int64)
    n = len(sel.indices)

    def pick(values: np.ndarray | None) -> pa.Array:
        return pa.nulls(n, pa.float64()) if values is None else pa.array(values[sel.indices], pa.float64())

    return pa.table(
        {
            "sample_id": rows.column("sample_id"),
            "user_id": rows.column("user_id"),
            "history": hist.cast(pa.list_(pa.int32())),
            "history_titles": _with_titles(hist, titles),
            "target": rows.column("target").cast(pa.int32()),
            "target_title": pa.array(titles[target - 1], pa.string()),
            "influence": pick(scores["influence"]),
            "effort": pick(scores["effort"]),
            "overall": pick(overall),
            "stratum": pa.array(sel.group, pa.int32()),
            "strategy": pa.array([strategy] * n, pa.string()),
            "score": pick(sel.score),
        },
        schema=CORESET_SCHEMA,
    )


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------
ACTIVITY_BINS = np.array([1, 2, 3, 5, 9, 17, 33, 2**62])  # interactions per user: 1, 2, 3-4, 5-8, ...
ACTIVITY_LABELS = ["1", "2", "3-4", "5-8", "9-16", "17-32", "33+"]


def _items(train: pa.Table, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct items of the rows' histories + targets, and distinct targets."""
    sub = train.take(pa.array(rows, pa.int64()))
    hist = pc.list_flatten(sub.column("history")).to_numpy(zero_copy_only=False)
    target = sub.column("target").to_numpy()
    return np.unique(np.concatenate([hist, target])), np.unique(target)


def _coverage(train: pa.Table, chosen: np.ndarray, rand: np.ndarray, interactions: np.ndarray) -> dict[str, Any]:
    """Items and user-activity groups covered by the coreset, a random selection of the same size, and all."""
    everything = np.arange(train.num_rows)
    out: dict[str, Any] = {"items": {}, "target_items": {}, "users_by_activity": {"bins": ACTIVITY_LABELS}}
    for name, rows in (("coreset", chosen), ("random", rand), ("candidates", everything)):
        items, targets = _items(train, rows)
        out["items"][name] = len(items)
        out["target_items"][name] = len(targets)
        hist, _ = np.histogram(interactions[rows], ACTIVITY_BINS)
        out["users_by_activity"][name] = hist.tolist()
    return out


def _report(sel: Selection, cfg: SelectConfig, cov: dict[str, Any], interactions: np.ndarray, dt: str) -> bytes:
    """A PNG: the score distribution with strata edges and per-stratum takes; item and user coverage vs random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    g = sel.groups
    if g is not None and g.kind == "stratum" and sel.score is not None:
        score = sel.score
        kept = np.zeros(len(score), bool)
        kept[hard_prune(score, cfg.hard_prune) if g.kept is None else g.kept] = True
        edges = g.edges
        ax.hist(score[kept], bins=edges, color="0.75", label=f"candidates ({int(kept.sum())})")
        if g.pruned:
            what = "hard-pruned" if g.dropped == "top" else "below the pool"
            ax.hist(score[~kept], bins=30, color="tab:red", alpha=0.6, label=f"{what} ({g.pruned})")
        ax.hist(score[sel.indices], bins=edges, color="tab:blue", label=f"selected ({len(sel.indices)})")
        for e in edges:
            ax.axvline(e, color="0.4", lw=0.3)
        ax.set_yscale("log")
        ax.set_xlabel("selection score (strata edges as thin lines)")
        ax.set_ylabel("samples")
        twin = ax.twinx()
        centres = (edges[:-1] + edges[1:]) / 2
        twin.plot(centres, g.budgets, "o-", color="tab:green", ms=3, lw=1, label="taken per stratum")
        twin.set_ylabel("taken per stratum", color="tab:green")
        twin.set_ylim(bottom=0)
        if len(centres) <= 12:
            for x, b in zip(centres, g.budgets):
                twin.annotate(str(int(b)), (x, b), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
        ax.legend(loc="upper right", fontsize=7)
        ax.set_title(f"{cfg.strategy}: {len(edges) - 1} strata, {int((g.budgets > 0).sum())} used", fontsize=10)
    elif g is not None and g.kind == "cluster":
        x = np.arange(len(g.sizes))
        ax.bar(x - 0.2, g.sizes, 0.4, color="0.7", label="users in cluster")
        ax.bar(x + 0.2, g.budgets, 0.4, color="tab:blue", label="selected")
        ax.set_yscale("log")
        ax.set_xlabel("user cluster (k-means)")
        ax.set_ylabel("samples")
        ax.legend(fontsize=7)
        ax.set_title(f"{cfg.strategy}: {len(g.sizes)} clusters", fontsize=10)
    else:
        values = sel.score if sel.score is not None else interactions.astype(np.float64)
        what = "selection score" if sel.score is not None else "interactions per user"
        bins = np.histogram_bin_edges(values, 50)
        ax.hist(values, bins=bins, color="0.75", label="candidates")
        ax.hist(values[sel.indices], bins=bins, color="tab:blue", label=f"selected ({len(sel.indices)})")
        ax.set_yscale("log")
        ax.set_xlabel(what)
        ax.set_ylabel("samples")
        ax.legend(fontsize=7)
        ax.set_title(f"{cfg.strategy}: no strata", fontsize=10)

    ax = axes[1]
    names = ("coreset", "random", "candidates")
    colours = ("tab:blue", "tab:orange", "0.6")
    for j, key in enumerate(("items", "target_items")):
        for i, (name, colour) in enumerate(zip(names, colours)):
            v = cov[key][name]
            ax.bar(j + (i - 1) * 0.27, v, 0.27, color=colour, label=name if j == 0 else None)
            ax.annotate(
                str(v), (j + (i - 1) * 0.27, v), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7
            )
    ax.set_xticks([0, 1], ["items in histories + targets", "target items"])
    ax.set_ylabel("distinct items")
    ax.set_title(f"item coverage (random: same size, seed {cfg.seed + 1})", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[2]
    x = np.arange(len(ACTIVITY_LABELS))
    for i, (name, colour) in enumerate(zip(names, colours)):
        counts = np.asarray(cov["users_by_activity"][name], dtype=np.float64)
        ax.bar(x + (i - 1) * 0.27, counts / max(counts.sum(), 1), 0.27, color=colour, label=name)
    ax.set_xticks(x, ACTIVITY_LABELS)
    ax.set_xlabel("interactions of the user (history + target)")
    ax.set_ylabel("share of selected users")
    ax.set_title("user coverage by activity", fontsize=10)
    ax.legend(fontsize=7)

    fig.suptitle(f"coreset dt={dt}: {len(sel.indices)} of {len(interactions)} training samples", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()

"""Select step: the day's scores -> ``coreset/dt=D/`` (coreset.parquet + report.png, manifest last).

Candidates are the day's ``train`` samples, ordered by sample_id (the order of every score table and of
``train_seqs``), so a selection is a pure function of the inputs and the config, and a rerun is a no-op.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dealrec_tasks import reports
from dealrec_tasks.catalogue import (
    CORESET,
    ITEMS,
    SAMPLES,
    SCORES_EFFORT,
    SCORES_INFLUENCE,
    SURROGATE,
    VOCAB,
    Source,
    arm_dataset,
    arm_of,
    imported,
    source,
)
from dealrec_tasks.catalogue import writer as writer_of
from dealrec_tasks.config import Day
from dealrec_tasks.data.samples import TRAIN
from dealrec_tasks.data.schema import CORESET_SCHEMA
from dealrec_tasks.errors import InputError, PartitionNotFound
from dealrec_tasks.selection import Candidates, SelectConfig, Selection, overall_score, random_baseline
from dealrec_tasks.selection import select as run_selection
from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.steps.readers import checked_samples, item_titles, load_model
from dealrec_tasks.storage import MANIFEST, Lake, join_uri, sha256

CORESET_FILE = "coreset.parquet"
REPORT_FILE = "report.png"
MODEL_NEEDS = ("grand", "el2n", "user_repr")
SCORES = (("influence", SCORES_INFLUENCE, "influence.parquet"), ("effort", SCORES_EFFORT, "effort.parquet"))


def _sources(lake: Lake, src: Source, cfg: SelectConfig) -> dict[str, dict[str, str]]:
    """The input partitions a selection reads, each with the sha256 of its manifest (the coreset's source
    snapshot and its inputs' identity). Refuses, naming the partition and the command that writes it, when one
    the strategy needs is missing; scores it does not need are read (and listed) when they are published."""
    needs, dt = set(cfg.needs), src.dt
    wanted = [("samples", src.path(SAMPLES), dt, True)]
    wanted += [(key, src.path(dataset), dt, key in needs) for key, dataset, _ in SCORES]
    wanted += [("surrogate", src.path(SURROGATE), dt, True)] if needs & set(MODEL_NEEDS) else []
    if src.dataset:  # an imported dataset's vocab and catalogue are its own
        wanted += [("dataset", imported(src.dataset), None, True)]
    else:
        wanted += [("vocab", VOCAB, dt, True), ("items", ITEMS, None, True)]
    where = f"--dt {dt}" if dt else f"--dataset {src.dataset}"
    out = {}
    for name, dataset, day, required in wanted:
        uri = lake.partition(dataset, day)
        if not lake.storage.exists(join_uri(uri, MANIFEST)):
            if required:
                raise PartitionNotFound(
                    f"select strategy={cfg.strategy!r} needs {uri}, which is not published; "
                    f"run `{writer_of(dataset)} {where}` first"
                )
            continue
        out[name] = {"uri": uri, "manifest_sha256": sha256(lake.storage.read_bytes(join_uri(uri, MANIFEST)))}
    return out


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


def _model_inputs(lake: Lake, src: Source, samples: pa.Table, cfg: SelectConfig) -> dict[str, Any]:
    """GraNd / EL2N / user representations of the train rows (ordered by sample_id) from the source's surrogate."""
    from dealrec_tasks.scoring import baselines
    from dealrec_tasks.scoring.influence import negative_set
    from dealrec_tasks.surrogate.batching import train_seqs

    model, _ = load_model(lake, src)
    n_items = model.n_items
    checked_samples(lake, src, n_items)
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


def select(
    lake: Lake, dt: str | None, cfg: SelectConfig, control: bool = False, *, dataset: str | None = None
) -> StepResult:
    """Pick the coreset of ``dt`` with ``cfg.strategy`` and publish ``coreset/dt=D/`` (table, report, manifest), or
    ``coreset/arm=<strategy>/dt=D/`` for a ``control`` arm (a coreset measured beside the primary one).

    Refuses, naming the partition, when an input the strategy needs is missing; scores a strategy does not need
    are still copied into the table when they are published (to compare strategies on the same columns). A no-op
    when the coreset is published with ``cfg`` from the same input partitions (their manifests' checksums).
    """
    src = source(dt, dataset)
    dt = src.dt
    sources = _sources(lake, src, cfg)
    inputs = {k: v["manifest_sha256"] for k, v in sorted(sources.items())}
    out = arm_dataset(src.path(CORESET), cfg.strategy if control else None)
    uris = {"coreset": lake.partition(out, dt), "report": join_uri(lake.partition(out, dt), REPORT_FILE)}
    done = lake.current(out, dt, cfg.to_dict(), inputs)
    if done is not None:
        return StepResult("select", uris, done.get("summary", done["counts"]), False)

    train = _candidates(lake, src)
    n_cand = train.num_rows
    scores = _scores(lake, src, train.column("sample_id").to_numpy(), sources)
    history = train.column("history").combine_chunks()
    interactions = pc.list_value_length(history).to_numpy(zero_copy_only=False).astype(np.int64) + 1  # [N]
    extra = _model_inputs(lake, src, train, cfg) if set(cfg.needs) & set(MODEL_NEEDS) else {}
    sel = run_selection(Candidates(n_cand, interactions=interactions, **scores, **extra), cfg)

    titles = np.asarray(item_titles(lake, src), dtype=object)
    table = _coreset_table(train, sel, titles, scores, _overall(scores, cfg.lam), cfg.strategy)
    rand = random_baseline(n_cand, len(sel.indices), cfg.seed + 1)
    coverage = reports.coverage(train, sel.indices, rand, interactions)
    png = reports.coreset_report_png(sel, cfg, coverage, interactions, dt or f"dataset={dataset}")

    counts = {"candidates": n_cand, "selected": len(sel.indices)}
    groups = sel.groups.to_dict() if sel.groups is not None else None
    summary = _summary(counts, cfg.strategy, sel, coverage)
    pub = lake.publish(
        out,
        dt,
        {CORESET_FILE: table},
        config=cfg.to_dict(),
        inputs=inputs,  # new inputs republish even if the picks happen to be equal
        extra={
            "strategy": cfg.strategy,
            "counts": counts | {"groups": groups},
            "summary": summary,
            "coverage": coverage,
            "source": sources,
        },
        blobs={REPORT_FILE: png},
    )
    return StepResult("select", uris, summary, pub.changed)


def published_arms(lake: Lake, dt: str) -> list[dict[str, str]]:
    """The day's published coresets as arms, the primary one (``coreset/dt=D/``) first: ``[{"strategy", "coreset"},
    ...]``; refused by name when the day has none."""
    dt = Day(dt)
    found = []
    if lake.manifest(CORESET, dt) is not None:
        found.append({"strategy": lake.require_manifest(CORESET, dt).get("strategy", ""), "coreset": CORESET})
    for name in lake.storage.list_dir(lake.uri(CORESET)):
        arm = arm_of(f"{CORESET}/{name}")
        if arm is not None and lake.manifest(arm_dataset(CORESET, arm), dt) is not None:
            found.append({"strategy": arm, "coreset": arm_dataset(CORESET, arm)})
    if not found:
        raise InputError(f"{lake.partition(CORESET, dt)}: no published coreset for dt={dt}; run dealrec_daily first")
    return [{"strategy": a["strategy"], "coreset": lake.partition(a["coreset"], dt)} for a in found]


def _candidates(lake: Lake, src: Source) -> pa.Table:
    """The source's train samples ordered by sample_id: the row order of every score array and of the selection."""
    samples = lake.read(src.path(SAMPLES), src.dt, "samples.parquet")
    train = samples.filter(pc.equal(samples.column("split"), TRAIN))
    train = train.take(pc.sort_indices(train, [("sample_id", "ascending")]))
    if train.num_rows == 0:
        raise InputError(f"{lake.partition(src.path(SAMPLES), src.dt)}: no train samples to select from")
    return train


def _scores(lake: Lake, src: Source, ids: np.ndarray, sources: dict) -> dict[str, np.ndarray | None]:
    """Influence and effort aligned to the candidate ``ids``; None when not published (a strategy may not need it)."""
    return {
        key: _aligned(lake, src.path(ds), src.dt, file, key, ids) if key in sources else None
        for key, ds, file in SCORES
    }


def _overall(scores: dict[str, np.ndarray | None], lam: float) -> np.ndarray | None:
    """DEALRec's overall score for the table's column whenever both scores are published, whatever the strategy."""
    if scores["influence"] is None or scores["effort"] is None:
        return None
    return overall_score(scores["influence"], scores["effort"], lam)


def _summary(counts: dict[str, int], strategy: str, sel: Selection, coverage: dict[str, Any]) -> dict[str, Any]:
    """The StepResult counts: sizes, groups used (and pruned), item coverage against the random baseline."""
    summary: dict[str, Any] = counts | {"strategy": strategy}
    if sel.groups is not None:
        summary[{"stratum": "strata_used", "cluster": "clusters_used"}[sel.groups.kind]] = int(
            (sel.groups.budgets > 0).sum()
        )
        if sel.groups.kind == "stratum":
            summary["pruned"] = sel.groups.pruned
    summary["items_covered"] = f"{coverage['items']['coreset']} (random {coverage['items']['random']})"
    return summary


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

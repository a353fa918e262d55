"""LLM steps: tiny model, effort scores (sharded), LoRA fine-tuning on a coreset, grounded evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dealrec_tasks.catalogue import (
    ADAPTERS,
    CORESET,
    EVALUATION,
    ITEMS,
    SAMPLES,
    SCORES_EFFORT,
    SEQUENCES,
    Source,
    arm_dataset,
    arm_of,
    effort_cache_delta,
    effort_cache_snapshot,
    effort_shard,
    imported,
    source,
    version_evaluation,
)
from dealrec_tasks.config import Day
from dealrec_tasks.data.samples import TEST, TRAIN, VALID
from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.finite import check_scores
from dealrec_tasks.llm.config import (
    EffortConfig,
    EvalConfig,
    FinetuneConfig,
    LoRAConfig,
    TinyLLMConfig,
    check_base_model,
    check_max_users,
)
from dealrec_tasks.llm.prompts import EncodedPrompt, PromptTemplate, encode
from dealrec_tasks.progress import progress
from dealrec_tasks.sharding import check_shard_count, shard_rows
from dealrec_tasks.steps.common import StepResult, merge_shards
from dealrec_tasks.steps.readers import domain_of, item_titles, read_sequences, titles_sha256
from dealrec_tasks.storage import MANIFEST, Lake, join_uri

ADAPTER_DIR = "adapter"  # the local copy's folder name (MLflow keeps it in the logged model)
SCORED_ADAPTER = "scored_adapter.json"  # in an evaluation: checksums of the adapter files it scored
PER_USER = "per_user.parquet"  # in an evaluation: each scored user's metrics, what the gate pairs


def encode_rows(
    rows: list[dict], titles: list[str], tokenizer, template: PromptTemplate, cutoff: int, with_target: bool = True
) -> list[EncodedPrompt]:
    """Prompts of sample rows (history item indices -> titles, target title as the response)."""
    return [
        encode(
            tokenizer,
            template,
            [titles[i - 1] for i in r["history"]],
            titles[r["target"] - 1] if with_target else None,
            cutoff,
        )
        for r in progress(rows, desc="encoding prompts", unit="sample")
    ]


def _split(samples: pa.Table, split: str) -> list[dict]:
    return [r for r in samples.to_pylist() if r["split"] == split]


def pretrain_corpus(lake: Lake, dt: str, last_day: str):
    """Users' item sequences of the days up to ``last_day`` (from ``dt``'s cumulative sequences), titled by
    ``dt``'s vocab: the embedded model's pretraining interactions."""
    from dealrec_tasks.data.samples import time_split
    from dealrec_tasks.llm.tiny import PretrainCorpus

    split = time_split(read_sequences(lake, dt)[0], last_day, 0, 0)
    sequences = [s for s in split.column("train").to_pylist() if s]
    return PretrainCorpus(item_titles(lake, dt), sequences, last_day)


def _dataset_corpus(lake: Lake, name: str):
    """An imported dataset's training sequences (its own split: never a validation or test item), titled by its
    vocab: what the embedded model pretrains on for that dataset."""
    from dealrec_tasks.llm.tiny import PretrainCorpus

    seqs = lake.read(imported(name), None, "sequences")
    sequences = [s for s in seqs.column("train").to_pylist() if s]
    return PretrainCorpus(item_titles(lake, Source(None, name)), sequences, f"dataset={name} train split")


def tiny_llm(
    lake: Lake,
    out_dir: str,
    cfg: TinyLLMConfig,
    dt: str | None = None,
    rebuild: bool = False,
    *,
    dataset: str | None = None,
) -> StepResult:
    """Build (or reuse) the embedded default model for day ``dt`` (default: the last ingested day), or for the
    imported ``dataset``.

    The tokenizer learns the catalogue's titles; pretraining uses them and the interactions of the days up to
    ``dt - corpus_gap_days`` (none of ``dt``'s or a later day's validation and test items; for a dataset: its
    training split). A model built for an earlier day is reused for later ones: the base model stays the same every
    day, as a downloaded one would.
    """
    from dealrec_tasks.llm.tiny import build_tiny_llm

    if dataset is not None:
        if dt is not None:
            raise InputError("tiny-llm: give one of dt (the daily lake) or dataset (an imported dataset)")
        src = source(None, dataset)
        cfg = dataclasses.replace(cfg, domain=domain_of(lake, src, cfg.domain))
        titles = [t or "" for t in lake.read(imported(dataset), None, "items").column("title").to_pylist()]
        corpus, last_day = _dataset_corpus(lake, dataset), f"dataset={dataset}"
    else:
        days = lake.partitions(SEQUENCES)
        if dt is not None:
            dt = Day(dt)
            if dt not in days:
                raise InputError(f"tiny-llm dt={dt}: no sequences/dt={dt} in {lake.uri(SEQUENCES)} (ingest it first)")
        day = dt or (days[-1] if days else None)
        cfg = dataclasses.replace(cfg, domain=domain_of(lake, Source(day), cfg.domain))
        last_day = None if day is None else Day(day).minus(cfg.corpus_gap_days)
        titles = [t or "" for t in lake.read(ITEMS, None, "items.parquet").column("title").to_pylist()]
        corpus = pretrain_corpus(lake, day, last_day) if day is not None else None
    info = build_tiny_llm(out_dir, titles, cfg, rebuild=rebuild, corpus=corpus, latest_corpus_day=last_day)
    counts = {"parameters": info["parameters"], "prefix_tokens": info["prefix_tokens"], "reused": info["reused"]}
    built = info.get("corpus", {})
    counts |= {"corpus_last_day": built.get("last_day"), "corpus_users": built.get("users")}
    notes = []
    run = info.get("pretraining") or {}
    if run:
        counts |= {"pretrain_steps": f"{run['steps_done']}/{run['steps_budget']}", "stopped_by": run["stopped_by"]}
        counts["pretrain_loss"] = f"{run['loss_first_50']:.2f} -> {run['loss_last_50']:.2f}"
        if run["stopped_by"] == "time" and not info["reused"]:
            notes.append(
                f"pretraining stopped at its time limit ({cfg.pretrain_seconds:g} s) after {run['steps_done']} of "
                f"{run['steps_budget']} steps: the model is less trained than its config asks "
                "(a busy CPU; raise pretrain_seconds or rebuild when the machine is free)"
            )
    return StepResult("tiny-llm", {"model": str(Path(out_dir).resolve())}, counts, not info["reused"], notes)


def base_model_dir(base_model: str | None) -> str:
    """The LLM directory the LLM steps load: ``base_model`` when given (a local Hugging Face directory), else (None
    or "") the embedded model shipped in the package, verified against its manifest (``llm/shipped.py``). A model
    built for another catalogue (``dealrec tiny-llm``) is given as ``base_model``."""
    if check_base_model(base_model):  # a pasted newline or a NUL is refused before the path is used
        path = Path(base_model)
        if not path.is_dir():  # '/etc/passwd', '/dev/zero', a typo
            raise ConfigError(f"base_model={base_model!r}: not a local Hugging Face model directory (no directory)")
        if not (path / "config.json").is_file():  # '/', a folder of something else
            raise ConfigError(f"base_model={base_model!r}: not a local Hugging Face model directory (no config.json)")
        return str(path.resolve())
    from dealrec_tasks.llm.shipped import shipped_model_dir

    return shipped_model_dir()


def effort(
    lake: Lake,
    dt: str | None,
    model_dir: str,
    cfg: EffortConfig,
    lora: LoRAConfig,
    shard: tuple[int, int] = (0, 1),
    *,
    dataset: str | None = None,
    use_cache: bool = True,
) -> StepResult:
    """Effort scores of shard i/n of the training samples at ``dt`` (or of an imported ``dataset``) ->
    ``effort/dt=D/shard=i-of-n/``.

    Only prompts never scored before are scored: the others come from the effort cache (by prompt digest, for this
    base model and these settings; ``use_cache=False`` scores every one). A user's prompt only changes when the
    user has new interactions, so a day pays for its active users, not for the lake's age. The new scores go to
    the shard's cache delta, which ``merge_effort`` compacts into the cache.

    A no-op without recomputing when the shard is published for the same config, model and inputs (the checksums of
    the samples, vocab and catalogue files: ``_day_inputs``): a retry or a rerun then costs no GPU time, and float
    noise between two computations (seen under heavy CPU load) cannot republish the scores and, through them, the
    coreset.
    """
    from dealrec_tasks.llm.effort import EffortScorer, attach_lora, cache_key, prompt_digest, tokenizer_fingerprint
    from dealrec_tasks.llm.tiny import check_model_dir, load

    src = source(dt, dataset)  # first: a crafted dt is refused before anything is read or loaded
    cfg = dataclasses.replace(cfg, domain=domain_of(lake, src, cfg.domain))  # a bad domain: before the model
    model_dir = str(Path(model_dir).resolve())
    check_model_dir(model_dir)
    inputs = _day_inputs(lake, src, model_dir)
    config = cfg.to_dict() | {"lora": lora.to_dict(), "model_dir": model_dir}
    published = lake.current(effort_shard(src, shard), None, config, inputs)
    if published is not None:
        counts = {"samples": published.get("counts", {}).get("rows"), "reused": True}
        return StepResult("effort", {"effort": lake.partition(effort_shard(src, shard))}, counts, False)
    train = _split(lake.read(src.path(SAMPLES), src.dt, "samples.parquet"), TRAIN)
    n_train = len(train)
    train = [train[i] for i in shard_rows(n_train, shard)]
    titles = item_titles(lake, src)
    key = cache_key(inputs["model_fingerprint"], tokenizer_fingerprint(model_dir), cfg, lora.to_dict())
    digests = [prompt_digest([titles[i - 1] for i in r["history"]], titles[r["target"] - 1]) for r in train]
    cached = _cached_efforts(lake, key) if use_cache else {}
    todo = [i for i, d in enumerate(digests) if d not in cached]
    tokenizer, model = load(model_dir)
    # Only the prompts the cache lacks are tokenized and scored.
    prompts = encode_rows([train[i] for i in todo], titles, tokenizer, PromptTemplate(cfg.domain), cfg.cutoff_len)
    scorer = EffortScorer(attach_lora(model, lora, seed=cfg.seed), tokenizer.pad_token_id, cfg)
    fresh = scorer.score(prompts, desc=f"effort {shard[0]}/{shard[1]}") if todo else []
    new = dict(zip((digests[i] for i in todo), (float(v) for v in fresh)))
    scores = np.asarray([new[d] if d in new else cached[d] for d in digests], dtype=np.float64)
    # Before anything is published, the cache delta included: NaN or all-equal efforts rank nothing.
    check_scores(
        scores,
        f"effort {src.label} shard {shard[0]}/{shard[1]} (LoRA alpha={lora.alpha}, r={lora.r}, params {cfg.params})",
        "check the LoRA settings and the base model",
        distinct_inputs=len(set(digests)),
    )
    delta = effort_cache_delta(key, src, shard)
    if new:
        lake.publish(delta, None, {"effort.parquet": _digest_table(new)}, config={"key": key})
    table = pa.table(
        {
            "sample_id": pa.array([r["sample_id"] for r in train], pa.int64()),
            "effort": pa.array(scores, pa.float64()),
        }
    )
    pub = lake.publish(
        effort_shard(src, shard),
        None,
        {"effort.parquet": table},
        config=config,
        inputs=inputs,
        extra={
            "source": {"samples": lake.partition(src.path(SAMPLES), src.dt)},
            "counts": {"train_samples": n_train, "rows": len(train), "scored": len(todo)},
            "effort_cache": {"key": key, "delta": delta if new else None},
        },
    )
    mean = float(np.mean(scores)) if len(scores) else 0.0
    counts = {"samples": len(train), "scored": len(todo), "from_cache": len(train) - len(todo)}
    counts |= {"shared_prefix": scorer.use_prefix, "mean_effort": round(mean, 6)}
    return StepResult("effort", {"effort": pub.uri}, counts, pub.changed)


def _digest_table(scores: dict[str, float]) -> pa.Table:
    keys = sorted(scores)
    values = pa.array([scores[k] for k in keys], pa.float64())
    return pa.table({"prompt": pa.array(keys, pa.string()), "effort": values})


def _cached_efforts(lake: Lake, key: str) -> dict[str, float]:
    """The compacted effort cache of ``key`` (prompt digest -> score); empty when none is published."""
    if lake.manifest(effort_cache_snapshot(key)) is None:
        return {}
    table = lake.read(effort_cache_snapshot(key), None, "effort.parquet")
    return dict(zip(table.column("prompt").to_pylist(), table.column("effort").to_pylist()))


def _compact_effort_cache(lake: Lake, shard_manifests: list[dict]) -> int:
    """Fold the shards' new scores into their cache's snapshot (one writer: the merge); returns how many it added.
    A retried merge adds nothing twice (the union is a set), and a day whose merge never ran only costs misses."""
    found = [m.get("effort_cache") or {} for m in shard_manifests]
    keys = {f["key"] for f in found if f.get("key")}
    deltas = [f["delta"] for f in found if f.get("delta")]
    if len(keys) != 1 or not deltas:
        return 0
    (key,) = keys
    cache = _cached_efforts(lake, key)
    before = len(cache)
    for delta in deltas:
        if lake.manifest(delta) is not None:
            table = lake.read(delta, None, "effort.parquet")
            cache.update(zip(table.column("prompt").to_pylist(), table.column("effort").to_pylist()))
    if len(cache) > before:
        lake.publish(effort_cache_snapshot(key), None, {"effort.parquet": _digest_table(cache)}, config={"key": key})
    return len(cache) - before


def _effort_part(dt: str, shard: tuple[int, int]) -> str:
    return effort_shard(Source(Day(dt)), shard)


def _checked_effort(table: pa.Table, src: Source) -> pa.Table:
    """The merged shards, refused when their effort is not finite or the same for every row (shards published
    before the effort step refused such scores)."""
    check_scores(table.column("effort").to_numpy(), f"merged effort {src.label}", "rescore it (dealrec effort)")
    return table


def merge_effort(lake: Lake, dt: str | None, n: int, *, dataset: str | None = None) -> StepResult:
    """One ``scores_effort/dt=D/effort.parquet`` from the n shards (every training sample exactly once); refused
    when the merged effort is not finite or all equal."""
    src = source(dt, dataset)
    check_shard_count(n)
    parts = [effort_shard(src, (i, n)) for i in range(n)]
    pub, table, _ = merge_shards(
        lake, parts, "effort.parquet", src.path(SCORES_EFFORT), src.dt, finish=lambda t: _checked_effort(t, src)
    )
    added = _compact_effort_cache(lake, [lake.require_manifest(p) for p in parts])
    counts = {"shards": n, "samples": table.num_rows, "cache_added": added}
    return StepResult("merge-effort", {"effort": pub.uri}, counts, pub.changed)


def _training_source(lake: Lake, src: Source, from_samples: int, coreset: str | None) -> tuple[str, str | None, str]:
    """Where the fine-tuning rows come from: (dataset, day, identity). The coreset ``coreset`` (a partition URI,
    e.g. the one the asset event announced; default: the source's) when published, identified by its file's
    checksum; otherwise (``from_samples`` > 0) that many random training samples of the source."""
    dataset, day = lake.locate(coreset) if coreset else (src.path(CORESET), src.dt)
    if lake.manifest(dataset, day) is not None:
        return dataset, day, lake.file_sha256(dataset, day, "coreset.parquet")
    if coreset or from_samples <= 0:
        raise InputError(
            f"{lake.partition(dataset, day)}: no published coreset; run `dealrec select` first, "
            "or pass --from-samples N to fine-tune on N random training samples"
        )
    samples = lake.file_sha256(src.path(SAMPLES), src.dt, "samples.parquet")
    return src.path(SAMPLES), src.dt, f"random {from_samples} of {samples}"


def training_rows(
    lake: Lake,
    dt: str | None,
    from_samples: int,
    seed: int,
    coreset: str | None = None,
    *,
    dataset: str | None = None,
) -> tuple[list[dict], str]:
    """The rows ``_training_source`` names, and a description of where they come from."""
    src = source(dt, dataset)
    path, day, _ = _training_source(lake, src, from_samples, coreset)
    if path != src.path(SAMPLES):
        return lake.read(path, day, "coreset.parquet").to_pylist(), lake.partition(path, day)
    train = _split(lake.read(path, day, "samples.parquet"), TRAIN)
    pick = np.random.default_rng(seed).choice(len(train), size=min(from_samples, len(train)), replace=False)
    return [train[i] for i in sorted(pick)], f"{lake.partition(path, day)} (random {len(pick)})"


def _day_inputs(lake: Lake, src: Source, model_dir: str) -> dict[str, str]:
    """Identity of what every LLM step reads besides its own input: the samples, the titles (vocab and catalogue)
    and the base model."""
    from dealrec_tasks.llm.evaluate import model_fingerprint

    samples = lake.file_sha256(src.path(SAMPLES), src.dt, "samples.parquet")
    return {"samples": samples} | titles_sha256(lake, src) | {"model_fingerprint": model_fingerprint(model_dir)}


def finetune(
    lake: Lake,
    dt: str,
    model_dir: str,
    cfg: FinetuneConfig,
    lora: LoRAConfig,
    work_dir: str,
    from_samples: int = 0,
    max_valid: int = 256,
    coreset: str | None = None,
    *,
    dataset: str | None = None,
) -> StepResult:
    """LoRA fine-tuning on the coreset at ``dt`` (or of an imported ``dataset``; or the partition URI ``coreset``);
    the best adapter is published to ``adapters/dt=D/``. A no-op when published with this config from the same rows,
    samples, titles and base model.

    ``work_dir`` keeps the per-epoch checkpoints, so a retried task resumes instead of starting over; checkpoints
    of other inputs (a republished coreset, another base model or settings) are cleared, never resumed.
    """
    from dealrec_tasks.llm import finetune as ft
    from dealrec_tasks.llm.evaluate import model_fingerprint
    from dealrec_tasks.llm.tiny import load

    src = source(dt, dataset)  # the day also names the checkpoint folder under work_dir
    cfg = dataclasses.replace(cfg, domain=domain_of(lake, src, cfg.domain))
    cfg, lora, preset = ft.resolve_preset(model_dir, cfg, lora)
    config = cfg.to_dict() | {"lora": lora.to_dict()}
    rows_from, _, rows_id = _training_source(lake, src, from_samples, coreset)
    arm = arm_of(rows_from)  # a control arm's coreset gives a control arm's adapter
    out = arm_dataset(src.path(ADAPTERS), arm)
    inputs = _day_inputs(lake, src, model_dir) | {"training": rows_id}
    done = lake.current(out, src.dt, config, inputs)
    if done is not None:  # also on a worker without the checkpoints of the run that published it
        metrics = done.get("metrics", {})
        counts = {"best_epoch": metrics.get("best_epoch"), "best_valid_loss": metrics.get("best_valid_loss")}
        return StepResult("finetune", {"adapter": lake.partition(out, src.dt)}, counts, False)
    rows, rows_source = training_rows(lake, dt, from_samples, cfg.seed, coreset, dataset=dataset)
    valid = _split(lake.read(src.path(SAMPLES), src.dt, "samples.parquet"), VALID)
    if len(valid) > max_valid:
        valid = [valid[i] for i in sorted(np.random.default_rng(cfg.seed).choice(len(valid), max_valid, False))]
    tokenizer, model = load(model_dir)
    titles = item_titles(lake, src)
    template = PromptTemplate(cfg.domain)
    train_p = encode_rows(rows, titles, tokenizer, template, cfg.cutoff_len)
    valid_p = encode_rows(valid, titles, tokenizer, template, cfg.cutoff_len)
    where = f"dt={src.dt}" if src.dt else f"dataset={dataset}"
    work = Path(work_dir) / (where if arm is None else f"arm={arm}/{where}")
    state = ft.finetune(model, tokenizer.pad_token_id, train_p, valid_p, cfg, lora, work)
    adapter = Path(state["adapter_dir"])
    blobs = {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()}
    metrics = {k: state[k] for k in ("history", "best_epoch", "best_valid_loss")}
    pub = lake.publish(
        out,
        src.dt,
        {},
        blobs=blobs,
        config=config,
        inputs=inputs,
        extra={
            "base_model": {"path": str(Path(model_dir).resolve()), "fingerprint": model_fingerprint(model_dir)},
            "source": {"training": rows_source},
            "metrics": metrics,
        },
    )
    counts = {
        "train_samples": len(train_p),
        "valid_samples": len(valid_p),
        "epochs": len(state["history"]),
        "best_epoch": state["best_epoch"],
        "best_valid_loss": round(state["best_valid_loss"], 4),
    }
    if state.get("resumed_from_epoch"):
        counts["resumed_from_epoch"] = state["resumed_from_epoch"]
    if preset:
        modules = "+".join(lora.target_modules)
        counts["preset"] = f"{preset['preset']} (lr {cfg.lr:g}, epochs {cfg.epochs}, LoRA r {lora.r} on {modules})"
    notes = [state["fresh_start"]] if state.get("fresh_start") else []  # a resume state from other inputs
    return StepResult("finetune", {"adapter": pub.uri}, counts, pub.changed, notes)


def item_counts(test_rows: list[dict], n_items: int) -> np.ndarray:
    """Interactions per title row before the test items (every test user's history: train + validation items),
    the popularity BIGRec's popularity-aware grounding uses."""
    counts = np.zeros(n_items, dtype=np.float64)
    for r in test_rows:
        np.add.at(counts, np.asarray(r["history"], dtype=np.int64) - 1, 1.0)
    return counts


def per_user_table(users: list[str], per_user: dict[str, np.ndarray]) -> pa.Table:
    """``user_id`` and one float64 column per metric (``recall@20`` ...), one row per scored user."""
    columns = {"user_id": pa.array([str(u) for u in users], pa.string())}
    return pa.table(columns | {name: pa.array(v, pa.float64()) for name, v in per_user.items()})


@contextlib.contextmanager
def local_adapter(
    lake: Lake, dt: str, manifest: dict[str, Any] | None = None, dataset: str = ADAPTERS
) -> Iterator[Path]:
    """The adapter of ``dt`` as a local folder for ``PeftModel.from_pretrained`` or MLflow, removed when the block
    ends (also on error).

    Every file is checked against ``manifest`` (default: the published one) before it is written: evaluation and
    registration then use exactly the weights fine-tuning published, and a manifest entry cannot name a path
    outside the folder (``../x``: ``Lake.read_verified_bytes`` refuses it).
    """
    manifest = manifest if manifest is not None else lake.require_manifest(dataset, dt)
    where = join_uri(lake.partition(dataset, dt), MANIFEST)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise InputError(f"{where}: lists no adapter files; republish the adapter (`dealrec finetune --dt {dt}`)")
    with tempfile.TemporaryDirectory(prefix="dealrec-adapter-") as tmp:
        local = Path(tmp, ADAPTER_DIR)
        local.mkdir()
        for name in files:
            data = lake.read_verified_bytes(dataset, dt, name, manifest=manifest)
            target = local / name
            if target.resolve().parent != local.resolve():  # a second fence: never write outside the folder
                raise InputError(f"{where}: file entry {name!r} resolves outside the adapter folder; refusing it")
            target.write_bytes(data)
        yield local


def evaluate(
    lake: Lake,
    dt: str,
    model_dir: str,
    cfg: EvalConfig,
    cache_dir: str | None = None,
    adapter: bool = True,
    max_users: int = 0,
    seed: int = 0,
    arm: str | None = None,
    *,
    dataset: str | None = None,
) -> StepResult:
    """Grounded evaluation of an arm's adapter at ``dt`` (the primary arm's by default; or of the base model) on the
    test rows at ``dt``; a no-op when published with this config from the same samples, titles, base model and
    adapter weights. Every arm (and ``evaluate_version``) with the same ``max_users`` and ``seed`` scores the same
    users."""
    src = source(dt, dataset)
    adapter_at = (arm_dataset(src.path(ADAPTERS), arm), src.dt) if adapter else None
    out = arm_dataset(src.path(EVALUATION), arm)
    return _evaluate(lake, src, model_dir, cfg, cache_dir, adapter_at, out, max_users, seed)


def evaluate_version(
    lake: Lake,
    dt: str,
    model_dir: str,
    cfg: EvalConfig,
    version: int,
    adapter_uri: str,
    cache_dir: str | None = None,
    max_users: int = 0,
    seed: int = 0,
) -> StepResult:
    """A registered version's adapter (its published partition ``adapter_uri``, from an earlier day) evaluated on
    ``dt``'s test users, into ``evaluation/version=N/dt=D/``: the champion measured on the users of today's arms,
    so the gate compares like with like. Cached: a retry or a second arm finds it published (a no-op)."""
    adapter_at = lake.locate(adapter_uri)
    out = version_evaluation(version)
    return _evaluate(lake, Source(Day(dt)), model_dir, cfg, cache_dir, adapter_at, out, max_users, seed)


def _evaluate(
    lake: Lake,
    src: Source,
    model_dir: str,
    cfg: EvalConfig,
    cache_dir: str | None,
    adapter_at: tuple[str, str | None] | None,
    out: str,
    max_users: int,
    seed: int,
) -> StepResult:
    """Evaluate the base model with the adapter of the partition ``adapter_at`` (None: without one) on the source's
    test users and publish to ``out/dt=D``."""
    import json

    from dealrec_tasks.llm.evaluate import grounded_evaluation
    from dealrec_tasks.llm.tiny import load

    check_max_users(max_users)
    cfg = dataclasses.replace(cfg, domain=domain_of(lake, src, cfg.domain))
    dt = src.dt
    config = cfg.to_dict() | {"adapter": adapter_at is not None, "max_users": max_users, "per_user": True}
    inputs: dict[str, Any] = _day_inputs(lake, src, model_dir) | {"users_seed": seed}
    adapter_manifest = lake.require_manifest(*adapter_at) if adapter_at else None
    if adapter_manifest is not None:  # the adapter's file checksums: which weights these metrics belong to
        inputs["adapter"] = {n: e["sha256"] for n, e in adapter_manifest["files"].items()}
    done = lake.current(out, dt, config, inputs)
    if done is not None:
        shown = {k: round(v, 4) for k, v in done.get("metrics", {}).items() if k in ("recall@20", "ndcg@20", "users")}
        return StepResult("evaluate", {"evaluation": lake.partition(out, dt)}, shown, False)
    samples = lake.read(src.path(SAMPLES), dt, "samples.parquet")
    test = all_test = _split(samples, TEST)
    if not test:
        raise InputError(f"{lake.partition(src.path(SAMPLES), dt)}: no test rows to evaluate on")
    if max_users and len(test) > max_users:
        test = [test[i] for i in sorted(np.random.default_rng(seed).choice(len(test), max_users, replace=False))]
    tokenizer, model = load(model_dir)
    scored: dict[str, str] = inputs.get("adapter", {})
    if adapter_at is not None:
        from peft import PeftModel

        # Loaded in memory; the copy goes after the block.
        with local_adapter(lake, adapter_at[1], adapter_manifest, dataset=adapter_at[0]) as local:
            model = PeftModel.from_pretrained(model, local)
    titles = item_titles(lake, src)
    template = PromptTemplate(cfg.domain)
    prompts = encode_rows(test, titles, tokenizer, template, cfg.cutoff_len, with_target=False)
    targets = [[t - 1 for t in r["targets"]] for r in test]
    popaware = {}
    if cfg.popularity_aware:
        valid = _split(samples, VALID)
        if len(valid) > len(test):  # as many validation users as test users choose the popularity weight
            valid = [valid[i] for i in sorted(np.random.default_rng(seed).choice(len(valid), len(test), False))]
        popaware = {
            "item_counts": item_counts(all_test, len(titles)),
            "valid_prompts": encode_rows(valid, titles, tokenizer, template, cfg.cutoff_len, with_target=False),
            "valid_targets": [r["target"] - 1 for r in valid],
        }
    result = grounded_evaluation(model, tokenizer, prompts, targets, titles, cfg, model_dir, cache_dir, **popaware)
    metrics = {k: int(v) if k == "users" else float(v) for k, v in result["metrics"].items()}
    examples = [
        {
            "user_id": r["user_id"],
            "history": [titles[i - 1] for i in r["history"][-5:]],
            "generated": g,
            "targets": [titles[t - 1] for t in r["targets"]],
        }
        for r, g in zip(test[:25], result["generated"][:25])
    ]
    source = {"adapter": lake.partition(*adapter_at)} if adapter_at else {}
    scored_users = [r["user_id"] for r, kept in zip(test, result["kept"]) if kept]
    pub = lake.publish(
        out,
        dt,
        {PER_USER: per_user_table(scored_users, result["per_user"])},
        config=config,
        inputs=inputs,
        blobs={
            "metrics.json": json.dumps(metrics, indent=2).encode(),
            "examples.json": json.dumps(examples, indent=2).encode(),
            SCORED_ADAPTER: json.dumps(scored, indent=2, sort_keys=True).encode(),
        },
        extra={"metrics": metrics, "base_model": str(Path(model_dir).resolve()), "source": source},
    )
    shown = {k: round(v, 4) for k, v in metrics.items() if k in ("recall@20", "ndcg@20", "users")}
    return StepResult("evaluate", {"evaluation": pub.uri}, shown, pub.changed, result["notes"])

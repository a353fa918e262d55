"""
### dealrec_daily: score a day's training samples and publish its coreset

Every day after midnight UTC, for the day that just ended (`dt`):

1. **ingest** every day with logs not ingested yet, up to `dt`, in order (bad rows quarantined to `rejects/`); it
   writes only each day's events, and **compact** folds them into a snapshot every 7 days, beside the surrogate;
2. **samples** (one per user, split by time) -> **surrogate** (4 SASRecs with seeds 0-3, each warm-started from
   the previous day's same member: influence averages them, so one training run's luck weighs little on the coreset);
3. **influence** toward the day's validation rows (`influence_target`; `train` is the paper's training risk;
   solve once, then `shards` parallel GPU tasks, merged) and **effort** on the LLM (`shards` parallel GPU tasks on
   `base_model`, merged);
4. **select** a coreset per arm (`arms`: the pipeline's strategy first, then its controls, default `random`; `n` or
   `ratio`, `lambda`, `k`, `hard_prune`), mapped over the arms;
5. **log_pruning** to MLflow and emit the `dealrec_coreset` asset (every arm's coreset URI), which starts
   `dealrec_finetune`.

Trigger it by hand with **dt** set to (re)build a given day. Every task writes atomically, keyed by `dt`: a
retry or a second run with the same inputs changes nothing. Lake, models and MLflow come from the environment
(`DEALREC_LAKE`, `DEALREC_MODEL_DIR`, `MLFLOW_TRACKING_URI`; see `plugins/dealrec_airflow.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dealrec_airflow as dx
from airflow.sdk import dag, get_current_context, task


@dag(
    dag_id="dealrec_daily",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=dx.default_args(),
    params=dx.daily_params(),
    tags=[*dx.TAGS, "daily", "pruning"],
    doc_md=__doc__,
)
def dealrec_daily():
    @task(execution_timeout=timedelta(minutes=5))
    def plan() -> str:
        """The day this run is for; every Param checked by the library first (a bad one fails here, not after hours
        of training and scoring)."""
        ctx = get_current_context()
        dx.check_daily_params(ctx["params"])
        dt = dx.daily_dt(ctx)
        print(f"dealrec_daily: dt={dt}, lake={dx.lake_root()}")
        return dt

    @task(execution_timeout=timedelta(minutes=5))
    def shards(params=None) -> list[list[int]]:
        """What the influence and effort tasks are mapped over: ``[[0, n], [1, n], ...]``."""
        return dx.shards(params["shards"])

    @task(execution_timeout=timedelta(hours=1))
    def ingest(dt: str, params=None) -> dict:
        from dealrec_tasks.config import IngestConfig
        from dealrec_tasks.steps.data import ingest_until

        allow_future = params.get("allow_future") is True  # the same opt-in plan's daily_dt accepted
        return dx.result(ingest_until(dx.lake(), dt, IngestConfig(), allow_future=allow_future))

    @task(execution_timeout=timedelta(hours=1))
    def samples(dt: str) -> dict:
        from dealrec_tasks.config import SamplesConfig
        from dealrec_tasks.steps.data import samples

        return dx.result(samples(dx.lake(), dt, SamplesConfig()))

    @task(execution_timeout=timedelta(hours=1))
    def compact(dt: str) -> dict:
        from dealrec_tasks.config import CompactConfig
        from dealrec_tasks.steps.data import compact

        return dx.result(compact(dx.lake(), dt, CompactConfig()))

    @task(execution_timeout=timedelta(hours=4))
    def surrogate(dt: str, params=None) -> dict:
        from dealrec_tasks.steps.surrogate import train_surrogate

        return dx.result(train_surrogate(dx.lake(), dt, dx.surrogate_config(params)))

    @task(**dx.GPU, execution_timeout=timedelta(hours=2))
    def influence_solve(dt: str, params=None) -> dict:
        from dealrec_tasks.steps.influence import solve_influence

        return dx.result(solve_influence(dx.lake(), dt, dx.influence_config(params)))

    @task(**dx.GPU, execution_timeout=timedelta(hours=2))
    def influence(dt: str, shard: list[int], params=None) -> dict:
        from dealrec_tasks.steps.influence import score_influence

        cfg = dx.influence_config(params)
        return dx.result(score_influence(dx.lake(), dt, cfg, (shard[0], shard[1])))

    @task(execution_timeout=timedelta(minutes=30))
    def merge_influence(dt: str, shards: list[list[int]]) -> dict:
        from dealrec_tasks.steps.influence import merge_influence

        return dx.result(merge_influence(dx.lake(), dt, len(shards)))

    @task(**dx.GPU, execution_timeout=timedelta(hours=1))
    def base_model(dt: str, params=None) -> str:
        """The LLM directory on the GPU worker: the ``base_model`` Param, or the embedded LLM shipped in the package."""
        from dealrec_tasks.steps.llm import base_model_dir

        return base_model_dir(params["base_model"])

    @task(**dx.GPU, execution_timeout=timedelta(hours=6))
    def effort(dt: str, model_dir: str, shard: list[int]) -> dict:
        from dealrec_tasks.llm.config import EffortConfig, LoRAConfig
        from dealrec_tasks.steps.llm import effort

        return dx.result(effort(dx.lake(), dt, model_dir, EffortConfig(), LoRAConfig(), (shard[0], shard[1])))

    @task(execution_timeout=timedelta(minutes=30))
    def merge_effort(dt: str, shards: list[list[int]]) -> dict:
        from dealrec_tasks.steps.llm import merge_effort

        return dx.result(merge_effort(dx.lake(), dt, len(shards)))

    @task(execution_timeout=timedelta(minutes=5))
    def arms(params=None) -> list[list]:
        """What select is mapped over: ``[[strategy, control], ...]``, the first arm the pipeline's own."""
        return dx.arms(params["arms"])

    @task(execution_timeout=timedelta(hours=1))
    def select(dt: str, arm: list, params=None) -> dict:
        from dealrec_tasks.steps.select import select

        strategy, control = arm
        return dx.result(select(dx.lake(), dt, dx.select_config(params, strategy), control=control))

    @task(outlets=[dx.CORESET], execution_timeout=timedelta(minutes=30))
    def log_pruning(dt: str, coresets: list[dict], outlet_events=None) -> dict:
        """Record each arm's coreset in MLflow, then announce them: the asset event carries the day, the primary
        coreset's URI and every arm's."""
        from dealrec_tasks.steps.tracking import log_pruning

        ctx, lake = get_current_context(), dx.lake()
        announced: dict[str, str] = {}
        for coreset in coresets:
            uri = coreset["uris"]["coreset"]
            arm = dx.arm_of(lake, uri)
            dx.result(log_pruning(lake, dt, dx.tracking(), dx.run_key(ctx, dt), run_tags=dx.run_tags(ctx), arm=arm))
            announced[coreset["counts"]["strategy"]] = uri
        outlet_events[dx.CORESET].extra = {"dt": dt, "coreset": coresets[0]["uris"]["coreset"], "arms": announced}
        return {"dt": dt, "arms": announced}

    dt, parts = plan(), shards()
    day = samples(dt)
    ingest(dt) >> day >> compact(dt)  # beside the surrogate: folding the deltas is off ingest's path

    trained = surrogate(dt)
    solved = influence_solve(dt)
    scored_i = influence.partial(dt=dt).expand(shard=parts)
    merged_i = merge_influence(dt, parts)
    day >> trained >> solved >> scored_i >> merged_i

    model = base_model(dt)
    scored_e = effort.partial(dt=dt, model_dir=model).expand(shard=parts)
    merged_e = merge_effort(dt, parts)
    day >> model >> solved  # no scoring starts before the base model is found (it is on the GPU workers only)
    scored_e >> merged_e

    coresets = select.partial(dt=dt).expand(arm=arms())
    [merged_i, merged_e] >> coresets
    log_pruning(dt, coresets)


dealrec_daily()

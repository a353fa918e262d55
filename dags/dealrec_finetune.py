"""
### dealrec_finetune: LoRA fine-tuning on a day's coreset, registered in MLflow, promoted only if better

Runs whenever `dealrec_daily` publishes a coreset (the `dealrec_coreset` asset), or by hand:

1. **finetune** the base model with LoRA on `coreset/dt=D/` (GPU; resumes from its checkpoint on retry);
2. **evaluate** it on the day's test users (GPU; generate, ground to the catalogue, Recall/NDCG@K);
3. **register** an MLflow model version tagged with dt, the run id and the coreset URI (a retry finds it
   instead of registering twice);
4. **promote**: the version becomes `challenger`, and `champion` only if it beats the champion's ndcg@20
   by more than `margin` (or there is none yet).

The day: the **dt** Param, else the triggering coreset event's day, else the newest published coreset.
Lake, models and MLflow come from the environment (see `plugins/dealrec_airflow.py`).
"""

from __future__ import annotations

from datetime import timedelta

import dealrec_airflow as dx
from airflow.sdk import dag, get_current_context, task


@dag(
    dag_id="dealrec_finetune",
    schedule=[dx.CORESET],
    max_active_runs=1,
    default_args=dx.default_args(),
    params=dx.finetune_params(),
    tags=[*dx.TAGS, "finetune", "mlflow"],
    doc_md=__doc__,
)
def dealrec_finetune():
    @task(execution_timeout=timedelta(minutes=5))
    def plan() -> str:
        """The day whose coreset this run fine-tunes on."""
        dt = dx.finetune_dt(get_current_context(), dx.lake())
        print(f"dealrec_finetune: dt={dt}, lake={dx.lake_root()}")
        return dt

    @task(**dx.GPU, execution_timeout=timedelta(hours=1))
    def base_model(dt: str, params=None) -> str:
        from dealrec_tasks.steps.llm import base_model_dir

        return base_model_dir(dx.lake(), params["base_model"], dx.tiny_llm_dir(), dx.tiny_llm_config(), dt)

    @task(**dx.GPU, execution_timeout=timedelta(hours=12))
    def finetune(dt: str, model_dir: str, params=None) -> dict:
        from dealrec_tasks.llm.config import FinetuneConfig, LoRAConfig
        from dealrec_tasks.steps.llm import finetune

        cfg = FinetuneConfig(epochs=params["epochs"])
        coreset = dx.announced_coreset(get_current_context(), dt)  # the URI the asset event announced, if any
        return dx.result(finetune(dx.lake(), dt, model_dir, cfg, LoRAConfig(), dx.work_dir(), coreset=coreset))

    @task(**dx.GPU, execution_timeout=timedelta(hours=4))
    def evaluate(dt: str, model_dir: str, params=None) -> dict:
        from dealrec_tasks.llm.config import EvalConfig
        from dealrec_tasks.steps.llm import evaluate

        cache = f"{dx.work_dir()}/embeddings"
        return dx.result(evaluate(dx.lake(), dt, model_dir, EvalConfig(), cache, max_users=params["eval_users"]))

    @task(execution_timeout=timedelta(minutes=30))
    def register(dt: str, model_dir: str) -> int:
        from dealrec_tasks.steps.tracking import register

        ctx = get_current_context()
        out = register(dx.lake(), dt, model_dir, dx.tracking(), dx.run_key(ctx, dt), run_tags=dx.run_tags(ctx))
        return int(dx.result(out)["counts"]["version"])

    @task(execution_timeout=timedelta(minutes=10))
    def promote(version: int, params=None) -> dict:
        from dealrec_tasks.steps.tracking import promote_if_better

        return dx.result(promote_if_better(dx.tracking(margin=params["margin"]), version))

    dt = plan()
    model = base_model(dt)
    tuned = finetune(dt, model)
    evaluated = evaluate(dt, model)
    version = register(dt, model)
    tuned >> evaluated >> version
    promote(version)


dealrec_finetune()

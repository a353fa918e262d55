"""
### dealrec_finetune: LoRA fine-tuning on each arm's coreset, registered in MLflow, promoted only if better

Runs whenever `dealrec_daily` publishes a coreset (the `dealrec_coreset` asset), or by hand:

1. **finetune** the base model with LoRA on each arm's coreset, as the asset event announced them (GPU, mapped
   over the arms; resumes from its checkpoint on retry);
2. **evaluate** every arm on the same test users of the day (GPU; generate, ground to the catalogue, Recall/NDCG@K);
3. **register** an MLflow model version per arm, tagged with dt, its strategy, the coreset URI (a retry finds it
   instead of registering twice);
4. **evaluate_champion**: the current champion on the same users (cached per version and evaluation set);
5. **gate**: the primary arm (declared before the results) becomes `challenger`, and `champion` only when the 95%
   interval of its per-user difference from the champion on the same users lies above `margin` (the first version
   is promoted: nothing is in production yet; a champion not re-evaluated on these users is kept). The day's
   MLflow run gets every arm, the paired intervals and the primary arm against random, that day and pooled over
   every day so far, with a verdict.

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
        """The day whose coreset this run fine-tunes on; every Param checked by the library first (a bad one fails
        here, not after hours of fine-tuning)."""
        ctx = get_current_context()
        dx.check_finetune_params(ctx["params"])
        dt = dx.finetune_dt(ctx, dx.lake())
        print(f"dealrec_finetune: dt={dt}, lake={dx.lake_root()}")
        return dt

    @task(**dx.GPU, execution_timeout=timedelta(hours=1))
    def base_model(dt: str, params=None) -> str:
        from dealrec_tasks.steps.llm import base_model_dir

        return base_model_dir(params["base_model"])

    @task(execution_timeout=timedelta(minutes=5))
    def arms(dt: str) -> list[dict]:
        """The day's arms: ``[{"strategy", "coreset"}, ...]`` as the asset event announced them (else as published)."""
        return dx.announced_arms(get_current_context(), dx.lake(), dt)

    @task(**dx.GPU, execution_timeout=timedelta(hours=12))
    def finetune(dt: str, model_dir: str, arm: dict, params=None) -> dict:
        from dealrec_tasks.llm.config import LoRAConfig
        from dealrec_tasks.steps.llm import finetune

        cfg = dx.finetune_config(params)
        lake = dx.lake()
        return dx.result(finetune(lake, dt, model_dir, cfg, LoRAConfig(), dx.work_dir(), coreset=arm["coreset"]))

    @task(**dx.GPU, execution_timeout=timedelta(hours=4))
    def evaluate(dt: str, model_dir: str, arm: dict, params=None) -> dict:
        from dealrec_tasks.llm.config import EvalConfig
        from dealrec_tasks.steps.llm import evaluate

        lake, cache = dx.lake(), f"{dx.work_dir()}/embeddings"
        users, control = params["eval_users"], dx.arm_of(lake, arm["coreset"])
        return dx.result(evaluate(lake, dt, model_dir, EvalConfig(), cache, max_users=users, arm=control))

    @task(execution_timeout=timedelta(minutes=30))
    def register(dt: str, model_dir: str, arm: dict) -> int:
        from dealrec_tasks.steps.tracking import register

        ctx, lake = get_current_context(), dx.lake()
        key, tags = dx.run_key(ctx, dt), dx.run_tags(ctx)
        out = register(lake, dt, model_dir, dx.tracking(), key, run_tags=tags, arm=dx.arm_of(lake, arm["coreset"]))
        return int(dx.result(out)["counts"]["version"])

    @task(**dx.GPU, execution_timeout=timedelta(hours=4))
    def evaluate_champion(dt: str, model_dir: str, params=None) -> dict:
        """The champion on the arms' users (cached per version and evaluation set), so the gate compares like with
        like."""
        from dealrec_tasks.llm.config import EvalConfig
        from dealrec_tasks.steps.gate import evaluate_champion

        cache, users = f"{dx.work_dir()}/embeddings", params["eval_users"]
        step = evaluate_champion(dx.lake(), dt, model_dir, EvalConfig(), dx.tracking(), cache, max_users=users)
        return dx.result(step)

    @task(execution_timeout=timedelta(minutes=10))
    def gate(dt: str, versions: list[int], params=None) -> dict:
        from dealrec_tasks.steps.gate import gate

        ctx = get_current_context()
        cfg = dx.tracking(margin=params["margin"])
        return dx.result(gate(dx.lake(), dt, cfg, list(versions), dx.run_key(ctx, dt), run_tags=dx.run_tags(ctx)))

    dt = plan()
    model = base_model(dt)
    day_arms = arms(dt)
    tuned = finetune.partial(dt=dt, model_dir=model).expand(arm=day_arms)
    evaluated = evaluate.partial(dt=dt, model_dir=model).expand(arm=day_arms)
    versions = register.partial(dt=dt, model_dir=model).expand(arm=day_arms)
    champion = evaluate_champion(dt, model)
    tuned >> evaluated >> versions >> champion
    champion >> gate(dt, versions)


dealrec_finetune()

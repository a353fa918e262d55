"""The whole daily chain in one process, on embedded defaults: what ``make demo`` runs.

Airflow runs the same steps as separate tasks (one call each); this module only sequences them, so a person can
see the pipeline work end to end without any service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dealrec_tasks.config import IngestConfig, SamplesConfig, SyntheticConfig
from dealrec_tasks.llm.config import EffortConfig, EvalConfig, FinetuneConfig, LoRAConfig
from dealrec_tasks.scoring.config import InfluenceConfig
from dealrec_tasks.selection import SelectConfig
from dealrec_tasks.steps import data, llm
from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.storage import Lake
from dealrec_tasks.surrogate.config import SurrogateConfig


@dataclass(frozen=True)
class DemoConfig:
    """Sizes that keep the demo to a few minutes on a laptop CPU."""

    influence_shards: int = 2
    coreset_ratio: float = 0.05
    finetune_epochs: int = 2
    eval_users: int = 200


def demo(lake: Lake, model_dir: str, work_dir: str, cfg: DemoConfig, report: Callable[[StepResult], None]) -> str:
    """synthetic logs -> ingest -> samples -> surrogate -> influence (sharded) -> the shipped LLM: effort -> coreset
    -> LoRA fine-tuning -> grounded evaluation, for the last synthetic day. Returns that day."""
    from dealrec_tasks.steps.influence import merge_influence, score_influence, solve_influence
    from dealrec_tasks.steps.select import select
    from dealrec_tasks.steps.surrogate import train_surrogate

    synth = data.synthetic(lake, SyntheticConfig(bad_rows=25))
    report(synth)
    for dt in data.log_days(lake):  # days already ingested are no-ops
        report(data.ingest(lake, dt, IngestConfig()))
    dt = synth.counts["last_dt"]
    report(data.samples(lake, dt, SamplesConfig()))
    report(train_surrogate(lake, dt, SurrogateConfig()))
    influence_cfg = InfluenceConfig()
    report(solve_influence(lake, dt, influence_cfg))
    for i in range(cfg.influence_shards):  # what the Airflow workers do in parallel
        report(score_influence(lake, dt, influence_cfg, (i, cfg.influence_shards)))
    report(merge_influence(lake, dt, cfg.influence_shards))
    model_dir = llm.base_model_dir(model_dir)  # "" : the shipped embedded model
    report(llm.effort(lake, dt, model_dir, EffortConfig(), LoRAConfig(), (0, 1)))
    report(llm.merge_effort(lake, dt, 1))
    report(select(lake, dt, SelectConfig(n=None, ratio=cfg.coreset_ratio)))
    report(llm.finetune(lake, dt, model_dir, FinetuneConfig(epochs=cfg.finetune_epochs), LoRAConfig(), work_dir))
    report(llm.evaluate(lake, dt, model_dir, EvalConfig(), f"{work_dir}/embeddings", max_users=cfg.eval_users))
    return dt

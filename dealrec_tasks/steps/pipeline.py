"""The whole daily chain in one process, on embedded defaults: what ``make demo`` runs.

Airflow runs the same steps as separate tasks (one call each); this module only sequences them, so a person can
see the pipeline work end to end without any service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dealrec_tasks.config import IngestConfig, SamplesConfig, SyntheticConfig
from dealrec_tasks.errors import ConfigError
from dealrec_tasks.llm.config import EffortConfig, EvalConfig, FinetuneConfig, LoRAConfig, TinyLLMConfig
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
    tiny_llm_size: str = "small"
    pretrain_seconds: float = 60.0
    coreset_ratio: float = 0.05
    finetune_epochs: int = 2
    eval_users: int = 200


def ingest_until(lake: Lake, dt: str, cfg: IngestConfig) -> StepResult:
    """Ingest, in order, every day with logs that is not ingested yet up to ``dt``, then ``dt`` itself (a no-op when
    it is ingested and unchanged). The vocab is append-only and cumulative, so a daily run that finds earlier days
    missing catches up instead of failing. Returns the last day's result, with the days it went through."""
    days = [d for d in data.pending_days(lake) if d < dt] + [dt]
    results = [data.ingest(lake, d, cfg) for d in days]
    last = results[-1]
    counts = {"days_ingested": len(days), "first_dt": days[0]} | last.counts
    notes = [n for r in results for n in r.notes]
    return StepResult("ingest", last.uris, counts, any(r.changed for r in results), notes)


def train_surrogate_once(lake: Lake, dt: str, cfg: SurrogateConfig) -> StepResult:
    """``train_surrogate``, unless ``dt``'s surrogate is already published with ``cfg`` on ``dt``'s current samples.

    Training is not bit-reproducible on CPU threads (and its metrics carry timings), so a retrained surrogate
    always republishes, and with it every score, the coreset and a second MLflow run for unchanged inputs. The
    surrogate's manifest records the checksum of the samples it was trained on; new samples or another config
    (``members`` included: a partition from before ensembles has none in its config) train again.
    """
    from dealrec_tasks.data.schema import SURROGATE
    from dealrec_tasks.steps.surrogate import samples_sha256, source, train_surrogate

    done = lake.published_with(SURROGATE, dt, cfg.to_dict())
    if done is not None and done.get("source", {}).get("samples_sha256") == samples_sha256(lake, source(dt, None)):
        why = f"surrogate dt={dt}: already trained with this config on these samples ({done['created_at']})"
        uris = {"surrogate": lake.partition(SURROGATE, dt)}
        return StepResult("surrogate", uris, done.get("counts", {}), False, [why])
    return train_surrogate(lake, dt, cfg)


def solve_influence_once(lake: Lake, dt: str, cfg: InfluenceConfig) -> StepResult:
    """``solve_influence``, unless ``dt``'s solve is already published for ``cfg`` and the current surrogate's
    influence weights (the same checksums of its ``influence_weights`` files, in order).

    The solve's ``solve.json`` carries timings, so solving again always republishes (with the same v and u).
    """
    from dealrec_tasks.data.schema import SURROGATE
    from dealrec_tasks.steps.influence import _part, solve_influence
    from dealrec_tasks.steps.surrogate import influence_sha256, source

    part = _part(source(dt, None), "solve")
    identity = {"surrogate_sha256": influence_sha256(lake.require_manifest(SURROGATE, dt))}
    done = lake.published_with(part, None, cfg.to_dict() | identity)
    if done is not None:
        why = f"influence solve dt={dt}: already published for this config and surrogate ({done['created_at']})"
        return StepResult("influence-solve", {"solve": lake.partition(part)}, done.get("counts", {}), False, [why])
    return solve_influence(lake, dt, cfg)


def base_model_dir(lake: Lake, base_model: str | None, tiny_dir: str, tiny_cfg: TinyLLMConfig, dt: str) -> str:
    """The LLM directory the LLM steps load: ``base_model`` when given (a local Hugging Face directory), else (None or
    "") the embedded tiny LLM in ``tiny_dir``, built for ``dt`` on first use and reused afterwards."""
    if base_model:
        if not (Path(base_model) / "config.json").is_file():
            raise ConfigError(f"base_model={base_model!r}: not a local Hugging Face model directory (no config.json)")
        return str(Path(base_model).resolve())
    built = llm.tiny_llm(lake, tiny_dir, tiny_cfg, dt)
    print(built.summary())
    return built.uris["model"]


def demo(lake: Lake, model_dir: str, work_dir: str, cfg: DemoConfig, report: Callable[[StepResult], None]) -> str:
    """synthetic logs -> ingest -> samples -> surrogate -> influence (sharded) -> tiny LLM -> effort -> coreset
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
    tiny = TinyLLMConfig.sized(cfg.tiny_llm_size, pretrain_seconds=cfg.pretrain_seconds)
    report(llm.tiny_llm(lake, model_dir, tiny, dt))
    report(llm.effort(lake, dt, model_dir, EffortConfig(), LoRAConfig(), (0, 1)))
    report(llm.merge_effort(lake, dt, 1))
    report(select(lake, dt, SelectConfig(n=None, ratio=cfg.coreset_ratio)))
    report(llm.finetune(lake, dt, model_dir, FinetuneConfig(epochs=cfg.finetune_epochs), LoRAConfig(), work_dir))
    report(llm.evaluate(lake, dt, model_dir, EvalConfig(), f"{work_dir}/embeddings", max_users=cfg.eval_users))
    return dt

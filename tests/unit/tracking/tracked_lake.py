"""One small lake that went through the whole chain (coreset, adapter, evaluation), built once per session.

Shared by the SQLite tests and the MLflow-server integration test (module-level memo: the same import path
gives the same module, so the second fixture reuses the first build).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dealrec_tasks.storage import Lake

DT = "2026-01-05"
# No internet here: MLflow's usage telemetry would only try to send in the background.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@dataclass(frozen=True)
class TrackedLake:
    lake: Lake
    dt: str
    model_dir: str  # the tiny base model
    root: Path


_BUILT: dict[str, TrackedLake] = {}


def build(tmp_path_factory) -> TrackedLake:
    """synthetic logs -> samples -> surrogate -> influence -> tiny LLM -> effort -> coreset -> LoRA -> evaluation."""
    if "lake" in _BUILT:
        return _BUILT["lake"]
    from dealrec_tasks.llm.config import EffortConfig, EvalConfig, FinetuneConfig, LoRAConfig, TinyLLMConfig
    from dealrec_tasks.scoring.config import InfluenceConfig
    from dealrec_tasks.selection import SelectConfig
    from dealrec_tasks.steps import llm
    from dealrec_tasks.steps.influence import merge_influence, score_influence, solve_influence
    from dealrec_tasks.steps.select import select
    from dealrec_tasks.steps.surrogate import train_surrogate
    from dealrec_tasks.surrogate.config import SurrogateConfig
    from tests.conftest import synthetic_lake

    root = tmp_path_factory.mktemp("tracked")
    lake = synthetic_lake(root / "lake", DT, 8, users=60, items=80, days=5, events_per_day=120)
    train_surrogate(lake, DT, SurrogateConfig.tiny(max_len=8, max_epochs=2))
    influence = InfluenceConfig(negatives=64, hvp_samples=0, hvp_negatives=0, batch_size=64)
    solve_influence(lake, DT, influence)
    score_influence(lake, DT, influence, (0, 1))
    merge_influence(lake, DT, 1)
    model_dir = str(root / "tiny")
    tiny = TinyLLMConfig(
        vocab_size=600, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, pretrain_steps=10
    )
    llm.tiny_llm(lake, model_dir, tiny)
    llm.effort(lake, DT, model_dir, EffortConfig(batch_size=16), LoRAConfig(), (0, 1))
    llm.merge_effort(lake, DT, 1)
    select(lake, DT, SelectConfig(n=16, k=4))
    # A large learning rate so the adapter visibly changes the logits (the logits test must not be vacuous).
    finetune = FinetuneConfig(epochs=2, batch_size=8, micro_batch_size=8, lr=5e-3)
    llm.finetune(lake, DT, model_dir, finetune, LoRAConfig(), str(root / "work"))
    llm.evaluate(lake, DT, model_dir, EvalConfig(num_beams=1, max_new_tokens=8), str(root / "cache"), max_users=20)
    _BUILT["lake"] = TrackedLake(lake, DT, model_dir, root)
    return _BUILT["lake"]

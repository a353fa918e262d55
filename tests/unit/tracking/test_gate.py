"""The daily control arm and the fair gate on a real lake and a real (SQLite) MLflow store.

A random arm is selected, fine-tuned and evaluated beside the primary coreset on the same users; both are
registered; the gate promotes the better one, records the lift over random, and nests the arms under a day run.
The champion re-evaluated on a day's users is cached and decides the next comparison.
"""

from __future__ import annotations

import pytest

from dealrec_tasks.llm.config import EvalConfig, FinetuneConfig, LoRAConfig
from dealrec_tasks.selection import SelectConfig
from dealrec_tasks.steps import llm
from dealrec_tasks.steps.gate import evaluate_champion, gate
from dealrec_tasks.steps.select import published_arms, select
from dealrec_tasks.steps.tracking import register
from dealrec_tasks.tracking import registry as reg
from dealrec_tasks.tracking.client import Tracking

EVAL = EvalConfig(num_beams=1, max_new_tokens=8)
KEY = "dealrec_finetune/dt=2026-01-05"


@pytest.fixture(scope="module")
def two_arms(tracked, tmp_path_factory):
    """The session's lake (primary arm fine-tuned and evaluated) with a random control arm added beside it."""
    root = tmp_path_factory.mktemp("arms")
    lake, dt = tracked.lake, tracked.dt
    control = select(lake, dt, SelectConfig(strategy="random", n=16), control=True)
    assert control.uris["coreset"] == lake.partition("coreset/arm=random", dt)
    finetune = FinetuneConfig(epochs=2, batch_size=8, micro_batch_size=8, lr=5e-3)
    tuned = llm.finetune(lake, dt, tracked.model_dir, finetune, LoRAConfig(), str(root / "work"),
                         coreset=control.uris["coreset"])  # fmt: skip
    assert tuned.uris["adapter"] == lake.partition("adapters/arm=random", dt)
    llm.evaluate(lake, dt, tracked.model_dir, EVAL, str(root / "cache"), max_users=20, arm="random")
    return lake, dt, tracked.model_dir, root


def test_the_day_has_two_arms_on_the_same_users(two_arms):
    lake, dt, _, _ = two_arms
    assert [a["strategy"] for a in published_arms(lake, dt)] == ["dealrec", "random"]
    primary, control = (lake.require_manifest(p, dt) for p in ("evaluation", "evaluation/arm=random"))
    assert primary["config"] == control["config"]  # same users (max_users, seed) and generation settings
    assert primary["inputs"]["samples"] == control["inputs"]["samples"]
    assert primary["inputs"]["adapter"] != control["inputs"]["adapter"]  # each arm its own weights


def test_gate_promotes_the_best_arm_records_the_lift_and_nests_the_arms(two_arms, cfg):
    lake, dt, model_dir, _ = two_arms
    versions = {arm: register(lake, dt, model_dir, cfg, KEY, arm=arm).counts["version"] for arm in (None, "random")}
    tr = Tracking(cfg)
    tagged = {arm: reg.get_version(tr, cfg.model_name, v).tags for arm, v in versions.items()}
    assert tagged[None]["strategy"] == "dealrec" and tagged["random"]["strategy"] == "random"
    assert tagged["random"]["adapter_uri"] == lake.partition("adapters/arm=random", dt)
    assert tagged["random"]["coreset_uri"] == lake.partition("coreset/arm=random", dt)

    none = evaluate_champion(lake, dt, model_dir, EVAL, cfg, max_users=20)
    assert none.counts == {"champion": None} and "no champion yet" in none.notes[0]

    first = gate(lake, dt, cfg, list(versions.values()), KEY)
    metric = cfg.metric
    values = {arm: float(tagged[arm][reg.eval_tag(metric)]) for arm in versions}
    best = max(versions, key=lambda a: (values[a], a is None))
    assert first.counts["decision"] == "champion" and first.counts["champion"] == versions[best]
    assert first.counts["lift_vs_random"] == pytest.approx(values[best] - values["random"], abs=1e-6)
    assert first.counts["primary_vs_random"] == pytest.approx(values[None] - values["random"], abs=1e-6)
    record, _ = lake.read_verified_json("gate", dt, "gate.json")
    assert [a["strategy"] for a in record["arms"]] == ["dealrec", "random"] and record["decision"] == "champion"
    assert lake.read_verified_bytes("gate", dt, "arms.png").startswith(b"\x89PNG")
    day_runs = tr.search_runs("tags.dealrec_kind = 'day'")
    assert len(day_runs) == 1 and day_runs[0].data.metrics["lift_vs_random"] == pytest.approx(
        first.counts["lift_vs_random"], abs=1e-6
    )
    children = tr.search_runs(f"tags.mlflow.parentRunId = '{day_runs[0].info.run_id}'")
    assert len(children) == 2  # one run per arm under the day's run

    again = gate(lake, dt, cfg, list(versions.values()), KEY)  # a retry: the decision stands, nothing duplicated
    assert not again.changed and again.counts["champion"] == versions[best]
    assert len(tr.search_runs("tags.dealrec_kind = 'day'")) == 1


def test_the_champion_is_re_evaluated_on_the_days_users_once_and_that_number_decides(two_arms, cfg):
    lake, dt, model_dir, _ = two_arms
    tr = Tracking(cfg)
    primary = register(lake, dt, model_dir, cfg, KEY).counts["version"]
    control = register(lake, dt, model_dir, cfg, KEY, arm="random").counts["version"]
    reg.promote_if_better(tr, cfg.model_name, primary, cfg.metric, cfg.margin)
    # Pretend the champion is an earlier day's: today's users are not the ones it was evaluated on.
    reg.set_tags(tr, cfg.model_name, primary, {"dt": "2026-01-04"})

    evaluated = evaluate_champion(lake, dt, model_dir, EVAL, cfg, str(two_arms[3] / "cache"), max_users=20)
    assert evaluated.counts["champion"] == primary and evaluated.counts["evaluated"] and evaluated.changed
    assert evaluated.uris["evaluation"] == lake.partition(f"evaluation/version={primary}", dt)
    cached = evaluate_champion(lake, dt, model_dir, EVAL, cfg, str(two_arms[3] / "cache"), max_users=20)
    assert not cached.changed and cached.counts == evaluated.counts  # a retry or a second arm: no re-evaluation
    same_users = lake.require_manifest(f"evaluation/version={primary}", dt)["metrics"][cfg.metric]
    # Same adapter, same users, same settings: the re-evaluation gives the champion's own number back.
    assert same_users == pytest.approx(float(reg.get_version(tr, cfg.model_name, primary).tags["eval.ndcg_at_20"]))

    decided = gate(lake, dt, cfg, [control], KEY)
    tags = reg.get_version(tr, cfg.model_name, control).tags
    assert tags["promotion.comparable"] == "true" and "re-evaluated on the same users" in tags["promotion.reason"]
    assert float(tags["promotion.champion_value"]) == pytest.approx(same_users)
    assert decided.counts["champion"] in (primary, control)

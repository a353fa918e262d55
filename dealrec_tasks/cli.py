"""``dealrec``: every pipeline step from the command line, no Airflow needed.

Options of a step are generated from its config dataclass (names, defaults, help), so the CLI and the configs
cannot drift apart. Errors the user can fix print one line naming the file, row or parameter and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass

from dealrec_tasks import steps
from dealrec_tasks.catalogue import CORESET, arm_dataset, source
from dealrec_tasks.config import (
    CompactConfig,
    Day,
    ImportConfig,
    IngestConfig,
    ReplayConfig,
    S3Config,
    SamplesConfig,
    SyntheticConfig,
    check_dataset_name,
)
from dealrec_tasks.errors import DealrecError
from dealrec_tasks.llm.config import EffortConfig, EvalConfig, FinetuneConfig, LoRAConfig, TinyLLMConfig
from dealrec_tasks.progress import progress
from dealrec_tasks.scoring.config import InfluenceConfig
from dealrec_tasks.selection import SelectConfig
from dealrec_tasks.sharding import parse_shard
from dealrec_tasks.steps import llm as llm_steps
from dealrec_tasks.storage import Lake, Storage
from dealrec_tasks.surrogate.config import SurrogateConfig
from dealrec_tasks.tracking.config import TrackingConfig

DEFAULT_LAKE = "var/lake"


def _add_config_options(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        # argparse %-formats help strings: a literal '%' of a config's help ("cosine to 10 %") broke --help
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            parser.add_argument(flag, dest=f.name, nargs="+", type=item, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text)


def _config(cls: type, args: argparse.Namespace):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _lake(args: argparse.Namespace) -> Lake:
    return Lake(args.lake, Storage(S3Config.from_env()))


def _print(result: steps.StepResult, as_json: bool) -> None:
    for note in result.notes:
        print(note, file=sys.stderr)
    print(json.dumps(result.to_dict(), default=str) if as_json else result.summary())


def cmd_import(args: argparse.Namespace) -> list[steps.StepResult]:
    return [steps.import_dealrec(args.directory, _lake(args), _config(ImportConfig, args))]


def cmd_replay(args: argparse.Namespace) -> list[steps.StepResult]:
    return [steps.replay(_lake(args), _config(ReplayConfig, args))]


def cmd_synthetic(args: argparse.Namespace) -> list[steps.StepResult]:
    return [steps.synthetic(_lake(args), _config(SyntheticConfig, args))]


def cmd_ingest(args: argparse.Namespace) -> list[steps.StepResult]:
    lake, cfg = _lake(args), _config(IngestConfig, args)
    if args.all == (args.dt is not None):
        raise DealrecError("ingest: give exactly one of --dt YYYY-MM-DD or --all")
    days = steps.pending_days(lake) if args.all else [args.dt]
    results = []
    for dt in progress(days, desc="ingesting days", unit="day"):
        results.append(steps.ingest(lake, dt, cfg, allow_future=args.allow_future))
    if args.all and not days:
        print("ingest --all: no pending days", file=sys.stderr)
    return results


def cmd_compact(args: argparse.Namespace) -> list[steps.StepResult]:
    return [steps.compact(_lake(args), args.dt, _config(CompactConfig, args))]


def cmd_samples(args: argparse.Namespace) -> list[steps.StepResult]:
    lake, cfg = _lake(args), _config(SamplesConfig, args)
    if (args.dt is None) == (args.dataset is None):
        raise DealrecError("samples: give exactly one of --dt YYYY-MM-DD or --dataset NAME")
    if args.dataset:
        return [steps.samples_from_dataset(lake, args.dataset, cfg)]
    return [steps.samples(lake, args.dt, cfg)]


def _model(args: argparse.Namespace) -> str:
    """``--model``, or the shipped embedded model (verified against its manifest) when it is not given."""
    return llm_steps.base_model_dir(args.model)


def cmd_demo(args: argparse.Namespace) -> list[steps.StepResult]:
    """The main job on embedded defaults; results are printed as each step finishes."""
    from dealrec_tasks.steps.pipeline import DemoConfig, demo

    lake = _lake(args)
    dt = demo(lake, _model(args), args.work_dir, DemoConfig(), lambda r: _print(r, args.json))
    if not args.json:
        print(
            f"\nDone for dt={dt}. Look at:\n"
            f"  coreset      {lake.partition('coreset', dt)}/coreset.parquet (+ report.png, _manifest.json)\n"
            f"  rejects      {lake.partition('rejects', dt)}/rejects.parquet\n"
            f"  adapter      {lake.partition('adapters', dt)}/ (base model: {_model(args)})\n"
            f"  evaluation   {lake.partition('evaluation', dt)}/metrics.json, examples.json\n"
            f"  surrogate    {lake.partition('surrogate', dt)}/metrics.json"
        )
    return []


def cmd_tiny_llm(args: argparse.Namespace) -> list[steps.StepResult]:
    cfg = _config(TinyLLMConfig, args)
    lake = _lake(args)
    return [llm_steps.tiny_llm(lake, args.out, cfg, args.dt, rebuild=args.rebuild, dataset=args.dataset)]


def cmd_effort(args: argparse.Namespace) -> list[steps.StepResult]:
    cfg, lora = _config(EffortConfig, args), _config(LoRAConfig, args)
    dt, dataset = _dt_or_dataset(args)
    shard, cache = parse_shard(args.shard), not args.no_cache
    return [llm_steps.effort(_lake(args), dt, _model(args), cfg, lora, shard, dataset=dataset, use_cache=cache)]


def cmd_merge_effort(args: argparse.Namespace) -> list[steps.StepResult]:
    dt, dataset = _dt_or_dataset(args)
    return [llm_steps.merge_effort(_lake(args), dt, args.shards, dataset=dataset)]


def cmd_finetune(args: argparse.Namespace) -> list[steps.StepResult]:
    cfg, lora = _config(FinetuneConfig, args), _config(LoRAConfig, args)
    lake, (dt, dataset) = _lake(args), _dt_or_dataset(args)
    src = source(dt, dataset)
    coreset = lake.partition(arm_dataset(src.path(CORESET), args.arm), src.dt) if args.arm else None
    work, n = args.work_dir, args.from_samples
    return [llm_steps.finetune(lake, dt, _model(args), cfg, lora, work, n, coreset=coreset, dataset=dataset)]


def cmd_evaluate(args: argparse.Namespace) -> list[steps.StepResult]:
    cfg = _config(EvalConfig, args)
    dt, dataset = _dt_or_dataset(args)
    return [
        llm_steps.evaluate(
            _lake(args),
            dt,
            _model(args),
            cfg,
            args.cache_dir,
            adapter=not args.base_only,
            max_users=args.max_users,
            arm=args.arm,
            dataset=dataset,
        )
    ]


def _dt_or_dataset(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if (args.dt is None) == (args.dataset is None):
        raise DealrecError(f"{args.command}: give exactly one of --dt YYYY-MM-DD or --dataset NAME")
    return args.dt, args.dataset


def cmd_surrogate(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.surrogate import train_surrogate

    dt, dataset = _dt_or_dataset(args)
    return [train_surrogate(_lake(args), dt, _config(SurrogateConfig, args), dataset=dataset)]


def cmd_influence_solve(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.influence import solve_influence

    dt, dataset = _dt_or_dataset(args)
    return [solve_influence(_lake(args), dt, _config(InfluenceConfig, args), dataset=dataset)]


def cmd_influence(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.influence import score_influence

    dt, dataset = _dt_or_dataset(args)
    cfg = _config(InfluenceConfig, args)
    return [score_influence(_lake(args), dt, cfg, parse_shard(args.shard), dataset=dataset)]


def cmd_merge_influence(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.influence import merge_influence

    dt, dataset = _dt_or_dataset(args)
    return [merge_influence(_lake(args), dt, args.shards, dataset=dataset)]


def cmd_select(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.select import select

    if args.ratio is not None and args.n == SelectConfig.n:  # --ratio replaces the default n
        args.n = None
    dt, dataset = _dt_or_dataset(args)
    return [select(_lake(args), dt, _config(SelectConfig, args), control=args.control, dataset=dataset)]


def cmd_track_pruning(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.tracking import log_pruning

    cfg = _config(TrackingConfig, args)
    return [log_pruning(_lake(args), args.dt, cfg, args.orchestrator_run_id, arm=args.arm)]


def cmd_register(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.tracking import register

    cfg = _config(TrackingConfig, args)
    return [register(_lake(args), args.dt, _model(args), cfg, args.orchestrator_run_id, arm=args.arm)]


def cmd_evaluate_champion(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.gate import evaluate_champion

    lake, eval_cfg, cfg = _lake(args), _config(EvalConfig, args), _config(TrackingConfig, args)
    return [evaluate_champion(lake, args.dt, _model(args), eval_cfg, cfg, args.cache_dir, max_users=args.max_users)]


def cmd_gate(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.gate import gate

    return [gate(_lake(args), args.dt, _config(TrackingConfig, args), args.versions, args.orchestrator_run_id)]


def cmd_promote(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.tracking import promote

    return [promote(_config(TrackingConfig, args), args.version, args.reason)]


def cmd_rollback(args: argparse.Namespace) -> list[steps.StepResult]:
    from dealrec_tasks.steps.tracking import rollback

    return [rollback(_config(TrackingConfig, args), args.reason)]


def cmd_days(args: argparse.Namespace) -> list[steps.StepResult]:
    """What each day reached (the DEALRec view in Airflow shows the same): a table, or one day in full."""
    from dealrec_tasks.days import MlflowLinks, day_detail, list_days

    lake = _lake(args)
    if args.dt:
        tracking = _config(TrackingConfig, args) if args.mlflow else None
        detail = day_detail(lake, args.dt, tracking, MlflowLinks(os.environ.get("DEALREC_MLFLOW_UI_URL") or None))
        if args.json:
            print(json.dumps(detail, default=str))
        else:
            shown = {k: v for k, v in detail.items() if k != "scores"}
            print(json.dumps(shown, indent=2, default=str))
        return []
    days = list_days(lake)
    for note in days.notes:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(days, default=str))
        return []
    if not days:
        print(f"{lake.uri()}: no day published yet (run `dealrec demo`, or the dealrec_daily DAG)")
        return []
    from dealrec_tasks.days_page import interval_text

    print(
        f"{'dt':<11} {'status':<38} {'coreset':>15} {'strategy':<9} {'pruned':>6} {'items (random)':>15} "
        f"{'ndcg@20':>7}  {'primary - random [95%]':<36} {'gate':<8} running verdict"
    )
    for d in days:
        size = f"{d['selected']}/{d['candidates']}" if d["selected"] is not None else "-"
        items = f"{d['items_coreset']} ({d['items_random']})" if d["items_coreset"] is not None else "-"
        ndcg = f"{d['ndcg@20']:.4f}" if d["ndcg@20"] is not None else "-"
        strategy, pruned = d["strategy"] or "-", "-" if d["pruned"] is None else d["pruned"]
        vs, gate, verdict = interval_text(d["vs_random"]), d["decision"] or "-", d["verdict"] or "-"
        print(
            f"{d['dt']:<11} {d['status']:<38} {size:>15} {strategy:<9} {pruned:>6} {items:>15} {ndcg:>7}  "
            f"{vs:<36} {gate:<8} {verdict}"
        )
    return []


@dataclass(frozen=True)
class Command:
    """A subcommand: its function, the configs whose fields become options, and its own arguments."""

    run: Callable[[argparse.Namespace], list[steps.StepResult]]
    help: str
    configs: tuple[type, ...] = ()
    arguments: tuple[tuple[tuple[str, ...], dict], ...] = ()


def arg(*flags: str, **kwargs) -> tuple[tuple[str, ...], dict]:
    return flags, kwargs


DEFAULT_MODEL = "var/models/tiny-llm"
DT = arg("--dt", help="partition day YYYY-MM-DD")
DT_REQUIRED = arg("--dt", required=True, help="partition day YYYY-MM-DD")
DATASET = arg("--dataset", help="an imported dataset (datasets/<name>/) instead of a day")
ARM = arg("--arm", default=None, help="a control arm's strategy (partitions below arm=<strategy>/); default: primary")
MODEL = arg(
    "--model",
    default="",
    help="local Hugging Face causal LM directory (default: the embedded model shipped in the package; "
    "dealrec tiny-llm builds one for another catalogue)",
)
ORCHESTRATOR_RUN = arg(
    "--orchestrator-run-id",
    default="manual",
    help="run id of the orchestrator (a retry with the same id finds its MLflow run instead of adding one)",
)
REASON = arg("--reason", required=True, help="why (stored as a tag on the model versions)")

COMMANDS: dict[str, Command] = {
    "import-dealrec": Command(
        cmd_import,
        "import the paper's release (sequential_*.txt + items.parquet)",
        (ImportConfig,),
        (arg("directory", help="folder with sequential_{train,valid,test}.txt and items.parquet"),),
    ),
    "replay": Command(cmd_replay, "cut an imported dataset into daily log partitions (a replay)", (ReplayConfig,)),
    "synthetic": Command(cmd_synthetic, "generate a synthetic catalogue and daily logs", (SyntheticConfig,)),
    "ingest": Command(
        cmd_ingest,
        "validate a day's logs, quarantine bad rows, extend vocab and sequences",
        (IngestConfig,),
        (
            DT,
            arg("--all", action="store_true", help="ingest every pending log day in order"),
            arg(
                "--allow-future",
                action="store_true",
                help="ingest a day after tomorrow (UTC) on purpose (refused otherwise: once ingested, it refuses "
                "every earlier day)",
            ),
        ),
    ),
    "compact": Command(
        cmd_compact,
        "fold the sequence deltas into a snapshot at a day when due (ingest writes only each day's events)",
        (CompactConfig,),
        (DT_REQUIRED,),
    ),
    "samples": Command(
        cmd_samples,
        "build one training sample per user (+ valid/test rows) for a day",
        (SamplesConfig,),
        (DT, arg("--dataset", help="build samples of an imported dataset with its own split instead")),
    ),
    "tiny-llm": Command(
        cmd_tiny_llm,
        "build the embedded LLaMA: BPE tokenizer on the catalogue, pretrained on it and on interactions up to "
        "dt - corpus_gap_days",
        (TinyLLMConfig,),
        (
            arg("--dt", help="the first day it serves (default: the last ingested day); later days reuse it"),
            DATASET,
            arg("--out", default=DEFAULT_MODEL, help="model directory (default %(default)s)"),
            arg("--rebuild", action="store_true", help="rebuild even when a matching model exists"),
        ),
    ),
    "effort": Command(
        cmd_effort,
        "effort scores of the training samples (one shard)",
        (EffortConfig, LoRAConfig),
        (
            DT,
            DATASET,
            MODEL,
            arg("--shard", default="0/1", help="score slice i of n (0-based), e.g. 2/8"),
            arg("--no-cache", action="store_true", help="score every prompt, not only those the cache lacks"),
        ),
    ),
    "merge-effort": Command(
        cmd_merge_effort,
        "merge the effort shards of a day",
        (),
        (DT, DATASET, arg("--shards", type=int, required=True, help="number of shards to merge")),
    ),
    "finetune": Command(
        cmd_finetune,
        "LoRA fine-tuning on the day's coreset",
        (FinetuneConfig, LoRAConfig),
        (
            DT,
            DATASET,
            MODEL,
            arg("--work-dir", default="var/work/finetune", help="per-epoch checkpoints, for resume"),
            arg("--from-samples", type=int, default=0, help="without a coreset: N random training samples"),
            ARM,
        ),
    ),
    "evaluate": Command(
        cmd_evaluate,
        "grounded evaluation: generate a title, embed, rank all items",
        (EvalConfig,),
        (
            DT,
            DATASET,
            MODEL,
            arg("--cache-dir", default="var/cache/embeddings", help="item embedding cache (default %(default)s)"),
            arg("--base-only", action="store_true", help="evaluate the base model without the adapter"),
            arg("--max-users", type=int, default=0, help="evaluate a seeded random subset of test users (0: all)"),
            ARM,
        ),
    ),
    "surrogate": Command(
        cmd_surrogate,
        "train the SASRec surrogates (--members of them; warm start from the previous day's checkpoint)",
        (SurrogateConfig,),
        (DT, DATASET),
    ),
    "influence-solve": Command(
        cmd_influence_solve,
        "influence: mean gradient + solve once, for the shard workers",
        (InfluenceConfig,),
        (DT, DATASET),
    ),
    "influence": Command(
        cmd_influence,
        "influence scores of one shard of the training samples",
        (InfluenceConfig,),
        (DT, DATASET, arg("--shard", default="0/1", help="score slice i of n (0-based), e.g. 2/8")),
    ),
    "merge-influence": Command(
        cmd_merge_influence,
        "merge the influence shards of a day into scores_influence/",
        (),
        (DT, DATASET, arg("--shards", type=int, required=True, help="number of shards to merge")),
    ),
    "select": Command(
        cmd_select,
        "pick the day's coreset (DEALRec or a baseline strategy) -> coreset/dt=D/ (--control: coreset/arm=<s>/dt=D/)",
        (SelectConfig,),
        (
            DT,
            DATASET,
            arg("--control", action="store_true", help="a control arm measured beside the primary coreset"),
        ),
    ),
    "track-pruning": Command(
        cmd_track_pruning,
        "log the day's coreset selection as an MLflow run (params, metrics, report, manifest)",
        (TrackingConfig,),
        (DT_REQUIRED, ORCHESTRATOR_RUN, ARM),
    ),
    "register": Command(
        cmd_register,
        "log the day's fine-tuning run and register its adapter as a model version (never promotes: see gate)",
        (TrackingConfig,),
        (DT_REQUIRED, MODEL, ORCHESTRATOR_RUN, ARM),
    ),
    "evaluate-champion": Command(
        cmd_evaluate_champion,
        "the champion's adapter on the day's test users (as the arms were evaluated) -> evaluation/version=N/dt=D/",
        (EvalConfig, TrackingConfig),
        (
            DT_REQUIRED,
            MODEL,
            arg("--cache-dir", default="var/cache/embeddings", help="item embedding cache (default %(default)s)"),
            arg("--max-users", type=int, default=0, help="the arms' --max-users (the same seeded users)"),
        ),
    ),
    "gate": Command(
        cmd_gate,
        "promote the day's primary arm if its paired interval over the champion on the same users clears the margin; "
        "gate/dt=D/",
        (TrackingConfig,),
        (
            DT_REQUIRED,
            ORCHESTRATOR_RUN,
            arg("--versions", type=int, nargs="+", required=True, help="the day's registered arm versions"),
        ),
    ),
    "promote": Command(
        cmd_promote,
        "by hand: make a model version the champion (the operator's override of the gate)",
        (TrackingConfig,),
        (arg("--version", type=int, required=True, help="model version to make champion"), REASON),
    ),
    "rollback": Command(
        cmd_rollback,
        "by hand: champion back to the version that held it before",
        (TrackingConfig,),
        (REASON,),
    ),
    "days": Command(
        cmd_days,
        "what each day reached: stages, coreset, coverage vs random, metrics (--dt: one day in full)",
        (TrackingConfig,),
        (DT, arg("--mlflow", action="store_true", help="with --dt: add the day's MLflow runs, versions, decision")),
    ),
    "demo": Command(
        cmd_demo,
        "run the whole pipeline on embedded defaults (synthetic data, local lake, tiny LLM)",
        (),
        (MODEL, arg("--work-dir", default="var/work", help="checkpoints and caches (default %(default)s)")),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dealrec", description="DEALRec data-efficient fine-tuning pipeline")
    parser.add_argument(
        "--lake",
        default=os.environ.get("DEALREC_LAKE", DEFAULT_LAKE),
        help="lake root: a path, file:// or s3:// URI (env DEALREC_LAKE; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON lines instead of summaries")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        for flags, kwargs in command.arguments:
            p.add_argument(*flags, **kwargs)
        for cls in command.configs:
            _add_config_options(p, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        if getattr(args, "dt", None) is not None:
            args.dt = Day(args.dt)  # checked once, here at the edge; steps take it as it is
        if getattr(args, "dataset", None) is not None:  # a folder name: checked before any path is built from it
            args.dataset = check_dataset_name(args.dataset)
        results = COMMANDS[args.command].run(args)
    except DealrecError as exc:
        print(f"dealrec {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    for result in results:
        _print(result, args.json)
    if not args.json:
        print(f"dealrec {args.command}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

from dealrec_tasks import steps
from dealrec_tasks.config import ImportConfig, IngestConfig, ReplayConfig, S3Config, SamplesConfig, SyntheticConfig
from dealrec_tasks.errors import DealrecError
from dealrec_tasks.progress import progress
from dealrec_tasks.storage import Lake, Storage

DEFAULT_LAKE = "var/lake"


def _add_config_options(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if kind is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text)


def _config(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


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
        results.append(steps.ingest(lake, dt, cfg))
    if args.all and not days:
        print("ingest --all: no pending days", file=sys.stderr)
    return results


def cmd_samples(args: argparse.Namespace) -> list[steps.StepResult]:
    lake, cfg = _lake(args), _config(SamplesConfig, args)
    if (args.dt is None) == (args.dataset is None):
        raise DealrecError("samples: give exactly one of --dt YYYY-MM-DD or --dataset NAME")
    if args.dataset:
        return [steps.samples_from_dataset(lake, args.dataset, cfg)]
    return [steps.samples(lake, args.dt, cfg)]


def cmd_demo(args: argparse.Namespace) -> list[steps.StepResult]:
    """The main job on embedded defaults: synthetic logs -> daily ingest -> samples for the last day."""
    lake = _lake(args)
    synth = steps.synthetic(lake, SyntheticConfig(bad_rows=25))
    results = [synth]
    for dt in progress(steps.log_days(lake), desc="ingesting days", unit="day"):  # ingested days are no-ops
        results.append(steps.ingest(lake, dt, IngestConfig()))
    results.append(steps.samples(lake, synth.counts["last_dt"], SamplesConfig()))
    return results


COMMANDS: dict[str, tuple[Callable, type | None, str]] = {
    "import-dealrec": (
        cmd_import,
        ImportConfig,
        "import the paper's release format (sequential_*.txt + items.parquet)",
    ),
    "replay": (cmd_replay, ReplayConfig, "cut an imported dataset into daily log partitions (a replay)"),
    "synthetic": (cmd_synthetic, SyntheticConfig, "generate a synthetic catalogue and daily logs"),
    "ingest": (cmd_ingest, IngestConfig, "validate a day's logs, quarantine bad rows, extend vocab and sequences"),
    "samples": (cmd_samples, SamplesConfig, "build one training sample per user (+ valid/test rows) for a day"),
    "demo": (cmd_demo, None, "run the main job on embedded defaults (synthetic data, local lake)"),
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
    for name, (_, cls, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "import-dealrec":
            p.add_argument("directory", help="folder with sequential_{train,valid,test}.txt and items.parquet")
        if name in ("ingest", "samples"):
            p.add_argument("--dt", help="partition day YYYY-MM-DD")
        if name == "ingest":
            p.add_argument("--all", action="store_true", help="ingest every pending log day in order")
        if name == "samples":
            p.add_argument("--dataset", help="build samples of an imported dataset with its own split instead")
        if cls is not None:
            _add_config_options(p, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        results = COMMANDS[args.command][0](args)
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

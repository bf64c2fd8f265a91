"""The ``splitnet`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from .config import EXPERIMENTS_FILE, SPLIT_METHODS, STAGES, TRAINING_STAGES, command_name, load_registry
from .data.errors import DataError
from .io import os_error_text
from .reports import cmd_figures, cmd_gap_study, cmd_study, cmd_tables, cmd_track
from .spec import SpecError, SplitSpec

EXIT_BAD_INPUT = 2
EXIT_UNEXPECTED = 1
RESULTS_COMMANDS = ("tables", "figures", "track", "study", "gap-study")  # they read and write under --results


def _add_extra_seeds(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--extra-seeds",
        action="store_true",
        help="also read the extra seeds of the rows in the scale's seed_groups (params/scales.yaml)",
    )


def resolve_split(text: str, params_dir: Path) -> SplitSpec:
    """A G3-G2-G1 string, or the name of a split row in ``params/experiments.yaml`` (its group.split)."""
    if any(ch.isdigit() for ch in text) and "-" in text:
        try:
            return SplitSpec.parse(text)  # looks like a spec: report what is wrong with it
        except SpecError as err:
            raise SpecError(f"--split {text!r}: {err}") from None
    registry = load_registry(params_dir)
    named = {
        name: row["group"]["split"] for name, row in registry["experiments"].items() if row["method"] in SPLIT_METHODS
    }
    if text in named:
        return SplitSpec.parse(named[text])
    raise SpecError(
        f"--split {text!r} is neither a G3-G2-G1 spec (e.g. 2-4-4) nor a split row of "
        f"{params_dir / EXPERIMENTS_FILE}: {', '.join(named)}"
    )


def cmd_summary(args: argparse.Namespace) -> int:
    from .artifacts import plan_from_dict
    from .model import WideResNet
    from .source_checks import SourceRule, load_source
    from .summary import format_summary, summarize
    from .validate import check_split_fits, check_summary, dense_plan

    check_summary(args)
    if args.model:  # the learned groups of a split model file (results/runs/.../split/model.pt)
        rule = SourceRule("split", "a split/model.pt or finetune/model.pt of a splitnet or random row")
        blob = load_source(Path(args.model), "--model", rule, "summary --model")
        plan = plan_from_dict(blob["plan"])
        result = summarize(
            WideResNet(plan),
            SplitSpec.parse(blob["split"]),
            (plan.in_channels, args.image_size, args.image_size),
            partition=blob["partition"],
            convention=blob["convention"],
            layout=blob["layout"],
        )
    else:
        spec = resolve_split(args.split, Path(args.params_dir))
        plan = dense_plan(args.arch, args.in_channels, args.num_classes, f"--arch {args.arch}")
        check_split_fits(spec, plan, f"--split {args.split}", args.arch)
        result = summarize(
            WideResNet(plan),
            spec,
            (args.in_channels, args.image_size, args.image_size),
            convention=args.convention,
            layout=args.layout,
        )
    print(json.dumps(result, indent=2) if args.json else format_summary(result))
    return 0


def _run_config(args: argparse.Namespace) -> dict:
    """The resolved config of ``--experiment`` at ``--scale``, once every input of the stage
    command has been checked (nothing is computed or written before)."""
    from .config import load_registry, resolve
    from .validate import check_names, check_stage

    registry = load_registry(args.params_dir)
    check_names(registry, Path(args.params_dir), args.experiment, args.scale)
    cfg = resolve(registry, args.experiment, args.scale, getattr(args, "seed", None))
    check_stage(args, registry, cfg)
    return cfg


def cmd_stage(args: argparse.Namespace) -> int:
    from . import stages
    from .engine import EXIT_PREEMPTED, NonFiniteLoss, Preempted

    cfg = _run_config(args)
    out = Path(args.out)
    try:
        if args.command == "prepare-data":
            stages.stage_prepare_data(cfg, out)
        elif args.command == "train":
            stages.stage_train(cfg, Path(args.data), out, args.resume)
        elif args.command == "learn-groups":
            stages.stage_learn_groups(
                cfg, Path(args.data), out, Path(args.baseline) if args.baseline else None, args.resume
            )
        elif args.command == "split":
            stages.stage_split(cfg, Path(args.source), out)
        elif args.command == "finetune" and args.parallel:  # one process per worker (torchrun / srun)
            from .parallel.finetune import finetune_from_env

            timeout = {} if args.timeout is None else {"timeout_s": args.timeout}
            finetune_from_env(cfg, Path(args.data), Path(args.source), out, args.resume, **timeout)
        elif args.command == "finetune":
            stages.stage_finetune(cfg, Path(args.data), Path(args.source), out, args.resume)
        elif args.command == "evaluate":
            stages.stage_evaluate(cfg, Path(args.data), Path(args.source), out)
    except Preempted:
        return EXIT_PREEMPTED
    except NonFiniteLoss as err:
        print(f"splitnet {args.command}: {err}", file=sys.stderr)
        return 3
    return 0


def seed_arg(text: str) -> int:
    if not text.isdigit() or int(text) > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed (an integer from 0 to 2^32-1)")
    return int(text)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``splitnet <command>: error: ...`` (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="splitnet", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="per-layer and total params/FLOPs of a split WRN vs the unsplit one")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--split", help="G3-G2-G1 spec (1-1-4, 1-2-2, 2-2-2, 2-4-4) or a split row's name (shallow, deep, ...)"
    )
    what.add_argument("--model", help="a split model file: count its learned (unequal) groups instead")
    p.add_argument("--arch", default="wrn-16-8", help="wrn-<depth>-<width> (default wrn-16-8)")
    p.add_argument(
        "--convention",
        choices=("shared", "partitioned"),
        default="shared",
        help="inputs of a split stage's first layers: whole parent branch (shared, reproduces the paper) or learned partition (official code)",
    )
    p.add_argument("--layout", choices=("preact", "official"), default="preact", help="split unit layout")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--params-dir", default="params", help="where experiments.yaml lives (default ./params)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_summary)

    for stage, about in STAGES.items():
        name = command_name(stage)
        p = sub.add_parser(name, help=about.summary)
        p.add_argument("--experiment", required=True, help="row id in params/experiments.yaml (e.g. deep)")
        p.add_argument(
            "--scale", default="cpu", help="a scale of params/scales.yaml (cpu, planted, smoke, ci, paper, paper_fp32)"
        )
        p.add_argument("--params-dir", default="params")
        p.add_argument("--out", required=True, help="this stage's output directory")
        if stage != "prepare_data":
            p.add_argument(
                "--seed",
                type=seed_arg,
                default=None,
                help="engine seed: weights, assignment init, data order (default: the scale's first seed)",
            )
            p.add_argument("--data", required=stage != "split", help="prepared data directory")
        if stage in ("split", "finetune", "evaluate"):
            p.add_argument("--source", required=True, help="model file of the previous stage")
        if stage == "learn_groups":
            p.add_argument(
                "--baseline", help="baseline model file (SSL and groupings with group.init baseline start from it)"
            )
        if stage in TRAINING_STAGES:
            p.add_argument("--resume", action="store_true", help="continue from this stage's checkpoint if present")
        if stage == "finetune":
            p.add_argument(
                "--parallel",
                action="store_true",
                help="model-parallel over the workers torchrun/srun started, one process each (docs/parallel.md)",
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=None,
                help="--parallel: seconds a collective waits for the other workers before failing "
                "(default: splitnet.parallel.workers.DEFAULT_TIMEOUT_S)",
            )
        p.set_defaults(func=cmd_stage)

    p = sub.add_parser("tables", help="render Tables 1/2, class groups and the architecture check from results")
    p.add_argument("--scale", default="cpu")
    p.add_argument("--params-dir", default="params")
    p.add_argument("--results", default="results")
    _add_extra_seeds(p)
    p.add_argument(
        "--gap-study",
        action="store_true",
        help="the claims also read the gap study's runs (params/experiments.yaml: gap_study)",
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="render even though some rows or seeds have not finished (their cells stay empty); "
        "without it, missing runs are an error",
    )
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("figures", help="Fig. 1/2 analogues (assignment dynamics, block structure) as PNG + PDF")
    p.add_argument("--scale", default="cpu")
    p.add_argument("--params-dir", default="params")
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("study", help="the grouping study: class-group ARI per dataset and preset (grouping_study.csv)")
    p.add_argument("--scale", default="cpu", help="whose tables/ and figures/ directories receive the study")
    p.add_argument("--params-dir", default="params")
    p.add_argument("--results", default="results", help="reads <results>/<dataset's scale>/runs/<row@preset>/...")
    p.add_argument(
        "--extended",
        action="store_true",
        help="the datasets marked `extended: true` instead (grouping_study_extended.csv)",
    )
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("gap-study", help="the gap study: the split penalty over the baseline per width (gap_study.csv)")
    p.add_argument("--scale", default="cpu", help="whose tables/ and figures/ directories receive the study")
    p.add_argument("--params-dir", default="params")
    p.add_argument("--results", default="results", help="reads <results>/<gap_study.scale>/runs/<row@width>/...")
    p.set_defaults(func=cmd_gap_study)

    p = sub.add_parser("track", help="import every run record into MLflow (serial, idempotent)")
    p.add_argument("--scale", default="cpu")
    p.add_argument("--params-dir", default="params")
    p.add_argument("--results", default="results", help="reads <results>/<scale>/runs/<experiment>/<stage>/run.json")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="default: $MLFLOW_TRACKING_URI or sqlite:///<results>/mlflow.db (one store for all scales)",
    )
    p.add_argument(
        "--summary-out", default=None, help="also write the import counts (and the URI as given) to this JSON file"
    )
    _add_extra_seeds(p)
    p.set_defaults(func=cmd_track)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; a bad input is one line on stderr and exit code 2 (``--debug``: the traceback)."""
    try:
        args, unknown = build_parser().parse_known_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return done.code if isinstance(done.code, int) else EXIT_BAD_INPUT
    if unknown:  # reported here so that the line names the command, as argparse's other errors do
        print(
            f"splitnet {args.command}: error: unrecognized arguments: {' '.join(unknown)}; "
            f"see `splitnet {args.command} --help`",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        if args.command in RESULTS_COMMANDS:
            from .validate import check_results_command

            check_results_command(args)
        return args.func(args)
    except Exception as err:
        if args.debug:
            raise
        from .partition import EmptyGroupError  # imported here: it needs torch, --help does not

        # ValueError covers ConfigError, SpecError and validate.InputError; OSError covers
        # missing, unreadable and unwritable files; an empty group is a grouping that cannot be cut.
        if isinstance(err, (ValueError, OSError, DataError, EmptyGroupError)):
            message = _one_line(err)
            if isinstance(err, OSError) and err.filename is not None and err.errno is not None:
                # "[Errno 28] No space left on device: 'x'" says what failed but not what to do
                out = "--results" if args.command in RESULTS_COMMANDS else "--out"
                message = f"{err.filename}: {os_error_text(err, out)}"
            if isinstance(err, DataError) and args.command == "prepare-data" and message.startswith("data."):
                # the data layer names its keys "data.<key>": say which params file and scale hold them
                message = f"{Path(args.params_dir) / 'scales.yaml'}: scales.{args.scale}.{message}"
            print(f"splitnet {args.command}: error: {message}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if type(err).__name__ == "WorkerFailure":  # splitnet.parallel: a worker died or hung
            print(f"splitnet {args.command}: error: {_one_line(err)}", file=sys.stderr)
            return EXIT_UNEXPECTED
        print(
            f"splitnet {args.command}: error: unexpected {type(err).__name__}: {_one_line(err)}; "
            f"rerun with `splitnet --debug {args.command} ...` for the traceback",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())

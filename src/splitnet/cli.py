"""The ``splitnet`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .spec import SpecError, SplitSpec, load_named_splits


def resolve_split(text: str, params_dir: Path) -> SplitSpec:
    """A G3-G2-G1 string, or a name from ``params/splits.yaml``."""
    if any(ch.isdigit() for ch in text) and "-" in text:
        return SplitSpec.parse(text)  # looks like a spec: report what is wrong with it
    splits_file = params_dir / "splits.yaml"
    named = load_named_splits(splits_file) if splits_file.exists() else {}
    if text in named:
        return named[text]
    known = ", ".join(sorted(named)) or f"none ({splits_file} not found)"
    raise SpecError(f"--split {text!r} is neither a G3-G2-G1 spec (e.g. 2-4-4) nor a known name: {known}")


def cmd_summary(args: argparse.Namespace) -> int:
    from .model import wide_resnet
    from .summary import format_summary, summarize

    spec = resolve_split(args.split, Path(args.params_dir))
    dense = wide_resnet(args.arch, in_channels=args.in_channels, num_classes=args.num_classes)
    result = summarize(
        dense,
        spec,
        (args.in_channels, args.image_size, args.image_size),
        convention=args.convention,
        layout=args.layout,
    )
    print(json.dumps(result, indent=2) if args.json else format_summary(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="per-layer and total params/FLOPs of a split WRN vs the unsplit one")
    p.add_argument("--split", required=True, help="G3-G2-G1 spec (1-1-4, 1-2-2, 2-2-2, 2-4-4) or a name in params/splits.yaml")
    p.add_argument("--arch", default="wrn-16-8", help="wrn-<depth>-<width> (default wrn-16-8)")
    p.add_argument("--balanced", action="store_true", default=True, help="equal-size groups (the default)")
    p.add_argument("--convention", choices=("shared", "partitioned"), default="shared",
                   help="inputs of a split stage's first layers: whole parent branch (shared, reproduces the paper) or learned partition (official code)")
    p.add_argument("--layout", choices=("preact", "official"), default="preact", help="split unit layout")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--params-dir", default="params", help="where splits.yaml lives (default ./params)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, ValueError) as err:
        print(f"splitnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

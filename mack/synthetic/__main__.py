"""Command line: `python -m mack.synthetic --root DIR [--seed N] [--size NAME] [--dim F]`."""

from __future__ import annotations

import argparse
import logging
import sys

from mack.synthetic.generator import MAX_DIM, SIZES, generate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mack.synthetic",
        description="Write the synthetic concept world (VG-format knowledge source with "
        "bottom-up TSV features, and two SCAN precomp target datasets) into a folder.",
    )
    parser.add_argument("--root", required=True, help="output folder, created if missing")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="small",
        help="world size (default small). f30k is the 1,000-image benchmark",
    )
    parser.add_argument(
        "--dim", type=int, default=256, help=f"region feature size F, 4 to {MAX_DIM} (default 256)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep an existing world whose manifest and file hashes match",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        generate(
            args.root,
            seed=args.seed,
            size=args.size,
            dim=args.dim,
            reuse=args.reuse,
            progress=not args.quiet,
        )
    except ValueError as error:
        logging.getLogger("mack.synthetic").error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

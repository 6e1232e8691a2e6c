"""Command line: ``python -m autorestrictor COMMAND ...`` (bench, demo, bound, ...).

Each subcommand is a module of :mod:`autorestrictor.tools` with
``add_arguments(parser)`` and ``main(args) -> exit code``; adding one means
adding a line to :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: name -> (module in autorestrictor.tools, one line of help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("bench", "run workloads under several scheduling modes and compare"),
    "demo": ("demo", "seed example with and without the plugin, optional PNG"),
    "bench-plan": ("benchplan", "time the planner alone on large synthetic graphs"),
    "dasktests": ("dasktests", "run distributed's own tests with and without the plugin"),
    "bound": ("bound", "fewest bytes any plan must move at a given balance"),
    "screenshots": ("screenshots",
                    "regenerate docs/dashboard.png and docs/explain.png (Chromium)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m autorestrictor",
        description="Benchmarks and demo for the autorestrictor scheduler plugin.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        tool = importlib.import_module(f"autorestrictor.tools.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        tool.add_arguments(p)
        p.set_defaults(run=tool.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

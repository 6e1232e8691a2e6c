"""Command line: ``python -m autorestrictor COMMAND ...`` (bench, demo, bound, ...).

Adding a subcommand means writing one function decorated with
:func:`subcommand`: it receives the subcommand's ``argparse`` parser, adds its
options, and returns the function that runs it (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Runner = Callable[[argparse.Namespace], int]
_SUBCOMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], Runner]]] = []


def subcommand(name: str, help: str):
    """Register ``fn(parser) -> runner`` as the subcommand ``name``."""

    def register(fn: Callable[[argparse.ArgumentParser], Runner]):
        _SUBCOMMANDS.append((name, help, fn))
        return fn

    return register


@subcommand("bench", help="run workloads under several scheduling modes and compare")
def _bench(parser: argparse.ArgumentParser) -> Runner:
    from autorestrictor.tools import bench

    bench.add_arguments(parser)
    return bench.main


@subcommand("demo", help="seed example with and without the plugin, optional PNG")
def _demo(parser: argparse.ArgumentParser) -> Runner:
    from autorestrictor.tools import demo

    demo.add_arguments(parser)
    return demo.main


@subcommand("bench-plan", help="time the planner alone on large synthetic graphs")
def _bench_plan(parser: argparse.ArgumentParser) -> Runner:
    from autorestrictor.tools import benchplan

    benchplan.add_arguments(parser)
    return benchplan.main


@subcommand("dasktests", help="run distributed's own tests with and without the plugin")
def _dasktests(parser: argparse.ArgumentParser) -> Runner:
    from autorestrictor.tools import dasktests

    dasktests.add_arguments(parser)
    return dasktests.main


@subcommand("bound", help="fewest bytes any plan must move at a given balance")
def _bound(parser: argparse.ArgumentParser) -> Runner:
    from autorestrictor.tools import bound

    bound.add_arguments(parser)
    return bound.main


@subcommand("screenshots", help="regenerate docs/dashboard.png and docs/explain.png (Chromium)")
def _screenshots(parser: argparse.ArgumentParser) -> Runner:
    from autorestrictor.tools import screenshots

    screenshots.add_arguments(parser)
    return screenshots.main


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m autorestrictor",
        description="Benchmarks and demo for the autorestrictor scheduler plugin.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, configure in _SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(run=configure(p))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

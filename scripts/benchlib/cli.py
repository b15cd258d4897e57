"""What every benchmark script's command line shares: mailnode's options, limits, and main()."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from benchlib.report import leaf_exceptions

Options = TypeVar("Options")


def add_mailnode_arguments(parser: argparse.ArgumentParser) -> None:
    """--sqlite-synchronous and --log-level: settings of the mailnode under test."""
    parser.add_argument(
        "--sqlite-synchronous",
        choices=["full", "normal"],
        default="full",
        help="mailnode's [storage] sqlite_synchronous (default: %(default)s, mailnode's own default)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="mailnode's log_level (default: %(default)s, mailnode's own default)",
    )


def add_output_arguments(parser: argparse.ArgumentParser, timeout: float, json_path: Path) -> None:
    """--timeout and --json, with these defaults."""
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help="give up (and stop everything) after this many seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=json_path,
        help="where to write the figures (default: %(default)s)",
    )


def shared_options(args: argparse.Namespace) -> dict[str, Any]:
    """What add_mailnode_arguments() and add_output_arguments() parsed, by Options field name."""
    return {
        "sqlite_synchronous": args.sqlite_synchronous,
        "log_level": args.log_level,
        "timeout": args.timeout,
        "json_path": args.json,
    }


def run_benchmark(
    name: str, parse_args: Callable[[], Options], bench: Callable[[Options], Coroutine[Any, Any, None]]
) -> None:
    """The script's main(): bench(parse_args()) in a new event loop; on failure or interruption,
    exit with a one-line message. SIGTERM cancels it like Ctrl-C, so every child it started is
    stopped. A closed stdout (`... | head`) ends it quietly.
    """

    async def main_async(options: Options) -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await bench(options)

    with contextlib.suppress(BrokenPipeError):
        options = parse_args()
        try:
            asyncio.run(main_async(options))
        except (KeyboardInterrupt, asyncio.CancelledError):
            sys.exit("interrupted; every process the benchmark started is stopped")
        except (RuntimeError, OSError, ExceptionGroup) as exc:
            sys.exit(f"{name}: " + "; ".join(str(e) for e in leaf_exceptions(exc)))

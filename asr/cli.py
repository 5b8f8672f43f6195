"""What every script's command line shares: the parser's conventions, the common flags and the logging set-up.

The scripts own their parsers; this module only adds the shared flags to them and configures logging and
progress bars from what was parsed (the library itself never parses argv). It imports nothing heavy, so a
script can parse its arguments, and answer `--help`, before it imports torch.

    p = ArgumentParser(description=__doc__)
    add_common_flags(p)
    args = p.parse_args(argv)
    setup_logging(args, main_process=accelerator.is_main_process)
    run(..., progress=not args.no_progress)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from asr.constants import EXIT_OK, EXIT_USAGE

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Environment variables that turn off the progress bars of tqdm (read when it is imported: bars made without an
# explicit `disable`), of huggingface_hub and transformers ("Loading weights") and of datasets ("Map").
PROGRESS_OFF_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
_FALSE = ("", "0", "false", "no", "off")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written (examples keep their lines), and each option's default after its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == [] or default == "" or "%(default)" in (action.help or ""):
            return action.help  # nothing worth showing, or the help already places it
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the scripts' conventions: defaults in --help, and a usage error in one line with exit code 2."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):  # argparse prints the whole usage first: a line or ten before the reason
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (--help shows the usage)\n")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """--quiet, --log-level and --no-progress, in a group of their own at the end of --help."""
    group = parser.add_argument_group("output")
    group.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors, and no progress bars")
    group.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                       help=f"the least severe log messages shown on stderr: {', '.join(LOG_LEVELS)}")
    group.add_argument("--no-progress", action="store_true",
                       help="no progress bars (as with the environment variable TQDM_DISABLE=1), e.g. in CI logs")


def setup_logging(args: argparse.Namespace, main_process: bool = True, rank: int | None = None) -> None:
    """Logs to stderr at --log-level (WARNING with --quiet, and on every process but the main one), and settles
    whether progress bars show: `args.no_progress` becomes true with --quiet or TQDM_DISABLE set.

    Args:
        args: parsed by a parser that `add_common_flags` was given.
        main_process: False on the other processes of a multi-process run: warnings and errors only.
        rank: the process's rank, put in every line when given (multi-process scripts).
    """
    level = logging.WARNING if args.quiet or not main_process else logging.getLevelName(args.log_level)
    level = max(level, logging.getLevelName(args.log_level))
    where = f"[rank {rank}] " if rank is not None else ""
    logging.basicConfig(stream=sys.stderr, level=level, format=LOG_FORMAT.replace("%(name)s", where + "%(name)s"),
                        datefmt="%H:%M:%S")
    if level > logging.DEBUG:
        logging.getLogger("accelerate").setLevel(max(level, logging.WARNING))  # a line per saved file otherwise
    args.no_progress = (args.no_progress or args.quiet or not main_process
                        or os.environ.get("TQDM_DISABLE", "").strip().lower() not in _FALSE)
    if args.no_progress:  # the libraries' own bars (model loading, dataset maps) read these when first imported
        for name in PROGRESS_OFF_ENV:
            os.environ.setdefault(name, "1")


def run_reporting(prog: str, work: Callable[[], dict[str, Any]]) -> int:
    """Runs a model tool's `work` and prints its report as one JSON line; a ValueError (bad input, named with
    its fix) is one line on stderr and exit code 2."""
    try:
        report = work()
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report))
    return EXIT_OK


def exit_with(code: int) -> NoReturn:
    """A script's end: through `asr.launch.exit_process` when the script set up Accelerate (a process of a
    multi-process run must skip the interpreter's teardown, see asr/launch.py), else `sys.exit(code)`.

    asr.launch is looked up, not imported: a script that never needed torch does not load it to exit.
    """
    launch = sys.modules.get("asr.launch")
    if launch is not None:
        launch.exit_process(code)
    sys.exit(code)

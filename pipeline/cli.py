"""What every stage script shares: logging, the --params flag, and one-line errors for user mistakes."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Params
from pipeline.errors import ERROR_FILE_ENV, PipelineError
from pipeline.params import load_params


def quiet_progress_bars() -> None:
    """No progress bars off a terminal: under DVC or in CI, each carriage-return update would be a line of the log."""
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)  # a folder the user cannot write: their fix, not a bug


def fail(message: str) -> None:
    """`error: <message>` and exit 2. A rank that `relaunch_under_torchrun` started leaves the line for the launching
    process instead, which prints it once, in place of torchrun's traceback, and exits 2 itself."""
    errors = os.environ.get(ERROR_FILE_ENV)
    if errors:
        with open(errors, "a", encoding="utf-8") as f:
            f.write(message + "\n")
    else:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run_stage(
    main: Callable[[Params, argparse.Namespace], None],
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> None:
    """Parse args, load params.yaml, run `main`; a PipelineError becomes `error: <message>` on stderr and exit code 2."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if configure:
        configure(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("KD_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    if not sys.stderr.isatty():
        quiet_progress_bars()
    start = time.perf_counter()
    try:
        main(load_params(args.params), args)
    except PipelineError as exc:
        fail(str(exc))
    except OSError as exc:
        if exc.errno not in UNWRITABLE or exc.filename is None:
            raise
        fail(f"{exc.filename}: {exc.strerror}; make the folder writable for this user and rerun")
    print(f"{Path(sys.argv[0]).stem}: done in {time.perf_counter() - start:.1f} s (after imports)")

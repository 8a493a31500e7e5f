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
from pipeline.errors import PipelineError
from pipeline.params import load_params


def quiet_progress_bars() -> None:
    """No progress bars off a terminal: under DVC or in CI, each carriage-return update would be a line of the log."""
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)  # a folder the user cannot write: their fix, not a bug


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
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in UNWRITABLE or exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror}; make the folder writable for this user and rerun", file=sys.stderr)
        sys.exit(2)
    print(f"{Path(sys.argv[0]).stem}: done in {time.perf_counter() - start:.1f} s (after imports)")

"""The `mnv4` command line: one module per command group, each a thin layer over the package's functions. Every
failure ends here, in `main`: an MNV4Error is exit code 2, a ParityFailed exit code 1, anything else exit code 3."""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import traceback

import typer

from ..errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARITY_FAILED,
    MNV4Error,
    ParityFailed,
    one_line,
)
from ..text import printable
from . import artifact, bench, emulate, export, model, web
from .common import printed_json

app = typer.Typer(
    help="MobileNetV4: reference model, verified exports, parity and latency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class PipeClosed(Exception):
    """The reader of stdout went away (`mnv4 run ... | head -1`): nothing more to say to it."""


def _guarded(command):
    """`command` with the two failures typer would misreport made ours: a closed pipe (which it makes exit code 1,
    "parity failed") and an EOFError (which it reports as an interruption)."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            raise PipeClosed from None
        except EOFError as error:
            raise MNV4Error(f"an input ended before it should have ({one_line(error)}): a truncated file or a closed "
                            f"standard input") from None

    return run


for command, name in ((model.info, "info"), (model.predict, "predict"), (model.fixture, "fixture"),
                      (export.export_command, "export"), (artifact.run, "run"), (artifact.verify, "verify"),
                      (bench.bench, "bench"), (bench.bench_artifacts, "bench-artifacts"), (bench.report, "report"),
                      (artifact.coreml_compare, "coreml-compare"), (emulate.emulate, "emulate"), (web.web, "web")):
    app.command(name)(_guarded(command))

# Stopped by one of these, a command cleans up as Ctrl-C does (SIGHUP: a closed terminal, a dropped ssh session).
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code (see mnv4.errors): 0 ok, 1 parity failed, 2 bad input or a
    damaged file, 3 an internal error, 128 + N when stopped by signal N (141, SIGPIPE's, when the reader of its
    output went away). Every failure is one `error:` line (one per failing artifact or row for exit 1); with `--json`
    also a JSON error object on stdout where the command printed no document. `--debug`, anywhere on the command
    line, shows the traceback of an internal error."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [arg for arg in args if arg != "--debug"]
    stopped_by: list[int] = []

    def stop(signum, _frame):
        # As Ctrl-C does: the exception unwinds through every `finally`, so no partial file stays behind. What it stops
        # half-way (a library's object inside its __init__, as imageio's plugin while the photos load) may fail again
        # in its __del__ as the stack unwinds: Python's "Exception ignored" traceback, noise beside the one line.
        stopped_by.append(signum)
        sys.unraisablehook = _ignored
        raise KeyboardInterrupt

    printed_json.clear()
    # The caller's handlers and hook come back afterwards: main() is also called from Python (tests, notebooks).
    previous, unraisable_hook = {signum: signal.signal(signum, stop) for signum in SIGNALS}, sys.unraisablehook
    try:
        code, lines = app(args=args, prog_name="mnv4", standalone_mode=False), []
    except PipeClosed:
        _silence_stdout()
        return EXIT_INTERRUPTED + signal.SIGPIPE
    except Exception as error:
        # A signal may surface as another exception (a library that turns the KeyboardInterrupt raised inside its
        # import into an ImportError, say): then the signal is what happened.
        code, lines = (EXIT_OK, []) if stopped_by else _failure(error, debug)
    except KeyboardInterrupt:  # not through `stop` (which records the signal): reported below if it was one
        code, lines = EXIT_INTERRUPTED + signal.SIGINT, [] if stopped_by else ["interrupted"]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = unraisable_hook
    if stopped_by:  # typer turns KeyboardInterrupt into a plain exit 130
        code, lines = EXIT_INTERRUPTED + stopped_by[0], [f"interrupted by {signal.Signals(stopped_by[0]).name}"]
    code = code if isinstance(code, int) else EXIT_OK
    for line in lines:
        print(f"error: {printable(line)}", file=sys.stderr)
    if lines and "--json" in args and not printed_json:
        print(json.dumps({"error": "; ".join(lines), "exit_code": code}))
    return code


def _ignored(unraisable) -> None:
    """sys.unraisablehook once a signal stopped the command."""


def _failure(error: Exception, debug: bool) -> tuple[int, list[str]]:
    """A failed command's exit code and its `error:` lines."""
    try:  # typer raises click's exceptions, from its own copy of click since typer 0.2x
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click

    if isinstance(error, ParityFailed):
        return EXIT_PARITY_FAILED, error.failures
    if isinstance(error, MNV4Error):
        return EXIT_BAD_INPUT, [str(error)]
    if isinstance(error, click.NoArgsIsHelpError):
        return EXIT_BAD_INPUT, []  # the help is already on the screen
    if isinstance(error, click.UsageError):
        hint = f" (see {error.ctx.command_path} --help)" if error.ctx else ""
        return EXIT_BAD_INPUT, [f"{error.format_message()}{hint}"]
    if isinstance(error, click.ClickException):  # click's own file errors and the like
        return EXIT_BAD_INPUT, [error.format_message()]
    if debug:
        traceback.print_exception(error)
    where = "" if debug else "; run it again with --debug for the traceback"
    return EXIT_INTERNAL_ERROR, [f"internal error in mnv4 ({one_line(error)}){where}"]


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail again on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run_main() -> None:
    """The `mnv4` console script. The command's last line is its last word: what native libraries log while the
    interpreter shuts down (LiteRT's GPU accelerator destroying itself) is not shown."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    raise SystemExit(code)


if __name__ == "__main__":
    run_main()

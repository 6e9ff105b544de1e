"""The `mnv4` command line: one module per command group, each a thin layer over the package's functions. Every
failure ends here, in `main`: an MNV4Error is exit code 2, a ParityFailed exit code 1, anything else exit code 3."""
from __future__ import annotations

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
from . import artifact, bench, emulate, export, model

app = typer.Typer(
    help="MobileNetV4: reference model, verified exports, parity and latency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for command, name in ((model.info, "info"), (model.predict, "predict"), (model.fixture, "fixture"),
                      (export.export_command, "export"), (artifact.run, "run"), (artifact.verify, "verify"),
                      (bench.bench, "bench"), (bench.bench_artifacts, "bench-artifacts"), (bench.report, "report"),
                      (artifact.coreml_compare, "coreml-compare"), (emulate.emulate, "emulate")):
    app.command(name)(command)


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code (see mnv4.errors): 0 ok, 1 parity failed, 2 bad input or a
    damaged file, 3 an internal error, 128 + N when stopped by signal N. Every failure is one `error:` line;
    `--debug`, anywhere on the command line, shows the traceback of an internal error."""
    import signal
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [arg for arg in args if arg != "--debug"]
    stopped_by: list[int] = []

    def stop(signum, _frame):
        # As Ctrl-C does: the exception unwinds through every `finally`, so no partial file stays behind.
        stopped_by.append(signum)
        raise KeyboardInterrupt

    def interrupted() -> int:
        signum = stopped_by[0] if stopped_by else signal.SIGINT
        print(f"error: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return EXIT_INTERRUPTED + signum

    # The caller's handlers come back afterwards: main() is also called from Python (tests, notebooks).
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = app(args=args, prog_name="mnv4", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        return interrupted()
    except Exception as error:
        # A signal may surface as another exception (a library that turns the KeyboardInterrupt raised
        # inside its import into an ImportError, say): then the signal is what happened.
        return interrupted() if stopped_by else _failure(error, debug)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopped_by:  # typer turns KeyboardInterrupt into a plain exit 130
        return interrupted()
    return code if isinstance(code, int) else EXIT_OK


def _failure(error: Exception, debug: bool) -> int:
    """One `error:` line for a failed command, and its exit code."""
    import sys
    import traceback

    try:  # typer raises click's exceptions, from its own copy of click since typer 0.2x
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click

    if isinstance(error, ParityFailed):
        for failure in error.failures:
            print(f"error: {failure}", file=sys.stderr)
        return EXIT_PARITY_FAILED
    if isinstance(error, MNV4Error):
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(error, click.NoArgsIsHelpError):
        return EXIT_BAD_INPUT  # the help is already on the screen
    if isinstance(error, click.UsageError):
        hint = f" (see {error.ctx.command_path} --help)" if error.ctx else ""
        print(f"error: {error.format_message()}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(error, click.ClickException):  # click's own file errors and the like
        print(f"error: {error.format_message()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if debug:
        traceback.print_exception(error)
    where = "" if debug else "; run it again with --debug for the traceback"
    print(f"error: internal error in mnv4 ({one_line(error)}){where}", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


def run_main() -> None:
    """The `mnv4` console script."""
    raise SystemExit(main())


if __name__ == "__main__":
    run_main()

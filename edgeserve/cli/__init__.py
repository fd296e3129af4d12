"""The ``edgeserve`` command: a thin layer of click over the public API, one module per command family.

Heavy imports happen inside the commands, so ``edgeserve run`` never loads the converter or the benchmark."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

EXIT_RUNTIME_ERROR = 1


COMMANDS = {"convert": "convert", "inspect": "convert", "run": "run", "bench": "bench", "models": "models",
            "serve": "serve", "doctor": "guard", "drift": "guard", "audit": "guard"}
"""Command name to the module (in this package) that defines it: imported only when the command is used, so
``edgeserve run`` loads neither the converter's options nor the benchmark's."""


class _Group(click.Group):
    """Turns edgeserve errors into one line and exit code 1; usage errors stay click's (exit code 2). Loads each
    command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            import importlib

            importlib.import_module(f"{__name__}.{COMMANDS[cmd_name]}")  # registers itself on ``main``
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        from ..errors import EdgeserveError, first_line

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # `edgeserve audit REPO | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except EdgeserveError as exc:
            if _debug(ctx):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_RUNTIME_ERROR)
        except Exception as exc:
            if _debug(ctx):
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {first_line(exc)} "
                       "(run with --debug for the traceback)", err=True)
            ctx.exit(EXIT_RUNTIME_ERROR)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug")) or os.environ.get("EDGESERVE_DEBUG") == "1"


def quiet_engine_logs() -> None:
    """onnxruntime's quantisation pre-processing opens sessions with default options, whose C++ warnings ("Removing
    initializer ... It is not used by any node") reach the terminal as raw log lines the user cannot act on. The CLI
    is its own process, so it keeps the engine's default logger to errors unless --debug or --verbose asks for more
    (the Python API leaves that process-wide setting to the host; the converter's worker process quiets its own)."""
    ctx = click.get_current_context(silent=True)
    params = ctx.find_root().params if ctx is not None else {}
    if params.get("debug") or params.get("verbose") or os.environ.get("EDGESERVE_DEBUG") == "1":
        return
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show progress and info logs.")
@click.version_option(package_name="edgeserve", prog_name="edgeserve")
def main(debug: bool, verbose: bool) -> None:
    """edgeserve: convert, quantise, verify, benchmark and serve models on CPU."""
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)



__all__ = ["main"]

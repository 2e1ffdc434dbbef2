"""The ``samadapt`` command: parses options, calls the library, prints.

Every error samadapt raises on purpose is printed as one sentence and exits with code 2;
``--debug`` (or ``SAMADAPT_DEBUG=1``) shows the traceback instead. Each command group lives in
its own module; the options several commands share, and their checks, in :mod:`samadapt.cli.options`.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from samadapt.cli import annotate, data, evaluate, info, models, objects, predict, segment, serve, train
from samadapt.cli.console import stderr
from samadapt.errors import SamadaptError

app = typer.Typer(
    name="samadapt",
    help="Adapt Segment Anything (SAM, SAM 2) to remote-sensing and planetary imagery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(segment.segment)
app.command()(segment.embed)
app.command()(annotate.annotate)
app.command("train")(train.train_cmd)
app.command("evaluate")(train.evaluate_cmd)
app.command("learning-curve")(train.learning_curve_cmd)
app.command("predict")(predict.predict_cmd)
app.command("evaluate-map")(evaluate.evaluate_map_cmd)
app.command("objects")(objects.objects_cmd)
app.command()(serve.serve)
app.command()(info.info)
app.command()(info.demo)
app.add_typer(models.app, name="models")
app.add_typer(data.app, name="data")

_STATE = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    cache_max_bytes: Annotated[str | None, typer.Option("--cache-max-bytes", help="Bound of the on-disk "
                                                        "embedding cache, e.g. 20G (default: "
                                                        "$SAMADAPT_CACHE_MAX_BYTES, else 4G).")] = None,
) -> None:
    _STATE["debug"] = debug
    if cache_max_bytes is not None:
        from samadapt.predict.cache import cache_max_bytes as _bound

        os.environ["SAMADAPT_CACHE_MAX_BYTES"] = cache_max_bytes
        _bound()  # a bad value stops here, with one sentence


def _fail(message: str) -> NoReturn:
    """Print one sentence and exit 2, or re-raise for a traceback under --debug / SAMADAPT_DEBUG."""
    if _STATE["debug"] or os.environ.get("SAMADAPT_DEBUG"):
        raise  # noqa: PLE0704 - called from an except block: re-raises the error being handled
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """Warnings as users read them: one line, without the source line that raised them."""
    return f"warning: {message}\n"


def main() -> None:
    """Entry point of the console script."""
    _STATE["debug"] = False
    if not (os.environ.get("SAMADAPT_DEBUG") or "--debug" in sys.argv):
        import warnings

        warnings.formatwarning = _one_line_warning
    try:
        app()
    except SamadaptError as e:
        _fail(str(e))
    except OSError as e:  # disk full, permission, a missing device: the operating system said no
        from samadapt._io import describe_os_error

        _fail(describe_os_error(e))
    except Exception as e:
        from samadapt._io import errno_of

        code = errno_of(e)  # a library's wrapper around an operating-system failure
        if code is None:
            raise
        _fail(f"{os.strerror(code).lower()}: {e}")
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)

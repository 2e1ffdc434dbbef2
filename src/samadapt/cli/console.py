"""Where the commands print: results on standard output, notes, progress and errors on standard error."""

from __future__ import annotations

from rich.console import Console

#: Results: tables, the files written. Piped output holds only these.
stdout = Console()
#: Errors, warnings, notes and progress bars.
stderr = Console(stderr=True)


def warn_untrusted(trusted: bool) -> None:
    """Say so when a model's masks mean nothing: a random-initialised tiny test model."""
    if not trusted:
        stderr.print(
            "[bold yellow]NOTE: this model is random-initialised (a tiny test model); "
            "its masks mean nothing.[/]"
        )

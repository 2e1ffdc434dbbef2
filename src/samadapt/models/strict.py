"""Loading a transformers checkpoint strictly: every weight of the folder used, none missing or misshapen."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, cast

from samadapt.errors import CheckpointError


def quiet_from_pretrained(cls: Any, folder: Path, **kwargs: Any) -> tuple[Any, dict[str, Collection[Any]]]:  # noqa: ANN401
    """``cls.from_pretrained(folder, **kwargs)`` without transformers' progress bars and load report,
    returning the model and its loading info (missing, unexpected and misshapen keys).

    Raises:
        CheckpointError: the folder does not load at all.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        # transformers annotates from_pretrained as returning the model alone, even with output_loading_info
        return cast("tuple[Any, dict[str, Collection[Any]]]", cls.from_pretrained(
            folder, output_loading_info=True, **kwargs))
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
        raise CheckpointError(f"cannot load the checkpoint in {folder}: {err}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def report_loading(folder: Path, class_name: str, info: dict[str, Collection[Any]],
                   ignored: tuple[str, ...] = ()) -> None:
    """Fail unless every weight of the folder found its place: none missing, unexpected or misshapen.

    Args:
        ignored: prefixes of weights left unread on purpose (a video model's memory modules).

    Raises:
        CheckpointError: naming the first few keys of each kind.
    """
    problems = {
        "missing": list(info.get("missing_keys") or ()),
        "unexpected": [k for k in info.get("unexpected_keys") or () if not (ignored and k.startswith(ignored))],
        "of the wrong shape": [str(k[0]) if isinstance(k, tuple) else str(k)
                               for k in info.get("mismatched_keys") or ()],
    }
    found = [f"{len(keys)} {label} ({', '.join(sorted(keys)[:4])}{', …' if len(keys) > 4 else ''})"
             for label, keys in problems.items() if keys]
    if found:
        raise CheckpointError(
            f"the weights in {folder} do not fit its config.json ({class_name}): weights {'; '.join(found)}"
        )

"""The text-search options of a command line, checked together before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

from samadapt.errors import InputError
from samadapt.text.search import TextQuery, needs_detector
from samadapt.text.types import Detector, Thresholds


@dataclass(frozen=True)
class TextSearch:
    """A text search as a command asks for it: the query and the detector reference (None for SAM 3)."""

    query: TextQuery
    detector: str | None

    def open_detector(self, device: str) -> Detector | None:
        """The detector, loaded (and downloaded if needed); None for SAM 3."""
        if self.detector is None:
            return None
        from samadapt.text.detectors import load_detector

        return load_detector(self.detector, device=device)


def family_for_text(model: str) -> str:
    """The family of a ``--model`` reference as far as text goes, read without loading its weights.

    Meta's ``.pth`` / ``.pt`` releases (SAM, SAM-HQ, SAM 2) are not read: none of them reads text, so
    they count as "sam".

    Raises:
        InputError: a reference that is neither a registry name, a model folder nor a Meta release.
        CheckpointError: a folder whose ``config.json`` is not a SAM-family model's.
    """
    from pathlib import Path

    from samadapt.models.loading import family_and_size

    return "sam" if Path(model).suffix in (".pth", ".pt") else family_and_size(model)[0]


def text_search(text: list[str] | None, detector: str | None, box_threshold: float | None,
                text_threshold: float | None, family: str) -> TextSearch | None:
    """The search of ``--text``, ``--detector``, ``--box-threshold``, ``--text-threshold``; None without ``--text``.

    Args:
        family: the segmenting model's family (SAM 3 reads text itself; the others need a detector).

    Raises:
        InputError: a detector or threshold without ``--text``, a detector missing (or given to SAM 3),
            or a text threshold for a search with no GroundingDINO in it.
    """
    if not text:
        given = [flag for flag, value in (("--detector", detector), ("--box-threshold", box_threshold),
                                          ("--text-threshold", text_threshold)) if value is not None]
        if given:
            raise InputError(f"{given[0]} applies to a text search; add --text PHRASE")
        return None
    if needs_detector(family) and detector is None:
        raise InputError(f"a {family} model cannot read text; add --detector grounding-dino-tiny (or owlv2-base, "
                         "or a detector folder), or use --model sam3")
    if not needs_detector(family) and detector is not None:
        raise InputError("SAM 3 reads text itself; drop --detector")
    if text_threshold is not None and detector is None:
        raise InputError("--text-threshold applies to GroundingDINO only; SAM 3 takes --box-threshold")
    return TextSearch(TextQuery(tuple(text), Thresholds(box=box_threshold, text=text_threshold)), detector)

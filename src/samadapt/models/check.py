"""``samadapt models check``: load a model, run it once, and compare it with what was published.

A user with network access runs this first: it proves the weights load, that one encode and
one decode work on this machine (and how long an image takes), and whether the files are the
published ones. Three kinds of finding:

- the weights' digest equals a digest a public record gives (the registry's ``published.json``
  or, for a file in the Hugging Face cache, the sha256 the hub published, which names its blob):
  "published";
- no record of the digest exists (a fine-tuned or converted model, a tiny test model): "unknown",
  which is not a failure;
- a mismatch: a digest other than the one recorded for the same file, a ``config.json`` whose
  architecture differs from the registry's facts, or outputs of the wrong shape or not finite.
  Any mismatch makes the check fail.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from samadapt.models.digest import file_sha256, published_sha256
from samadapt.models.loading import (
    LoadedModel,
    image_model_config,
    load_model,
    locate,
    read_config,
    weights_file,
)
from samadapt.models.registry import REGISTRY, ModelSpec

if TYPE_CHECKING:
    from samadapt.models.accel.speed import RuntimeOptions



@dataclass
class CheckReport:
    """What ``models check`` found for one model.

    Attributes:
        name: the reference checked (registry name, folder or file).
        family: model family.
        input_size: model input size in pixels.
        weights_file: the file whose digest was taken.
        weights_sha256: its sha256.
        provenance: "published: ..." with the record it matched, or "unknown: ...".
        runtime: the encoder runtime used (e.g. ``torch-bf16+fused``).
        seconds_per_image: time of one encode of a generated image (after a warm-up).
        problems: every mismatch found; empty when the check passes.
    """

    name: str
    family: str
    input_size: int
    weights_file: Path
    weights_sha256: str
    provenance: str
    runtime: str
    seconds_per_image: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing mismatched."""
        return not self.problems


def known_digests() -> dict[str, str]:
    """Every sha256 a public record gives for a registry model's files, with what it is."""
    known = {}
    for spec in REGISTRY.values():
        for name, digest in spec.sha256.items():
            known[digest] = f"{spec.repo_id} {name}"
        if spec.official is not None and spec.official.sha256:
            known[spec.official.sha256] = f"{spec.official.file}, the original release of {spec.name}"
    return known


def config_mismatches(folder: Path, spec: ModelSpec) -> list[str]:
    """Where a folder's ``config.json`` differs from the registry's facts of ``spec``.

    Values the file leaves out are compared as transformers fills them in (its defaults).
    """
    config = read_config(folder)
    problems = []
    if config.get("model_type") != spec.model_type:
        problems.append(f"config.json says model_type {config.get('model_type')!r}; {spec.repo_id} publishes "
                        f"{spec.model_type!r}")
    built = image_model_config(folder, config)
    for path, want in _leaves({k: v for k, v in spec.config.items() if k not in ("model_type", "architectures")}):
        node: Any = built
        for key in path:
            node = node.get(key) if isinstance(node, dict) else getattr(node, key, None)
        if _plain(node) != _plain(want):
            problems.append(f"config.json has {'.'.join(path)} = {node!r}; {spec.repo_id} publishes {want!r}")
    return problems


def check_model(ref: str | os.PathLike[str], *, device: str = "cpu", runtime: RuntimeOptions | str = "auto",
                download: bool = True) -> CheckReport:
    """Compare ``ref``'s files with the published records, then load it and run one image through it.

    The files are checked before anything is loaded: a digest or architecture that differs from
    its record is reported and the model is not run.

    Raises:
        SamadaptError: the model cannot be found, fetched or loaded (as :func:`load_model`).
    """
    from samadapt.models.loading import fetch

    text = os.fspath(ref)
    path = Path(text).expanduser()
    spec = REGISTRY.get(text)
    if spec is not None and not path.exists():
        folder: Path | None = locate(text)[1] or (fetch(text) if download else None)
        if folder is None:
            load_model(text, download=False)  # raises the error naming the files and places
    else:
        folder = path if path.is_dir() else None
    source = weights_file(folder) if folder is not None else path
    if not source.is_file():
        load_model(ref, download=download)  # raises the error saying what is missing
    digest = file_sha256(source)
    problems: list[str] = []
    provenance = _provenance(source, digest, spec, problems)
    matched = spec or _spec_by_digest(digest)
    if folder is not None and matched is not None:
        problems += config_mismatches(folder, matched)
    report = CheckReport(name=text, family="?", input_size=0, weights_file=source, weights_sha256=digest,
                         provenance=provenance, runtime="not run", seconds_per_image=float("nan"), problems=problems)
    if problems:
        return report
    loaded = load_model(ref, device=device, runtime=runtime, download=download)
    if not loaded.trusted:
        report.provenance = "unknown: a random-initialised test model (its masks mean nothing)"
    report.family, report.input_size = loaded.family, loaded.preprocessing.size
    report.runtime = getattr(loaded.runtime, "tag", "transformers")
    report.seconds_per_image = _run_once(loaded, problems)
    return report


def _provenance(source: Path, digest: str, spec: ModelSpec | None, problems: list[str]) -> str:
    pinned = spec.sha256.get(spec.weights) if spec is not None else None
    hub_digest = published_sha256(source)
    if pinned is not None and digest != pinned:
        problems.append(f"{source.name} has sha256 {digest}; {spec.repo_id} publishes {pinned}")  # type: ignore[union-attr]
    if hub_digest is not None and digest != hub_digest:
        problems.append(f"{source.name} has sha256 {digest}, but the hub published {hub_digest} for it")
    record = known_digests().get(digest)
    if record is not None:
        return f"published: {record}"
    if hub_digest == digest:
        return "published: the sha256 the hub published for it (its blob name in the Hugging Face cache)"
    return "unknown: no public record of this digest (fine-tuned, converted or a test model)"


def _spec_by_digest(digest: str) -> ModelSpec | None:
    for spec in REGISTRY.values():
        if digest in spec.sha256.values():
            return spec
    return None


def _run_once(loaded: LoadedModel, problems: list[str]) -> float:
    """Encode a generated image twice (warm-up, then timed) and decode a box and a point."""
    from samadapt.predict.segmenter import Segmenter
    from samadapt.prompts.types import box, point

    size = loaded.preprocessing.size
    rng = np.random.default_rng(0)
    image = rng.integers(40, 90, size=(size, size, 3), dtype=np.uint8)
    image[size // 4: size // 2, size // 4: size // 2] = 200
    segmenter = Segmenter(loaded, cache=False)
    segmenter.embed(image)
    start = time.perf_counter()
    embedded = segmenter.embed(np.ascontiguousarray(image[::-1]))  # another image: no cache hit
    seconds = time.perf_counter() - start
    q = size // 4
    result = segmenter.segment(embedded, [box(q, q, 2 * q, 2 * q), point(1.5 * q, 1.5 * q)])
    if result.masks.shape != (2, size, size):
        problems.append(f"the decoder returned masks of shape {result.masks.shape}, not (2, {size}, {size})")
    if not np.isfinite(result.scores).all():
        problems.append("the decoder's predicted IoUs are not finite")
    return seconds


def _leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _leaves(value, prefix + (key,))
        else:
            out.append((prefix + (key,), value))
    return out


def _plain(value: Any) -> Any:
    """Lists and tuples compare alike."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

"""Score a trained adapter on the images it was not trained on: what ``samadapt evaluate`` runs.

An adapter's ``config.json`` records its split (``"data"``: the image ids of train, val and
test, training after the label budget). By default the adapter's own test split is scored,
so the split is never recomputed with another seed; scoring an image the adapter trained on
is refused unless asked for, and the report says so. Adapters saved before the split was
recorded fall back to the dataset's split drawn with the adapter's own training seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samadapt.errors import InputError

if TYPE_CHECKING:
    from samadapt.data.dataset import SegDataset
    from samadapt.train.adapter import Adapter
    from samadapt.train.metrics import Metrics

SPLITS = ("train", "val", "test", "all")


@dataclass
class EvaluationReport:
    """Scores of one adapter on one set of images.

    Attributes:
        method: the adaptation method's name.
        split: "test (the adapter's own)" or the split asked for.
        image_ids: the images scored, in order.
        metrics: pixel and object scores (:class:`samadapt.train.metrics.Metrics`).
        train_images_scored: ids among ``image_ids`` the adapter was trained on (only when allowed).
        oracle: True when prompts were built from the ground truth being scored.
        comparison: for the encoder-adapter, foreground IoU of the U-Net alone, SAM alone and
            the adapted SAM on the same images.
        notes: sentences the output must carry (a fallback split, a deviation from a source).
        adapter: the loaded :class:`samadapt.train.adapter.Adapter` (not part of the JSON document).
    """

    method: str
    split: str
    image_ids: list[str]
    metrics: Metrics
    train_images_scored: list[str] = field(default_factory=list)
    oracle: bool = False
    comparison: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    adapter: Adapter = field(kw_only=True)

    def as_dict(self) -> dict[str, Any]:
        """One JSON-ready document."""
        doc: dict[str, Any] = {"method": self.method, "split": self.split, "images": len(self.image_ids),
                               "image_ids": self.image_ids, "oracle": self.oracle,
                               "train_images_scored": self.train_images_scored, **self.metrics.as_dict()}
        if self.comparison is not None:
            doc["comparison_foreground_iou"] = self.comparison
        if self.notes:
            doc["notes"] = self.notes
        return doc


def adapter_split(config: dict[str, Any], dataset: SegDataset, split: str | None) -> tuple[list[str], str, list[str]]:
    """The image ids to score, a label for them, and notes: the adapter's own test split by default.

    Raises:
        InputError: an unknown split, or recorded ids the dataset does not hold.
    """
    from samadapt.train.learner import splits_of

    notes: list[str] = []
    data = config.get("data") or {}
    if split is None and data.get("test") is not None:
        stems = list(data["test"])
        missing = [s for s in stems if dataset.mask_path(s) is None]
        if missing:
            raise InputError(
                f"{len(missing)} of the adapter's test images ({', '.join(missing[:3])}) have no mask in "
                f"{dataset.root}; "
                "give the dataset the adapter was scored on, or --split to choose images of this one"
            )
        return stems, "test (the adapter's own)", notes
    if split is not None and split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use {', '.join(SPLITS)}")
    seed = int((config.get("train") or {}).get("seed", 0))
    if split is None:
        notes.append("this adapter records no split; scored the dataset's test split drawn with its training "
                     f"seed {seed}")
        split = "test"
    if split == "all":
        return [s for s in dataset.stems() if dataset.mask_path(s) is not None], "all", notes
    return splits_of(dataset, seed)[split], split, notes


def evaluate_adapter(adapter: Path, dataset_dir: Path, *, split: str | None = None, allow_train_images: bool = False,
                     oracle_prompts: bool = False, model: str | None = None, device: str = "cpu") -> EvaluationReport:
    """Score an adapter folder on a dataset (see the module docstring).

    Args:
        adapter: folder written by ``samadapt train``.
        dataset_dir: dataset with masks; images are matched to the adapter's split by id.
        split: None for the adapter's own test split, else train, val, test or all of ``dataset_dir``.
        allow_train_images: score images the adapter was trained on instead of refusing them.
        oracle_prompts: let a prompted method build its prompts from the masks being scored
            (the outputs then say ``oracle``); by default no ground truth reaches a prediction.
        model: base model, when not the one the adapter records.
        device: torch device.

    Raises:
        InputError: no images to score, or training images without ``allow_train_images``.
    """
    from samadapt.data.dataset import SegDataset
    from samadapt.train.adapter import load_adapter
    from samadapt.train.learner import load_samples
    from samadapt.train.loop import evaluate_method

    ad = load_adapter(adapter, base=model, device=device)
    dataset = SegDataset.open(dataset_dir)
    stems, label, notes = adapter_split(ad.config, dataset, split)
    if not stems:
        raise InputError(f"the {label} split of {dataset_dir} has no labelled images")
    trained_on = set((ad.config.get("data") or {}).get("train") or [])
    seen = [s for s in stems if s in trained_on]
    if seen and not allow_train_images:
        raise InputError(
            f"{len(seen)} of the {len(stems)} images to score ({', '.join(seen[:3])}) trained this adapter; scores on "
            "them flatter it. Score its test split (the default), or pass --allow-train-images to score them anyway"
        )
    samples = load_samples(dataset, stems, ad.bands, (ad.config.get("data") or {}).get("class_id"))
    method = ad.method
    method.use_oracle_prompts(oracle_prompts)  # refused by methods that take no prompts
    metrics, _ = evaluate_method(method, samples, device=method.base.device)
    report = EvaluationReport(ad.config["method"], label, stems, metrics, seen, method.oracle, notes=notes, adapter=ad)
    if method.name == "encoder-adapter":
        from samadapt.methods.encoder_adapter import compare_baselines

        report.comparison = compare_baselines(method, samples, prompts="truth" if oracle_prompts else "unet")  # type: ignore[arg-type]
        report.notes.append(
            "comparison: each model prompted with " + ("the ground-truth regions' interior points (oracle)"
                                                      if oracle_prompts else "the U-Net's predicted regions")
            + " and keeping its highest predicted IoU; the encoder-adaptation abstract prompts with the ground-truth "
            "centre and keeps the mask closest to the truth, so its figures are not directly comparable"
        )
    return report

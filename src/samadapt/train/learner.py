"""The Python door onto training, shaped like arcgis.learn's SamLoRA:

    learner = samadapt.Learner("my_dataset/", method="lora", model="sam-vit-base", labels=10)
    learner.fit(20)
    learner.unfreeze(); learner.fit(5, lr=1e-4)
    learner.save("pits-lora/")
    samadapt.load_adapter("pits-lora/").predict("new_tile.tif")
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from samadapt.errors import InputError
from samadapt.methods import build_method
from samadapt.methods.base import Sample
from samadapt.models.loading import LoadedModel, load_model
from samadapt.train.adapter import read_sample, save_adapter
from samadapt.train.loop import TrainConfig, TrainResult, evaluate_method, train

if TYPE_CHECKING:
    from samadapt.data.dataset import SegDataset
    from samadapt.train.metrics import Metrics


def label_budget(stems: list[str], n: int | None, seed: int) -> list[str]:
    """The first ``n`` stems of a seeded shuffle (all of them when ``n`` is None).

    Budgets from one seed are nested: the 10 images of ``n=10`` include the 5 of ``n=5``,
    as a learning curve needs.
    """
    if n is None:
        return list(stems)
    if n < 1:
        raise InputError(f"the label budget must be at least 1, got {n}")
    if n > len(stems):
        raise InputError(f"asked for {n} labelled images but the training split has only {len(stems)}")
    order = np.random.default_rng(seed).permutation(sorted(stems))
    return [str(s) for s in order[:n]]


def load_samples(dataset: SegDataset, stems: list[str], bands: tuple[int, ...] | None = None,
                 class_id: int | None = None) -> list[Sample]:
    """Read the images and masks of ``stems`` from a SegDataset as Samples.

    With ``class_id``, each mask becomes that class against the rest: 1 where it holds
    ``class_id``, 0 where it holds another class, 255 (ignore) kept.
    """
    samples = [read_sample(dataset.image_path(s), bands=bands, mask=dataset.mask_path(s), stem=s) for s in stems]
    if class_id is not None:
        for sample in samples:
            if sample.target is not None:
                t = sample.target
                sample.target = np.where(t == 255, 255, t == class_id).astype(np.uint8)
    return samples


def splits_of(dataset: SegDataset, seed: int = 0) -> dict[str, list[str]]:
    """train / val / test stems: from splits.json, else a seeded 60/20/20 split of labelled images."""
    from samadapt.data.splits import make_splits

    labelled = [s for s in dataset.stems() if dataset.mask_path(s) is not None]
    if not labelled:
        raise InputError(f"{dataset.root} has no labelled images (masks/) to train on")
    if dataset.splits:
        return {k: [s for s in dataset.splits.get(k, []) if s in labelled] for k in ("train", "val", "test")}
    return make_splits(labelled, val=0.2, test=0.2, seed=seed)


def eval_stems(dataset: SegDataset, exclude: set[str]) -> list[str]:
    """The images of a separate evaluation dataset to score: its test split, or all its labelled
    images when it has none, without any image (matched by id) that training or validation used.

    Raises:
        InputError: nothing is left to score.
    """
    labelled = [s for s in dataset.stems() if dataset.mask_path(s) is not None]
    test = [s for s in (dataset.splits or {}).get("test", []) if s in labelled]
    chosen = [s for s in (test or labelled) if s not in exclude]
    if not chosen:
        where = "test split" if test else "labelled images"
        raise InputError(
            f"every one of the {len(test or labelled)} {where} of the evaluation dataset {dataset.root} was used "
            "for training or validation (images are matched by id); give an evaluation dataset with other images"
        )
    return chosen


class Learner:
    """Train one adaptation method on a dataset folder.

    Args:
        data: dataset folder (images/, masks/, optional splits.json and classes.json).
        method: "domain-decoder", "lora", "mask-decoder", "encoder-adapter" or "unet".
        model: base model: registry name, transformers folder, .pth file, or a LoadedModel.
        labels: label budget: train on the first N images of a seeded shuffle of the train split.
        bands: 1-based bands to read (any count; != 3 adds a band adapter where supported).
        seed: seed of the split, the budget and training.
        device: torch device ("cpu", "cuda", ...).
        class_id: train on one foreground class against the rest (one model per class, as the
            mask-decoder needs for multi-class data); None: every class of the dataset.
        oracle_prompts: score the test split of a prompted method with prompts built from its
            masks (an oracle; see :meth:`samadapt.methods.base.AdaptationMethod.use_oracle_prompts`).
        eval_data: a second dataset to score on (the Mars pits paper's protocol: train on SAM
            pseudo-labels, test on ground truth): its test split, or all of it when it has
            none, less the images (matched by id) used for training or validation. None:
            the test split of ``data``.
        method_options: passed to the method (e.g. rank=8 for lora).

    Attributes:
        train_stems, val_stems, test_stems: the image ids of each split as used (training after
            the label budget); ``test_stems`` belong to ``eval_dataset``.
        eval_dataset: the dataset the test split is read from (``dataset`` unless ``eval_data``).
    """

    def __init__(self, data: str | Path, method: str = "domain-decoder", model: str | LoadedModel = "sam-vit-base",
                 *, labels: int | None = None, bands: tuple[int, ...] | None = None, seed: int = 0,
                 device: str = "cpu", eval_data: str | Path | None = None, class_id: int | None = None,
                 oracle_prompts: bool = False, **method_options: Any) -> None:
        from samadapt.data.dataset import SegDataset
        from samadapt.methods import validate_options

        validate_options(method, method_options)  # before a model is loaded
        self.dataset = SegDataset.open(data)
        num_classes = max(self.dataset.num_classes, 2)
        if class_id is not None and not 1 <= class_id < num_classes:
            names = ", ".join(f"{k} ({v})" for k, v in sorted(self.dataset.classes.items()) if k)
            raise InputError(f"class {class_id} is not a foreground class of {self.dataset.root}; use one of {names}")
        self.class_id = class_id
        self.base = model if isinstance(model, LoadedModel) else load_model(model, device=device)
        self.seed = seed
        self.bands = tuple(bands) if bands else None
        splits = splits_of(self.dataset, seed)
        self.train_stems = label_budget(splits["train"], labels, seed)
        self.val_stems = splits["val"]
        self.eval_dataset = SegDataset.open(eval_data) if eval_data is not None else self.dataset
        if eval_data is not None:
            self.test_stems = eval_stems(self.eval_dataset, set(self.train_stems) | set(self.val_stems))
        else:
            self.test_stems = splits["test"]
        self.device = device
        in_channels = len(self.bands) if self.bands and len(self.bands) != 3 else 3
        torch.manual_seed(seed)  # the method's own weights start from the seed: --seed reproduces a run
        self.method = build_method(method, self.base, num_classes=2 if class_id is not None else num_classes,
                                   in_channels=in_channels, **method_options)
        self.method.to(self.base.device)
        self.method.use_oracle_prompts(oracle_prompts)  # refused by methods that take no prompts
        self._train_samples = load_samples(self.dataset, self.train_stems, self.bands, class_id)
        self._val_samples = load_samples(self.dataset, self.val_stems, self.bands, class_id)
        self.result: TrainResult | None = None
        self.train_config: TrainConfig | None = None
        self.run_dir: Path | None = None

    def fit(self, epochs: int, *, lr: float = 1e-3, batch_size: int = 4, out_dir: str | Path | None = None,
            resume: bool = False, progress: bool = True, **config: Any) -> TrainResult:
        """Train for ``epochs``; keeps the best epoch's weights (by validation mIoU unless ``monitor``)."""
        cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=self.seed, device=self.device, **config)
        run = Path(out_dir) if out_dir else Path(self.dataset.root) / ".samadapt-runs" / self.method.name
        self.result = train(self.method, self._train_samples, self._val_samples, run, cfg, resume=resume,
                            progress=progress)
        self.train_config, self.run_dir = cfg, run
        return self.result

    def unfreeze(self) -> None:
        """LoRA: train the whole SAM from now on, keeping what was learned so far.

        The method is rebuilt with its own copy of SAM's weights (the loaded base model, which
        the embedding cache relies on, is never changed) and the trained weights are loaded in.
        """
        if self.method.name != "lora":
            raise InputError(f"unfreeze applies to the lora method; {self.method.name} trains its own parts only")
        if getattr(self.method, "unfreeze", False):
            return
        state = self.method.trainable_state_dict()
        cfg = self.method.config()
        options = {**cfg["options"], "unfreeze": True}
        method = build_method("lora", self.base, num_classes=cfg["num_classes"], in_channels=cfg["in_channels"],
                              **options)
        unexpected = method.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise InputError(f"cannot carry the trained weights over to the unfrozen model: {unexpected[:5]}")
        self.method = method.to(self.base.device)

    def evaluate(self, split: str = "test") -> Metrics:
        """Metrics on a split (``samadapt.train.metrics.Metrics``)."""
        stems = {"train": self.train_stems, "val": self.val_stems, "test": self.test_stems}.get(split)
        if stems is None:
            raise InputError(f"unknown split {split!r}; use train, val or test")
        if not stems:
            hint = ("; score on a dataset with ground truth with --eval-dataset (e.g. train on `annotate` "
                    "pseudo-labels, test on the truth)") if split == "test" else ""
            raise InputError(f"the {split} split of {self.dataset.root} is empty{hint}")
        dataset = self.eval_dataset if split == "test" else self.dataset
        samples = load_samples(dataset, stems, self.bands, self.class_id)
        metrics, _ = evaluate_method(self.method, samples, device=self.base.device)
        return metrics

    def data_record(self) -> dict[str, Any]:
        """The split this run used, as stored in the adapter's ``config.json`` (``"data"``)."""
        record: dict[str, Any] = {"dataset": str(Path(self.dataset.root).resolve()), "train": list(self.train_stems),
                                  "val": list(self.val_stems), "test": list(self.test_stems)}
        if self.eval_dataset is not self.dataset:
            record["test_dataset"] = str(Path(self.eval_dataset.root).resolve())
        if self.class_id is not None:
            record["class_id"] = self.class_id
        return record

    @property
    def classes(self) -> dict[int, str]:
        """Class id -> name of what the model predicts (one class against the rest with ``class_id``)."""
        if self.class_id is None:
            return self.dataset.classes
        return {0: "background", 1: self.dataset.classes.get(self.class_id, str(self.class_id))}

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the adapter folder (weights, config, training log and plot)."""
        metrics = {}
        if self.result and self.result.history:
            history = self.result.history
            row = next((r for r in history if r["epoch"] == self.result.best_epoch), history[-1])
            metrics = {k: v for k, v in row.items() if k.startswith("val_") or k == "epoch"}
        extra = (self.run_dir / "training_log.jsonl", self.run_dir / "training.png") if self.run_dir else ()
        return save_adapter(
            self.method, Path(path), classes=self.classes, bands=self.bands,
            train_config={**(asdict(self.train_config) if self.train_config else {}), "labels": len(self.train_stems)},
            data=self.data_record(), metrics=metrics, extra_files=extra, overwrite=overwrite,
        )

    def with_config(self, **changes: Any) -> TrainConfig:
        """The last training settings with some changed (for a second ``fit``)."""
        return replace(self.train_config or TrainConfig(), **changes)


def foreground_class_id(dataset: SegDataset, name: str) -> int:
    """A foreground class of a dataset, given by its id or its name.

    Raises:
        InputError: if ``name`` is neither the name nor the id of a foreground class (0 is background).
    """
    by_name = {v: k for k, v in dataset.classes.items()}
    if name in by_name and by_name[name]:
        return by_name[name]
    if name.isdigit() and int(name) in dataset.classes and int(name):
        return int(name)
    known = ", ".join(f"{k} ({v})" for k, v in sorted(dataset.classes.items()) if k)
    raise InputError(f"--class {name!r} is not a foreground class of {dataset.root}; use one of {known}")


def class_folder_name(name: str) -> str:
    """A class name as a folder name: characters other than letters, digits, ``.``, ``_``, ``-`` become ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


def training_targets(dataset: SegDataset, method: str, out: Path,
                     class_name: str | None = None) -> list[tuple[int | None, Path]]:
    """The adapters one training writes: (foreground class id or None for every class, adapter folder).

    With ``class_name``, one adapter for that class against the rest. A method that predicts
    one class (``binary_only``) on a dataset of several foreground classes trains one adapter
    per class, in ``out/<class name>/``. Otherwise one adapter for every class, in ``out``.

    Raises:
        InputError: if ``class_name`` is not a foreground class or ``method`` is unknown.
    """
    from samadapt.methods import method_class

    if class_name is not None:
        return [(foreground_class_id(dataset, class_name), out)]
    if method_class(method).binary_only and dataset.num_classes > 2:
        return [(c, out / class_folder_name(name)) for c, name in sorted(dataset.classes.items()) if c]
    return [(None, out)]

"""The one training loop every adaptation method uses.

AdamW with a linear warm-up and cosine decay, gradient clipping, evaluation on the
validation samples after every epoch, the best weights kept by a chosen metric, optional
early stopping, ``accelerate`` for the device and mixed precision (so ``accelerate launch``
works unchanged on one or several GPUs), a progress bar, a JSON-lines log and a plot.

Every epoch ends with an atomic checkpoint (temporary file, then rename) holding the
trainable weights, the optimiser and scheduler state, torch's random state (dropout) and the
history. The order of samples and every random choice inside ``make_inputs`` come from
generators seeded by (seed, epoch, sample), so ``resume=True`` after a kill continues exactly
as the uninterrupted run would have: the same bytes at the end. On a CPU the same seed gives
the same bytes at the same thread count (torch's, e.g. ``OMP_NUM_THREADS``); another count
sums in another order and changes the last bits.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from samadapt._io import atomic_file, save_figure
from samadapt.errors import InputError, MissingDependencyError
from samadapt.methods.base import AdaptationMethod, Sample

if TYPE_CHECKING:
    from samadapt.train.metrics import Metrics

CHECKPOINT = "last.pt"


@dataclass
class TrainConfig:
    """Settings of one training run.

    Attributes:
        epochs: passes over the training samples.
        batch_size: samples per step.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup: fraction of all steps spent warming the learning rate up linearly.
        grad_clip: maximum gradient norm (0 disables clipping).
        seed: seed of sample order, prompt sampling and initialisation.
        patience: stop after this many epochs without improvement (None: never).
        monitor: validation metric that picks the best epoch ("miou", "f1_macro", ...
            higher is better; "loss", lower is better).
        select: which epoch's weights are kept: "best" by ``monitor`` on the validation split,
            or "last" (the Mars pits paper trains 100 epochs "without additional control");
            validation is still scored and logged with "last".
        mixed_precision: "no", "bf16" or "fp16" (fp16 needs a CUDA device; bf16 also runs on a CPU).
        device: "cpu", "cuda", ...; None lets accelerate choose (CUDA when available).
    """

    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    patience: int | None = None
    monitor: str = "miou"
    select: Literal["best", "last"] = "best"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    device: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"epochs and batch size must be at least 1, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0:
            raise InputError(f"the learning rate must be positive, got {self.lr}")
        from samadapt.train.metrics import SCALAR_FIELDS

        if self.monitor != "loss" and self.monitor not in SCALAR_FIELDS:
            raise InputError(f"cannot monitor {self.monitor!r}; use loss (lower is better) or one of "
                             f"{', '.join(SCALAR_FIELDS)} (higher is better)")
        if self.select not in ("best", "last"):
            raise InputError(f"select must be best or last, got {self.select!r}")
        if self.select == "last" and self.patience is not None:
            raise InputError("patience stops early on the validation score, which select='last' does not use; "
                             "drop one of them")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise InputError(f"mixed precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        # accelerate quietly trains in full precision when fp16 meets a CPU, and the adapter would
        # still record fp16: refuse it instead.
        if self.mixed_precision == "fp16" and on_cpu(self.device):
            raise InputError("--mixed-precision fp16 needs a CUDA device and this run is on the CPU; "
                             "use --mixed-precision bf16 (which a CPU runs) or no")


def on_cpu(device: str | None) -> bool:
    """Whether training on ``device`` runs on the CPU (None: the CPU unless CUDA is available)."""
    return device == "cpu" or (device is None and not torch.cuda.is_available())


@dataclass
class TrainResult:
    """What a run produced: the per-epoch history and the best epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_value: float = float("nan")
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped_early: bool = False


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-sample tensors into a batch, key by key."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def lr_lambda(total_steps: int, warmup: float) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to zero."""
    warm = max(1, int(round(total_steps * warmup))) if warmup > 0 else 0

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def _accelerator(config: TrainConfig):  # noqa: ANN202
    try:
        from accelerate import Accelerator
    except ImportError:
        raise MissingDependencyError("training needs accelerate: pip install 'samadapt[train]'") from None
    return Accelerator(cpu=on_cpu(config.device), mixed_precision=config.mixed_precision)


def _metric_value(row: dict[str, Any], monitor: str) -> float:
    key = "val_loss" if monitor == "loss" else f"val_{monitor}"
    if key not in row:
        logged = sorted(k[4:] for k in row if k.startswith("val_"))
        raise InputError(f"cannot monitor {monitor!r}; the validation log has {logged}")
    v = row[key]
    return float("nan") if v is None else float(v)


def _validate(method: AdaptationMethod, samples: Sequence[Sample], batch_size: int,
              device: torch.device | str) -> tuple[Metrics, float]:
    """Score the validation split. A prompted method is prompted from the validation masks here:
    validation picks an epoch (it is part of training, never the test), and prompts a user would
    have at test time (an automatic grid) can leave an early model's scores flat, so that no
    epoch would be told from another. The test split is scored without them (``samadapt evaluate``)."""
    if not method.takes_prompts:
        return evaluate_method(method, samples, batch_size=batch_size, device=device)
    was = method.oracle
    method.use_oracle_prompts(True)
    try:
        return evaluate_method(method, samples, batch_size=batch_size, device=device)
    finally:
        method.use_oracle_prompts(was)


def _better(value: float, best: float, monitor: str) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value < best if monitor == "loss" else value > best


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, read as plain data: ``torch.load(weights_only=True)`` runs no code.

    A file that holds anything but tensors in plain containers (a pickle put in the run folder,
    say) is refused, never executed.

    Raises:
        InputError: the file is not a checkpoint samadapt wrote.
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(
            f"refused to resume from {path}: it is not a checkpoint samadapt wrote (only tensors in plain containers "
            f"are read, no code is run: {type(exc).__name__}); start a new run in another folder"
        ) from None
    if not isinstance(state, dict) or "method_config" not in state:
        raise InputError(f"refused to resume from {path}: it is not a checkpoint samadapt wrote; start a new run")
    return state


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    with atomic_file(path) as tmp:  # a full disk is an OSError naming the checkpoint, and no temp file stays
        torch.save(obj, tmp)


def _batches(method: AdaptationMethod, samples: Sequence[Sample], order: np.ndarray, size: int, seed: int,
             epoch: int, train: bool):  # noqa: ANN202
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        items = [method.make_inputs(samples[int(i)], train=train, rng=np.random.default_rng([seed, epoch, int(i)]))
                 for i in idx]
        yield idx, collate(items)


@torch.no_grad()
def evaluate_method(method: AdaptationMethod, samples: Sequence[Sample], *, batch_size: int = 4,
                    device: torch.device | str = "cpu") -> tuple[Metrics, float]:
    """Metrics (``samadapt.train.metrics.Metrics``) and mean loss of a method on labelled samples.

    Predictions are mapped back to each image's original size and compared with its full
    mask, so the numbers do not depend on the method's internal resolution.
    """
    from samadapt.train.metrics import MetricAccumulator

    was_training = method.training
    method.eval()
    acc = MetricAccumulator(method.num_classes)
    losses = []
    order = np.arange(len(samples))
    for idx, batch in _batches(method, samples, order, batch_size, 0, 2**31, train=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = method(batch)
        losses.append(float(method.loss(logits, batch)))
        probs = method.probabilities(logits).float().cpu()
        for j, i in enumerate(idx):
            s = samples[int(i)]
            if s.target is None:
                raise InputError(f"{s.stem} has no target; evaluation needs labelled samples")
            geometry = method.geometry_of(*s.target.shape)
            pred = method.to_original(probs[j], geometry).argmax(0).numpy().astype(np.uint8)
            target = s.target.copy()
            target[~s.valid] = 255
            acc.add(pred, target, name=s.stem)
    method.train(was_training)
    return acc.compute(), float(np.mean(losses)) if losses else float("nan")


def train(
    method: AdaptationMethod,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    out_dir: Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``method`` and keep its best weights (see the module docstring).

    Args:
        method: the method to train (its trainable parameters are those with requires_grad).
        train_samples: labelled samples to learn from.
        val_samples: labelled samples evaluated after every epoch (may be empty: then the
            last epoch is the best).
        out_dir: folder for ``checkpoints/``, ``training_log.jsonl`` and ``training.png``.
        config: settings; defaults when None.
        resume: continue from ``out_dir/checkpoints/last.pt``.
        progress: show a progress bar.
        on_epoch: called with each epoch's log row (e.g. to stop a test after epoch 2).

    Returns:
        The history and the best epoch; the method is left holding the best weights.
    """
    config = config or TrainConfig()
    select_from = method.selection_start(config.epochs)  # a staged method refuses too few epochs here
    if not train_samples:
        raise InputError("no training samples; check the dataset split and the label budget")
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    accelerator = _accelerator(config)
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise InputError(f"method {method.name} has no trainable parameters")
    steps_per_epoch = math.ceil(len(train_samples) / config.batch_size)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps_per_epoch * config.epochs, config.warmup))
    result = TrainResult()
    start_epoch = 0
    if resume:
        path = ckpt_dir / CHECKPOINT
        if not path.is_file():
            raise InputError(f"nothing to resume: {path} does not exist; start without --resume")
        state = _read_checkpoint(path)
        if state["method_config"] != method.config():
            raise InputError(f"{path} was written by a different method or settings; start a new run in another folder")
        method.load_state_dict(state["weights"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        result.history = state["history"]
        result.best_epoch, result.best_value = state["best_epoch"], state["best_value"]
        result.best_state = state["best_state"]
        start_epoch = state["epoch"] + 1
        stem, suffix = Path(CHECKPOINT).stem, Path(CHECKPOINT).suffix
        for stale in ckpt_dir.glob(f".{stem}.*.tmp{suffix}"):  # left by a kill while a checkpoint was written
            stale.unlink()
    model, optimizer, scheduler = accelerator.prepare(method, optimizer, scheduler)
    device = accelerator.device
    # The log restarts from the checkpoint's history: a kill between an epoch's log line and its
    # checkpoint would otherwise leave that epoch logged twice once it is run again.
    log_path = out_dir / "training_log.jsonl"
    log_path.write_text("".join(json.dumps(row) + "\n" for row in result.history))
    bad_epochs = _epochs_since_best(result)
    bar = _Progress(progress, config.epochs, steps_per_epoch, start_epoch)
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            method.begin_epoch(epoch, config.epochs)
            model.train()
            order = np.random.default_rng([config.seed, epoch]).permutation(len(train_samples))
            losses = []
            for _, batch in _batches(method, train_samples, order, config.batch_size, config.seed, epoch, True):
                batch = {k: v.to(device) for k, v in batch.items()}
                with accelerator.autocast():
                    loss = method.loss(model(batch), batch)
                optimizer.zero_grad()
                accelerator.backward(loss)
                if config.grad_clip > 0:
                    accelerator.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                bar.step(epoch, float(np.mean(losses)))
            row: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                                   "lr": float(optimizer.param_groups[0]["lr"])}
            if val_samples:
                metrics, val_loss = _validate(method, val_samples, config.batch_size, device)
                row["val_loss"] = val_loss
                row.update({f"val_{k}": v for k, v in metrics.as_dict().items()})
            row["seconds"] = time.perf_counter() - t0
            value = _metric_value(row, config.monitor) if val_samples else -float(epoch)
            # Before a staged method's last stage its predicting part is untrained: no epoch there is kept.
            selectable = epoch >= select_from
            if config.select == "last" or not val_samples or (
                    selectable and _better(value, result.best_value, config.monitor)):
                result.best_epoch, result.best_value = epoch, value
                result.best_state = {k: v.clone() for k, v in method.trainable_state_dict().items()}
                bad_epochs = 0
            elif selectable:
                bad_epochs += 1
            result.history.append(row)
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            _save_atomic({
                "epoch": epoch, "weights": method.trainable_state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "history": result.history,
                "best_epoch": result.best_epoch, "best_value": result.best_value, "best_state": result.best_state,
                "method_config": method.config(), "train_config": asdict(config),
            }, ckpt_dir / CHECKPOINT)
            bar.epoch_done(row)
            if on_epoch:
                on_epoch(row)
            if config.patience is not None and bad_epochs >= config.patience:
                result.stopped_early = True
                break
    finally:
        bar.close()
    if result.best_state:
        method.load_state_dict(result.best_state, strict=False)
    plot_history(result.history, out_dir / "training.png", config.monitor)
    return result


def _epochs_since_best(result: TrainResult) -> int:
    if not result.history or result.best_epoch < 0:
        return 0
    return result.history[-1]["epoch"] - result.best_epoch


class _Progress:
    def __init__(self, enabled: bool, epochs: int, steps: int, start: int) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

            from samadapt.progress import progress_bar

            self.bar = progress_bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("training", total=epochs * steps, completed=start * steps)
            self.bar.start()

    def step(self, epoch: int, loss: float) -> None:
        if self.bar:
            self.bar.update(self.task, advance=1, description=f"epoch {epoch + 1} loss {loss:.4f}")

    def epoch_done(self, row: dict[str, Any]) -> None:
        if self.bar and "val_miou" in row:
            self.bar.console.print(f"epoch {row['epoch'] + 1}: train loss {row['train_loss']:.4f}, "
                                   f"val loss {row['val_loss']:.4f}, val mIoU {row['val_miou']:.3f}")

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


def plot_history(history: list[dict[str, Any]], path: Path, monitor: str = "miou") -> Path | None:
    """Plot training / validation loss and the monitored metric per epoch to a PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] + 1 for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    if "val_loss" in history[0]:
        a.plot(epochs, [r["val_loss"] for r in history], marker="o", label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    key = f"val_{monitor}" if monitor != "loss" else "val_miou"
    if key in history[0]:
        b.plot(epochs, [r[key] if r[key] is not None else float("nan") for r in history], marker="o", color="C2")
        b.set_ylabel(key[4:])
    b.set_xlabel("epoch")
    fig.tight_layout()
    return save_figure(fig, path)

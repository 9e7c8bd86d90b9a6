"""Training a MADE: Adam, a learning-rate schedule, a new mask every minibatch, early stopping, and
optionally an exponential moving average of the weights (the weights validated and kept).

Order-agnostic / connectivity-agnostic training moves to another mask configuration each minibatch:
cycling through the stored set, or drawing a fresh configuration every step (`fresh_masks`). Validation
NLL is measured each epoch; the best weights are kept and restored at the end.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .made import Density, MADEDensity

log = logging.getLogger("made.train")
LR_SCHEDULES = ("cosine", "plateau", "constant")


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # cosine: anneal to 0 over `epochs`; plateau: halve when validation stalls
    patience: int = 20  # epochs without a better validation NLL before stopping (0: never stop early)
    valid_masks: int = 1  # masks averaged for the per-epoch validation NLL
    grad_clip: float | None = None
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights
    # > 0: a time budget in seconds. Training stops after the epoch that ends past it, and the cosine
    # schedule anneals over the budget or the epochs, whichever runs out first (so a time-boxed run still
    # ends at a small learning rate, as a run of the epochs that fit would).
    max_seconds: float = 0.0
    seed: int = 0
    progress: bool | None = None  # a progress bar; None: only when stderr is a terminal

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size) < 1 or self.lr <= 0 or min(self.patience, self.max_seconds) < 0:
            raise ValueError("epochs and batch_size must be >= 1, lr > 0, patience >= 0, max_seconds >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}")


@dataclass
class EpochStats:
    epoch: int
    train_nll: float
    valid_nll: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    best_valid_nll: float
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list[EpochStats] = field(default_factory=list)


def standardisation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension (shift, scale) of training data; a constant column keeps scale 1."""
    shift = x.mean(dim=0)
    scale = x.std(dim=0)
    return shift, torch.where(scale > 1e-8, scale, torch.ones_like(scale))


def mean_nll(model: Density, x: torch.Tensor, masks: int | None = None, batch_rows: int = 2000) -> float:
    """Mean negative log-likelihood (nats) of the rows of x under the K-mask ensemble."""
    return -sum(float(log_p.sum()) for log_p in model.log_prob_batches(x.split(batch_rows), masks)) / len(x)


def train(
    model: MADEDensity, train_x: torch.Tensor, valid_x: torch.Tensor, config: TrainConfig
) -> TrainResult:
    if not isinstance(model, MADEDensity):
        raise ValueError(
            "a mixture is not trained as one network: train one-mask models, then `made merge` them"
        )
    device = model.device
    train_x = train_x.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    started = time.monotonic()
    scheduler = _scheduler(optimizer, config, steps_per_epoch, started)
    show_bar = sys.stderr.isatty() if config.progress is None else config.progress
    # The averaged weights are a copy of the model whose parameters follow the trained ones; its degree
    # buffers are the model's (they never change in training), so it scores any stored mask as it would.
    averaged = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay)
        )
        if config.ema_decay
        else None
    )
    evaluated = averaged.module if averaged is not None else model

    best_nll, best_epoch, best_state = math.inf, 0, None
    history: list[EpochStats] = []
    step = 0
    epochs_bar = tqdm(
        total=config.epochs, desc="training", unit="epoch", disable=not show_bar, file=sys.stderr
    )
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.monotonic()
        order = torch.randperm(len(train_x), generator=generator).to(device)
        batches = tqdm(
            order.split(config.batch_size),
            desc=f"epoch {epoch}",
            disable=not show_bar,
            leave=False,
            file=sys.stderr,
        )  # row indices of each minibatch
        train_nll, step = _epoch(
            model, train_x, batches, optimizer, scheduler, averaged, config, generator, step
        )
        batches.close()
        valid_nll = mean_nll(evaluated, valid_x, masks=config.valid_masks)
        if config.lr_schedule == "plateau":
            scheduler.step(valid_nll)
        stats = EpochStats(
            epoch, train_nll, valid_nll, optimizer.param_groups[0]["lr"], time.monotonic() - epoch_start
        )
        history.append(stats)
        if valid_nll < best_nll:
            best_nll, best_epoch = valid_nll, epoch
            best_state = copy.deepcopy(evaluated.state_dict())
        epochs_bar.update(1)
        epochs_bar.set_postfix(
            train_nll=f"{stats.train_nll:.3f}", valid_nll=f"{valid_nll:.3f}", best=f"{best_nll:.3f}"
        )
        if not show_bar:
            _log_epoch(stats, config.epochs, best_nll)
        if not math.isfinite(stats.train_nll):
            log.error(
                "training diverged (non-finite loss); keeping the best weights so far", extra={"epoch": epoch}
            )
            break
        if config.patience and epoch - best_epoch >= config.patience:
            log.info(
                "early stop: no better validation NLL", extra={"epoch": epoch, "patience": config.patience}
            )
            break
        if config.max_seconds and time.monotonic() - started >= config.max_seconds:
            log.info("time budget spent", extra={"epoch": epoch, "max_seconds": config.max_seconds})
            break
    epochs_bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_nll, best_epoch, len(history), time.monotonic() - started, history)


def _epoch(
    model: MADEDensity,
    train_x: torch.Tensor,
    batches,
    optimizer,
    scheduler,
    averaged,
    config: TrainConfig,
    generator: torch.Generator,
    step: int,
) -> tuple[float, int]:
    """One pass over the minibatches, each under the next stored mask (or a fresh one); returns the mean
    training NLL and the step count so far."""
    network = model.network
    model.train()
    # The sum stays on the device: reading it every step would make the host wait for each step on a GPU.
    total, seen = torch.zeros((), dtype=torch.float64, device=model.device), 0
    for i, rows in enumerate(batches):
        batch = train_x[rows]
        if network.config.fresh_masks:
            network.use_degrees(*network.draw_degrees(generator))
        else:
            network.use_mask(step % network.config.n_masks)
        loss = -model.conditionals_for_active_mask(batch).sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if averaged is not None:
            averaged.update_parameters(model)
        if config.lr_schedule == "cosine":
            scheduler.step()
        step += 1
        total += loss.detach().double() * len(batch)
        seen += len(batch)
        if i % 20 == 0 and not batches.disable:
            batches.set_postfix(train_nll=f"{float(total) / seen:.3f}")
    return float(total) / seen, step


def _scheduler(optimizer, config: TrainConfig, steps_per_epoch: int, started: float):
    total_steps = config.epochs * steps_per_epoch
    if config.lr_schedule == "cosine" and config.max_seconds:

        def cosine(step: int) -> float:  # the factor on lr after `step` steps or the time so far
            progress = max(step / total_steps, (time.monotonic() - started) / config.max_seconds)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.5, patience=max(1, config.patience // 4)
        )
    return None


def _log_epoch(stats: EpochStats, epochs: int, best: float) -> None:
    log.info(
        "epoch",
        extra={
            "epoch": stats.epoch,
            "epochs": epochs,
            "train_nll": round(stats.train_nll, 4),
            "valid_nll": round(stats.valid_nll, 4),
            "best_valid_nll": round(best, 4),
            "lr": stats.lr,
            "seconds": round(stats.seconds, 2),
        },
    )

"""One trainer for dense training and for every method's fine-tuning or prune-while-training loop.

Methods plug in through :class:`TrainHook`, the trainer's public hooks: an extra loss term added to the cross-entropy (a
penalty, in the shape of Torch-Pruning's ``regularize``), an action after every optimiser step (a proximal step, a
schedule) and one at every epoch end (pruning on a schedule). Masks stay enforced by
:class:`connprune.surgery.MaskEnforcer` attached to :attr:`Trainer.optimizer`. Mixed precision, DDP and the learning
rate schedule live here, once, whatever the hooks do. With ``state_dir`` the full training state (weights, optimiser
state, data-order generator, RNG, history) is saved atomically after every epoch, and ``resume=True`` continues a killed
run so that it ends with exactly the weights of an uninterrupted run (on the CPU, with the same thread count).

Under ``torchrun`` (a process group initialised with :func:`connprune.train.distributed.init_from_env`) the trainer
runs data-parallel by itself: ``config.batch_size`` is the *global* batch (it must be divisible by the number of
processes), each rank trains on its share of every global batch (see :class:`~connprune.data.pipeline.Batches`)
through a ``DistributedDataParallel`` wrapper (:attr:`Trainer.ddp`), and the loss is weighted so that the averaged
gradients equal those of one process on the global batch - also for an uneven last batch. ``Trainer.model`` stays
the plain module that hooks see and change in place (hooks must not replace its parameters while training). Every
rank evaluates on the full test set; only rank 0 shows progress and writes the state (the others wait at a
barrier), and every rank loads it on resume (multi-node runs need ``state_dir`` on a shared file system). Models
with batch norm use each rank's batch statistics, as DDP does by default.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from connprune.data import DataSource
from connprune.data.sources import batches, check_source
from connprune.errors import UserError
from connprune.train import distributed
from connprune.train.evaluate import evaluate
from connprune.train.recipes import TrainConfig
from connprune.utils.io import atomic_dir
from connprune.utils.seed import default_device

STATE_DIR = "train_state"


class TrainHook:
    """Override any of these to act inside the training loop; the default does nothing."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Called once before the first step (after a resume too)."""

    def loss_term(self, trainer: Trainer, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """An extra term added to the step's loss before ``backward`` (``None``: nothing). Runs after the forward
        pass (``outputs`` are the model's outputs on the batch, ``targets`` its labels), outside autocast, at
        optimiser step :attr:`Trainer.step` (counting from 0)."""
        return None

    def after_step(self, trainer: Trainer) -> None:
        """Called after every optimiser step (:attr:`Trainer.step` already counts it)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """Called after each epoch's evaluation; ``epoch`` counts from 1."""


@dataclass
class TrainResult:
    """What a run produced: per-epoch history and the final test metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate at optimiser step ``step`` of ``total_steps`` (a pure function, so nothing to checkpoint)."""
    progress = step / max(total_steps, 1)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.lr * config.gamma ** sum(progress >= m for m in config.milestones)
    return config.lr


class Trainer:
    """Train ``model`` on ``train_data`` with ``config``; evaluate on ``test_data`` after every epoch.

    Either may be an :class:`~connprune.data.ImageData` (batched, shuffled and augmented as ``config`` says, and
    resumed exactly) or any iterable of ``(inputs, targets)`` batches with a length, e.g. a ``DataLoader``, which
    batches, shuffles and augments itself (a resumed run continues from the saved epoch with the loader's order).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: DataSource,
        test_data: DataSource | None,
        config: TrainConfig,
        *,
        hooks: list[TrainHook] | None = None,
        state_dir: str | Path | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
        description: str = "train",
    ) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.train_data = check_source(train_data, "training data")
        self.test_data = check_source(test_data, "test data") if test_data is not None else None
        self.hooks = list(hooks or [])
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.world_size = distributed.world_size() if distributed.is_distributed() else 1
        self.rank = distributed.rank() if self.world_size > 1 else 0
        if config.batch_size % self.world_size:
            raise UserError(f"batch_size {config.batch_size} (the global batch) is not divisible by the "
                            f"{self.world_size} processes")
        self.ddp: nn.Module = self.model
        """What forward/backward run through: a ``DistributedDataParallel`` wrapper of :attr:`model` under
        torchrun, else :attr:`model` itself."""
        if self.world_size > 1:
            device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)  # broadcasts rank 0's weights
        self.progress = progress and self.rank == 0
        self.description = description
        self.optimizer = build_optimizer(self.model, config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.batches = batches(
            self.train_data, config.batch_size, shuffle=True, augment=True, generator=self.generator,
            device=self.device, rank=self.rank, world_size=self.world_size, who="training data",
        )
        self.total_steps = config.epochs * len(self.batches)

    # -- state ---------------------------------------------------------------------------------------------------
    def save_state(self) -> None:
        """Save everything needed to continue exactly from the end of the current epoch (atomic).

        Under torchrun only rank 0 writes; every rank returns once the state is on disk."""
        assert self.state_dir is not None
        if self.rank != 0:
            distributed.barrier()
            return
        tensors: dict[str, torch.Tensor] = {
            f"model/{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
        }
        opt = self.optimizer.state_dict()
        scalars: dict[str, Any] = {}
        for index, entries in opt["state"].items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{index}/{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{index}/{key}"] = value
        tensors["rng/data"] = self.generator.get_state()
        tensors["rng/torch"] = torch.get_rng_state()
        meta = {
            "epoch": self.epoch, "step": self.step, "history": self.history, "config": self.config.model_dump(),
            "param_groups": opt["param_groups"], "optim_scalars": scalars,
        }
        with atomic_dir(self.state_dir / STATE_DIR) as tmp:
            save_file(tensors, str(tmp / "state.safetensors"))
            (tmp / "state.json").write_text(json.dumps(meta))
        if self.world_size > 1:
            distributed.barrier()

    def load_state(self) -> bool:
        """Restore a saved state if one exists; returns whether it did."""
        if self.state_dir is None or not (self.state_dir / STATE_DIR / "state.json").exists():
            return False
        folder = self.state_dir / STATE_DIR
        meta = json.loads((folder / "state.json").read_text())
        if meta["config"] != self.config.model_dump():
            raise UserError(
                f"cannot resume from {folder}: it was trained with a different recipe ({meta['config']}); "
                "use the same options, or a new --out directory"
            )
        try:
            tensors = load_file(str(folder / "state.safetensors"))
        except Exception as exc:  # safetensors raises its own error type for truncated files
            raise UserError(f"cannot resume: {folder / 'state.safetensors'} is unreadable ({exc}); delete it") from exc
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value.to(self.device)
        for key, value in meta["optim_scalars"].items():
            index, name = key.split("/", 1)
            state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.generator.set_state(tensors["rng/data"])
        torch.set_rng_state(tensors["rng/torch"])
        self.epoch, self.step, self.history = meta["epoch"], meta["step"], meta["history"]
        return True

    # -- loop ----------------------------------------------------------------------------------------------------
    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, self.total_steps)
        use_amp = self.config.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = self.ddp(x)
            if self.world_size == 1:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
            else:  # DDP averages over ranks: sum / global count × world makes that the global batch's mean
                summed = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing,
                                         reduction="sum")
                loss = summed * (self.world_size / self.batches.global_size)
        total = loss
        for hook in self.hooks:
            term = hook.loss_term(self, logits, y)
            if term is not None:
                total = total + term
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.step += 1
        for hook in self.hooks:
            hook.after_step(self)
        loss_sum = loss.item() * len(y) if self.world_size == 1 else summed.item()
        return loss_sum, int((logits.argmax(1) == y).sum().item())

    def fit(self, resume: bool = False) -> TrainResult:
        """Run the remaining epochs; with ``resume`` continue from the last saved epoch."""
        started = time.perf_counter()
        if resume:
            self.load_state()
        for hook in self.hooks:
            hook.on_train_start(self)
        console = Console(stderr=True)
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[status]}")]
        with Progress(*columns, console=console, disable=not self.progress, transient=True) as bar:
            task = bar.add_task(self.description, total=self.total_steps, completed=self.step, status="")
            while self.epoch < self.config.epochs:
                self.model.train()
                loss_sum, correct, seen = 0.0, 0, 0
                for x, y in self.batches:
                    loss, right = self._train_step(x, y)
                    loss_sum, correct, seen = loss_sum + loss, correct + right, seen + len(y)
                    bar.update(task, advance=1, status=f"epoch {self.epoch + 1} loss {loss_sum / seen:.3f}")
                self.epoch += 1
                if self.world_size > 1:  # the whole epoch's training metrics, the same on every rank
                    totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=self.device)
                    torch.distributed.all_reduce(totals)
                    loss_sum, correct, seen = totals[0].item(), int(totals[1].item()), int(totals[2].item())
                metrics = {"epoch": self.epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                           "lr": learning_rate(self.config, self.step, self.total_steps)}
                if self.test_data is not None:
                    result = evaluate(self.model, self.test_data, batch_size=self.config.eval_batch_size,
                                      device=self.device)
                    metrics.update(test_loss=result["loss"], test_accuracy=result["accuracy"])
                self.history.append(metrics)
                for hook in self.hooks:
                    hook.on_epoch_end(self, self.epoch, metrics)
                if self.state_dir is not None:
                    self.save_state()
                if self.progress:
                    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch")
                    console.print(f"[dim]{self.description}[/] epoch {self.epoch}/{self.config.epochs}: {shown}",
                                  highlight=False, soft_wrap=True)
        self.model.eval()
        final = {}
        if self.test_data is not None:
            final = evaluate(self.model, self.test_data, batch_size=self.config.eval_batch_size, device=self.device)
        return TrainResult(history=self.history, final=final, seconds=time.perf_counter() - started)


def train(
    model: nn.Module,
    train_data: DataSource,
    test_data: DataSource | None,
    config: TrainConfig,
    **kwargs: Any,
) -> TrainResult:
    """Convenience wrapper: ``Trainer(...).fit(resume=kwargs.pop('resume', False))``."""
    resume = kwargs.pop("resume", False)
    return Trainer(model, train_data, test_data, config, **kwargs).fit(resume=resume)

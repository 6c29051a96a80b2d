"""The training loop: AdamW or SGD, a learning-rate schedule, bf16/fp16 autocast (a gradient scaler for
fp16), gradient accumulation and clipping, periodic evaluation, a progress bar, JSON-lines logs, a PNG of
the curves, and checkpoints from which a run resumes exactly where it stopped.

Data comes as a function of the step: `batches(i)` returns the i-th micro-batch (a dict of tensors),
always the same for the same i. A resumed run therefore sees the very batches it would have seen, and
with the model, optimizer, schedule, scaler and random-number states restored it continues bit for bit
(on the CPU; GPU kernels may reorder sums). Under torchrun (torch.distributed), each process takes its
rows of every global batch and DistributedDataParallel averages the gradients; rank 0 logs and saves.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import atomic
from . import loggers
from .progress import progress
from .schedules import schedule
from .settings import number

FORMAT = "fastseq-checkpoint/1"
DECAY = ("matrices", "all")
_log = logging.getLogger("fastseq.train")


@dataclass
class TrainConfig:
    """steps (optimizer steps); lr, optimizer ("adamw" | "sgd"), weight_decay, decay ("matrices": weight
    decay on weight matrices only, none on biases, norms and embeddings (tied output layers too); "all"),
    betas, momentum (SGD);
    schedule ("constant", "inverse_sqrt", "cosine", "slanted_triangular"), warmup, min_lr_ratio (cosine);
    grad_clip (0: none), accumulate (micro-batches per step); precision ("fp32", "bf16", "fp16");
    eval_every, log_every, checkpoint_every (steps; 0: only at the end; a checkpoint is written before
    the evaluation of its step, so a failing evaluation loses nothing); out_dir (logs, curves,
    checkpoint.pt; None: nothing written); loggers (where rows go in out_dir: "jsonl", "csv",
    "tensorboard"); resume (continue from out_dir/checkpoint.pt when present); seed; progress (a
    progress bar)."""

    steps: int = 1000
    lr: float = 3e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    decay: str = "matrices"
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9
    schedule: str = "constant"
    warmup: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    accumulate: int = 1
    precision: str = "fp32"
    eval_every: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    out_dir: Optional[str] = None
    loggers: list = field(default_factory=lambda: ["jsonl"])
    resume: bool = True
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "accumulate", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig: {name} must be an int >= 1, got {value!r}")
        for name in ("eval_every", "checkpoint_every", "warmup", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainConfig: {name} must be an int >= 0, got {value!r}")
        # numbers: a YAML `3e-4` arrives as a string, taken as the number it spells
        for name, low, high in (("lr", 0, None), ("weight_decay", 0, None), ("grad_clip", 0, None),
                                ("momentum", 0, 1), ("min_lr_ratio", 0, 1)):
            setattr(self, name, float(number(f"TrainConfig: {name}", getattr(self, name), float, low, high)))
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ValueError(f"TrainConfig: betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = [number("TrainConfig: betas", b, float, 0, 1, high_open=True) for b in self.betas]
        for name in ("resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig: {name} must be true or false, got {getattr(self, name)!r}")
        if self.out_dir is not None and not isinstance(self.out_dir, str):
            raise ValueError(f"TrainConfig: out_dir must be a path, got {self.out_dir!r}")
        if self.decay not in DECAY:
            raise ValueError(f"TrainConfig: decay must be one of {DECAY}, got {self.decay!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"TrainConfig: optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"TrainConfig: precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig: lr must be > 0, got {self.lr!r}")
        if self.momentum >= 1:
            raise ValueError(f"TrainConfig: momentum must lie in [0, 1), got {self.momentum!r}")
        schedule(self.schedule, self.steps, self.warmup)  # raises on a bad name
        self.loggers = loggers.check_names("TrainConfig", self.loggers)


def decay_groups(model: nn.Module, groups: list) -> list:
    """Optimizer groups (parameters, or dicts of them with their settings) split so that weight decay falls on
    weight matrices only: biases, norms (every 1-D parameter) and embeddings (a tied output layer too) go to
    a group of their own with weight_decay 0, keeping the rest of its group's settings."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": list(groups)}]
    out = []
    for group in groups:
        params, settings = list(group["params"]), {k: v for k, v in group.items() if k != "params"}
        exempt = [p for p in params if p.dim() < 2 or id(p) in embeddings]
        decayed = [p for p in params if not (p.dim() < 2 or id(p) in embeddings)]
        if decayed:
            out.append({**settings, "params": decayed})
        if exempt:
            out.append({**settings, "params": exempt, "weight_decay": 0.0})
    return out


def make_optimizer(model: nn.Module, config: TrainConfig, param_groups: Optional[list] = None):
    """The config's optimizer over param_groups (default: every parameter that requires a gradient), split by
    config.decay."""
    groups = param_groups if param_groups is not None else [p for p in model.parameters() if p.requires_grad]
    if config.decay == "matrices":
        groups = decay_groups(model, groups)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


class _Objective(nn.Module):
    """The loss as a module's forward, so that DistributedDataParallel sees every call."""

    def __init__(self, model: nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict) -> Tensor:
        return self.loss_fn(self.model, batch)


def shard(batch: dict, rank: int, world: int) -> dict:
    """This process's rows of a global batch (rows rank, rank + world, ...); non-tensors as they are."""
    return {k: v[rank::world] if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in batch.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


class Trainer:
    """Trainer(model, config, batches, loss_fn, evaluate=None, param_groups=None, device=None, on_save=None,
    callbacks=None).

    batches(i) -> the i-th micro-batch (dict); loss_fn(model, batch) -> scalar loss; evaluate(model) ->
    {metric: value} (run without gradients, in eval mode); param_groups: optimizer parameter groups
    (default all parameters; ULMFiT passes one group per layer with its own lr), each split by
    config.decay (`decay_groups`); optimizer: one to go on with (ULMFiT's unfreezing stages keep theirs):
    its groups' lr are the schedule's base rates, its moments kept; on_save(): called on
    rank 0 after each checkpoint (a run writes its loadable model there); callbacks: objects with any of
    on_step(trainer, row) (every optimizer step: step, loss, lr), on_eval(trainer, metrics) and
    on_checkpoint(trainer, path) (rank 0); one that sets `trainer.stop = True` ends the fit after that step
    (early stopping; under torchrun, set it on every rank alike). Rows go to config.loggers in out_dir and to the
    `fastseq.train` logger (logging, INFO). `fit()` returns the logged history (a list of dicts)."""

    def __init__(self, model: nn.Module, config: TrainConfig, batches: Callable[[int], dict],
                 loss_fn: Callable[[nn.Module, dict], Tensor], evaluate: Optional[Callable[[nn.Module], dict]] = None,
                 param_groups: Optional[list] = None, device: Optional[torch.device] = None,
                 on_save: Optional[Callable[[], None]] = None, callbacks: Optional[list] = None,
                 optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        self.config, self.batches, self.evaluate, self.on_save = config, batches, evaluate, on_save
        self.callbacks = loggers.check_callbacks(callbacks)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        objective = _Objective(self.model, loss_fn)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # only a model that leaves parameters out of its loss (a classifier: its LM's output layer) says so;
            # DDP's search for unused parameters costs every step and warns on every rank where none are
            unused = bool(getattr(model, "unused_parameters", False))
            objective = nn.parallel.DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=unused)
        self.objective = objective
        c = config
        if optimizer is not None:
            self.optimizer = optimizer
            for group in optimizer.param_groups:  # this fit's schedule starts from the groups' rates now
                group.pop("initial_lr", None)
        else:
            self.optimizer = make_optimizer(model, c, param_groups)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, schedule(c.schedule, c.steps, c.warmup, c.min_lr_ratio))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.precision == "fp16")
        self.step, self.stop = 0, False
        self.history: list[dict] = []
        self.checkpoint_path = os.path.join(c.out_dir, "checkpoint.pt") if c.out_dir else None
        self.loggers = loggers.make(c.loggers, c.out_dir) if c.out_dir and self.rank == 0 else []
        if self.checkpoint_path and c.resume and os.path.exists(self.checkpoint_path):
            self.load_checkpoint(self.checkpoint_path)
        elif self.step == 0:
            torch.manual_seed(c.seed)

    # ------------------------------------------------------------------------------------ the loop

    def fit(self) -> list[dict]:
        c = self.config
        if self.loggers:
            os.makedirs(c.out_dir, exist_ok=True)
        resumed, self._log_from_checkpoint = getattr(self, "_log_from_checkpoint", False), False
        for logger in self.loggers:  # a resumed run's files as of its checkpoint: no row twice after a kill
            if resumed or not isinstance(logger, loggers.JsonlLogger):
                logger.restart(self.history)
        try:
            if resumed:
                self._evaluate_checkpoint_step()
            return self._fit()
        finally:
            for logger in self.loggers:
                logger.close()

    def _fit(self) -> list[dict]:
        c = self.config
        bar = self._progress()
        tokens, losses, started = 0, [], time.perf_counter()
        while self.step < c.steps and not self.stop:
            self.objective.train()
            loss_sum = 0.0
            for micro in range(c.accumulate):
                batch = self.batches(self.step * c.accumulate + micro)
                if self.world > 1:
                    batch = shard(batch, self.rank, self.world)
                batch = to_device(batch, self.device)
                tokens += _count_tokens(batch)
                with self._autocast():
                    loss = self.objective(batch) / c.accumulate
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the loss is {loss.item()} at step {self.step}; lower the learning "
                                             f"rate or use bf16/fp32 rather than fp16")
                self.scaler.scale(loss).backward()
                loss_sum += loss.item()
            if c.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            losses.append(loss_sum)
            self._call("on_step", {"step": self.step, "loss": loss_sum, "lr": self.scheduler.get_last_lr()[0]})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
            if self.step % c.log_every == 0 or self.step == c.steps:
                elapsed = time.perf_counter() - started
                self._log({"step": self.step, "loss": sum(losses) / len(losses), "lr": self.scheduler.get_last_lr()[0],
                           "tokens_per_s": tokens * self.world / elapsed, "elapsed_s": elapsed}, bar)
                losses = []
            if self.checkpoint_path and ((c.checkpoint_every and self.step % c.checkpoint_every == 0)
                                         or self.step == c.steps):
                self.save_checkpoint(self.checkpoint_path)  # before the evaluation: it may fail
            if self.evaluate and ((c.eval_every and self.step % c.eval_every == 0) or self.step == c.steps):
                metrics = self.run_evaluation()
                self._log({"step": self.step, **metrics}, bar)
                self._call("on_eval", metrics)
                if self.checkpoint_path and self.step == c.steps:
                    self.save_checkpoint(self.checkpoint_path)  # the final checkpoint holds the final metrics
        if bar is not None:
            bar.close()
        if self.rank == 0 and c.out_dir:
            self.plot(os.path.join(c.out_dir, "curves.png"))
        return self.history

    def _evaluate_checkpoint_step(self) -> None:
        """A checkpoint is written before its step's evaluation: a run resumed from it evaluates that step
        (as the uninterrupted run did, random draws included) when its history lacks the result."""
        c = self.config
        if not (self.evaluate and c.eval_every and self.step % c.eval_every == 0 and 0 < self.step < c.steps):
            return
        if any(r.get("step") == self.step and any(k.startswith("eval_") for k in r) for r in self.history):
            return
        metrics = self.run_evaluation()
        self._log({"step": self.step, **metrics})
        self._call("on_eval", metrics)

    @torch.no_grad()
    def run_evaluation(self) -> dict:
        self.model.eval()
        with self._autocast():
            metrics = self.evaluate(self.model)
        self.model.train()
        return {f"eval_{k}" if not k.startswith("eval_") else k: v for k, v in metrics.items()}

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _progress(self):
        """Rank 0's progress: a tqdm bar on a terminal, one line every few seconds in a log."""
        if not self.config.progress or self.rank != 0:
            return None
        return progress(self.config.steps, self.step)

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            fn = getattr(callback, hook, None)
            if fn is not None:
                fn(self, *args)

    def _log(self, row: dict, bar=None) -> None:
        self.history.append(row)
        if self.rank != 0:
            return
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        _log.info(text)
        if bar is not None and any(k.startswith("eval_") for k in row):
            bar.write(text)
        for logger in self.loggers:
            logger.log(row)

    # ----------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self, path: str) -> None:
        """Model, optimizer, schedule, scaler, step, history and RNG states, written atomically (rank 0)."""
        if self.rank != 0:
            return
        state = {"format": FORMAT, "step": self.step, "config": dataclasses.asdict(self.config),
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "history": self.history, "rng": {"torch": torch.get_rng_state(),
                                                  "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                                                  else []}}
        if hasattr(self.model, "config"):
            state["model_class"] = type(self.model).__name__
            state["model_config"] = dataclasses.asdict(self.model.config)
        atomic.torch_save(state, path)
        if self.on_save is not None:
            self.on_save()
        self._call("on_checkpoint", path)

    def load_checkpoint(self, path: str) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated or foreign file
            raise ValueError(f"{path}: not a readable fastseq checkpoint ({type(e).__name__}: {e}); delete it to "
                             f"start afresh") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path}: not a fastseq checkpoint (format {FORMAT!r})")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ValueError(f"{path}: its model does not match this one: {str(e).splitlines()[0]}") from None
        # the optimizer's state (moments) and the schedule's position resume; its settings are this config's
        # (a resumed run allowed another lr, weight decay or schedule trains under them, not the saved ones)
        configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        saved_groups = state["optimizer"].get("param_groups", [])
        if len(saved_groups) != len(configured):
            raise ValueError(f"{path}: its optimizer has {len(saved_groups)} parameter groups, this run "
                             f"{len(configured)} (a run begun with weight decay on every parameter resumes with "
                             f"train.decay: all)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for group, settings in zip(self.optimizer.param_groups, configured):
            group.update(settings)
        self.scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]  # its rules: this config's
        for group, base, rule in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * rule(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.history = state["step"], state["history"]
        self._log_from_checkpoint = True  # fit() rewrites the log as of the checkpoint: no row twice after a kill
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def plot(self, path: str) -> Optional[str]:
        """Training loss (and every eval_* loss) against the step, as a PNG."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, ax = plt.subplots(figsize=(7, 4.5))
        train = [(r["step"], r["loss"]) for r in self.history if "loss" in r]
        if train:
            ax.plot(*zip(*train), label="train loss")
        for key in sorted({k for r in self.history for k in r if k.startswith("eval_") and "loss" in k}):
            pts = [(r["step"], r[key]) for r in self.history if key in r]
            ax.plot(*zip(*pts), marker="o", label=key.replace("_", " "))
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per token)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _count_tokens(batch: dict) -> int:
    for key in ("tgt_lengths", "lengths"):
        if isinstance(batch.get(key), Tensor):
            return int(batch[key].sum())
    for key in ("tokens", "inputs", "tgt"):
        if isinstance(batch.get(key), Tensor):
            return batch[key].numel()
    return 0


def init_distributed() -> bool:
    """Join the process group torchrun describes (gloo on the CPU, nccl on GPUs); False when not under
    torchrun. Each process then uses GPU LOCAL_RANK."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return True


__all__ = ["TrainConfig", "Trainer", "init_distributed", "shard"]

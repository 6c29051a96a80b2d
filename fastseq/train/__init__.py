"""Training: the Trainer (optimizers, schedules, mixed precision, accumulation, clipping, evaluation,
progress, logs, curves, checkpoints and exact resume, DDP under torchrun), learning-rate schedules and
metrics."""
from .metrics import accuracy, bleu, perplexity
from .schedules import SCHEDULES, schedule
from .trainer import TrainConfig, Trainer, init_distributed, shard

__all__ = ["SCHEDULES", "TrainConfig", "Trainer", "accuracy", "bleu", "init_distributed", "perplexity", "schedule",
           "shard"]

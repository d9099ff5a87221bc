"""Training: VSE++ loss, the resumable loop, atomic checkpoints and run logs."""
from temde.training.checkpoint import (load_checkpoint, restore_model, restore_vocab, rng_state, save_checkpoint,
                                       set_rng_state)
from temde.training.logging import CSVLogger, RunLogger, TensorBoardLogger
from temde.training.loop import TrainSettings, train
from temde.training.loss import ContrastiveLoss, triplet_loss

__all__ = [
    "ContrastiveLoss", "triplet_loss", "save_checkpoint", "load_checkpoint", "restore_model", "restore_vocab",
    "rng_state", "set_rng_state", "CSVLogger", "RunLogger", "TensorBoardLogger", "TrainSettings", "train",
]

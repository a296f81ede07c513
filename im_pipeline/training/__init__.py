"""Training: label masking per loss mode, weighted loss, the Trainer subclass (KL, NEFTune), ``train_arm``."""

from im_pipeline.training.callback import TrainLogCallback
from im_pipeline.training.held_out import output_token_loss
from im_pipeline.training.loss import loss_denominator, weighted_lm_loss
from im_pipeline.training.masking import WeightedCollator, encode_example
from im_pipeline.training.packing import PaddingFreeCollator
from im_pipeline.training.trainer import build_training_arguments, train_arm
from im_pipeline.training.weighted_trainer import WeightedLossTrainer

__all__ = [
    "PaddingFreeCollator",
    "TrainLogCallback",
    "WeightedCollator",
    "WeightedLossTrainer",
    "build_training_arguments",
    "encode_example",
    "loss_denominator",
    "output_token_loss",
    "train_arm",
    "weighted_lm_loss",
]

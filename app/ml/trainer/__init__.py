"""Training: fit() runs a whole fine-tuning job, from a TrainConfig (app/ml/config.py) and data splits to the
best weights and metrics.

fitting.py   fit(): prepare the run, then the cached-features path (linear) or the fine-tuning path
context.py   TrainContext: what every part of a run reads
loop.py      the epoch loop both paths share
resume.py    the loop's record (best epoch, early stopping) and the resumable training state
rng.py       every random stream, captured and restored for an exact resume
loaders.py   splits, decoded images and batches (DataLoaders or batches on the device)
baseline.py  linear probes on cached features: the model before fine-tuning, LP-FT's head start
hooks.py     what fit() reports and asks its caller
"""

from app.ml.trainer.fitting import fit
from app.ml.trainer.hooks import BaseHooks, EpochReport, FitResult, TrainingHooks, TrainingState, ValPredictions
from app.ml.trainer.loaders import batches, make_loader

__all__ = [
    "BaseHooks",
    "EpochReport",
    "FitResult",
    "TrainingHooks",
    "TrainingState",
    "ValPredictions",
    "batches",
    "fit",
    "make_loader",
]

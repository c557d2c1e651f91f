"""Training, evaluation and sampling of :class:`nvae_fast.model.NVAE` (used by the ``nvae-fast`` CLI).

- :mod:`.trainer`: :class:`TrainConfig` and the :class:`Trainer` loop (AMP, gradient skipping, DDP);
- :mod:`.optim`: Adamax, warm-up + cosine learning rate, EMA of the weights;
- :mod:`.checkpoint`: atomic, ``weights_only`` checkpoints with RNG states;
- :mod:`.distributed`: ``torchrun`` process-group setup;
- :mod:`.evaluate`: importance-sampled log-likelihood in bits/dim;
- :mod:`.sampling`: BN re-adjustment for sampling and PNG grids;
- :mod:`.bench`: training throughput and peak memory;
- :mod:`.monitor`: progress bar, TensorBoard and ``metrics.jsonl``.
- :mod:`.interrupt`: SIGINT/SIGTERM as a stop after the current step, or at once.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import evaluate, log_likelihood
from .optim import EMA, WarmupCosine, build_optimizer
from .sampling import readjust_bn, sample_images, save_png
from .trainer import TrainConfig, Trainer

__all__ = [
    "TrainConfig",
    "Trainer",
    "EMA",
    "WarmupCosine",
    "build_optimizer",
    "save_checkpoint",
    "load_checkpoint",
    "evaluate",
    "log_likelihood",
    "readjust_bn",
    "sample_images",
    "save_png",
]

"""SimCLR: a simple framework for contrastive learning of visual representations.

Chen, Kornblith, Norouzi, Hinton (2020), arXiv:2002.05709; SimCLRv2, arXiv:2006.10029.
"""

__version__ = "0.1.0"

from simclr.augment import ImageAugment, two_views
from simclr.loss import nt_xent
from simclr.model import ProjectionHead, SimCLR, build_encoder, build_model
from simclr.optim import LARS, lr_at

__all__ = [
    "LARS",
    "ImageAugment",
    "ProjectionHead",
    "SimCLR",
    "__version__",
    "build_encoder",
    "build_model",
    "lr_at",
    "nt_xent",
    "two_views",
]

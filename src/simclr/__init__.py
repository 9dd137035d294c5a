"""SimCLR: a simple framework for contrastive learning of visual representations.

Chen, Kornblith, Norouzi, Hinton (2020), arXiv:2002.05709; SimCLRv2, arXiv:2006.10029.

    run = simclr.train(data="photos/")     # or an array, a tensor, a Dataset; any config key
    h = run.embed(images)                   # features of new inputs; run.encoder is f
    run = simclr.Run.open("runs/photos")    # a trained run, later

The pipeline, part by part: data (`load_images`) -> augment (`ImageAugment`, `two_views`) ->
encoder f and head g (`build_model`) -> loss (`nt_xent`) -> optimizer (`LARS`, `lr_at`), one
update (`train_step`).
"""

__version__ = "0.1.0"

from simclr.api import train
from simclr.augment import ImageAugment, two_views
from simclr.config import Config, load_config
from simclr.data import load_images
from simclr.device import native_bf16, use_bf16
from simclr.image import build_augment
from simclr.loss import nt_xent
from simclr.model import ProjectionHead, SimCLR, build_encoder, build_model
from simclr.optim import LARS, build_optimizer, lr_at, param_groups
from simclr.run import Run
from simclr.training import train_step

__all__ = [
    "LARS",
    "Config",
    "ImageAugment",
    "ProjectionHead",
    "Run",
    "SimCLR",
    "__version__",
    "build_augment",
    "build_encoder",
    "build_model",
    "build_optimizer",
    "load_config",
    "load_images",
    "lr_at",
    "native_bf16",
    "nt_xent",
    "param_groups",
    "train",
    "train_step",
    "two_views",
    "use_bf16",
]

"""Distillation methods, one LightningModule each, sharing `DistillModule`'s loop pieces."""

from gad.methods.base import DistillModule
from gad.methods.gad import GADModule
from gad.methods.kd import KDModule  # noqa: F401  (method=kd)
from gad.methods.seqkd import SeqKDModule

__all__ = ["DistillModule", "GADModule", "SeqKDModule"]

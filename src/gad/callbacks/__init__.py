"""Lightning callbacks: checkpoints, rollout samples, student export, progress, end-of-run summary and figures.

The toy world's held-out accuracy callback lives with the toy world: gad.toy.accuracy."""

from gad.callbacks.checkpoint import StepCheckpoint
from gad.callbacks.export import ExportStudent
from gad.callbacks.progress import NetworkSummary, PlanProgressBar
from gad.callbacks.rank_digest import RankDigest
from gad.callbacks.samples import RolloutSamples
from gad.callbacks.summary import RunSummary

__all__ = [
    "ExportStudent",
    "NetworkSummary",
    "PlanProgressBar",
    "RankDigest",
    "RolloutSamples",
    "RunSummary",
    "StepCheckpoint",
]

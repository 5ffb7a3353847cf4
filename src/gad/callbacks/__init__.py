"""Lightning callbacks: checkpoints, rollout samples, student export, progress, end-of-run summary and figures."""

from gad.callbacks.checkpoint import StepCheckpoint
from gad.callbacks.export import ExportStudent
from gad.callbacks.progress import NetworkSummary, PlanProgressBar
from gad.callbacks.rank_digest import RankDigest
from gad.callbacks.samples import RolloutSamples
from gad.callbacks.summary import RunSummary
from gad.callbacks.toy_accuracy import ToyAccuracy

__all__ = [
    "ExportStudent", "NetworkSummary", "PlanProgressBar", "RankDigest", "RolloutSamples", "RunSummary", "StepCheckpoint",
    "ToyAccuracy",
]

"""Lightning callbacks: checkpoints, rollout samples, student export, end-of-run summary."""

from gad.callbacks.checkpoint import StepCheckpoint
from gad.callbacks.export import ExportStudent
from gad.callbacks.rank_digest import RankDigest
from gad.callbacks.samples import RolloutSamples
from gad.callbacks.summary import RunSummary
from gad.callbacks.toy_accuracy import ToyAccuracy

__all__ = ["ExportStudent", "RankDigest", "RolloutSamples", "RunSummary", "StepCheckpoint", "ToyAccuracy"]

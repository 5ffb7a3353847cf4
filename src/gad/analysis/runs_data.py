"""A run folder's logs as pandas tables: per-step metrics and the scored rollout samples.

`load_metrics` reads `<run>/metrics.csv` (Lightning's CSVLogger) into one row per training
step, indexed by `step` = the number of completed method steps (1, 2, ...: the numbering of
`rollouts.jsonl` and of `checkpoints/step_<k>.ckpt`), with the `train/` prefix dropped.

`load_rollouts` reads `<run>/rollouts.jsonl` into one row per scored response (the teacher's
and each student sample), so histograms, scatters and rankings are one-liners.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from gad import json_lines
from gad.errors import GADError
from gad.runs import latest_run, run_config
from gad.step_record import Phase

RUN_DIR_ENV = "GAD_RUN_DIR"
WARMUP, ADVERSARIAL = "warm-up", "adversarial"


# ------------------------------------------------------------------ which run


def project_root() -> Path:
    """The repository root: $PROJECT_ROOT, else the checkout this package lives in, else the cwd."""
    if os.environ.get("PROJECT_ROOT"):
        return Path(os.environ["PROJECT_ROOT"])
    here = Path(__file__).resolve().parents[3]  # src/gad/analysis/runs_data.py -> repository root
    return here if (here / "conf" / "train.yaml").is_file() else Path.cwd()


def resolve_run_dir(run_dir: str | Path | None = None, task_name: str = "train") -> Path:
    """The run to analyse: `run_dir`, else $GAD_RUN_DIR, else the newest run of `outputs/<task_name>`.

    A relative path is taken from the current folder, else from the repository root.
    """
    chosen = run_dir or os.environ.get(RUN_DIR_ENV)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_absolute() and not path.exists() and (project_root() / path).exists():
            path = project_root() / path  # relative to the repository (a notebook's cwd is notebooks/)
        run_config(path)  # a clear error if it is not a run folder
        return path
    return latest_run(project_root() / "outputs" / task_name)


def _warmup_steps(run_dir: Path) -> int | None:
    try:
        value = run_config(run_dir).get("method", {}).get("warmup_steps")
    except GADError:
        return None
    return int(value) if value is not None else None


# ------------------------------------------------------------------ metrics


def metrics_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """Lightning's CSV rows -> one row per training step (index `step`), `train/` prefix dropped.

    Rows without `train/step` (validation-only rows) are dropped; several rows of one step
    are merged, keeping each column's first non-blank value.
    """
    if "train/step" not in raw.columns:
        raise GADError("metrics.csv has no 'train/step' column (not a GAD/SeqKD training log)")
    train = raw[raw["train/step"].notna()]
    cols = [c for c in train.columns if c.startswith("train/")]
    out = train[cols].rename(columns=lambda c: c.removeprefix("train/"))
    out["step"] = out.pop("step").astype(int)
    return out.groupby("step", sort=True).first()


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """`<run>/metrics.csv` (or a path to such a CSV) as `metrics_frame`."""
    path = Path(run_dir)
    path = path / "metrics.csv" if path.is_dir() else path
    if not path.is_file():
        raise GADError(f"{path}: no such metrics file")
    return metrics_frame(pd.read_csv(path))


def warmup_end(metrics: pd.DataFrame) -> int | None:
    """The last warm-up step (the adversarial phase starts at the next one); None if it never starts.

    Read from the logged `phase` column (0 warm-up, 1 adversarial), so it is right for
    resumed runs and ablations alike; a run without that column (SeqKD) has no boundary.
    """
    if "phase" not in metrics.columns:
        return None
    adversarial = metrics.index[metrics["phase"].fillna(0) >= Phase.ADVERSARIAL.code]
    return int(adversarial.min()) - 1 if len(adversarial) else None


# ------------------------------------------------------------------ rollouts


# The last user turn of a prompt rendered by a ChatML (Qwen) or Llama-3 chat template.
_USER_TURN = re.compile(
    r"(?:<\|im_start\|>user\n(?P<chatml>.*?)<\|im_end\|>"
    r"|<\|start_header_id\|>user<\|end_header_id\|>\n\n(?P<llama3>.*?)<\|eot_id\|>)",
    re.DOTALL,
)


def user_turn(prompt: str) -> str:
    """The last user message of a rendered prompt (ChatML or Llama 3 markup); else the prompt as is."""
    found = list(_USER_TURN.finditer(prompt))
    if not found:
        return prompt
    last = found[-1]
    return last.group("chatml") if last.group("chatml") is not None else last.group("llama3")


def rollouts_frame(records: Iterable[dict], warmup_steps: int | None = None) -> pd.DataFrame:
    """Rollout records (one per prompt) -> one row per scored response.

    Columns: step, phase ("warm-up"/"adversarial"), id, prompt, role ("teacher"/"student"),
    sample (index of the student sample; <NA> for the teacher), text, score, length (tokens,
    the end-of-turn token included), teacher_score and teacher_text (of the same prompt and
    step), margin (score - teacher_score: how far D ranks the response above the teacher's).

    A record of step k was sampled and scored during step k, before that step's D update.
    With `warmup_steps` the phase is derived from that (adversarial iff k > warmup_steps),
    otherwise the record's own `phase` field is used.
    """
    rows = []
    for rec in records:
        step = int(rec["step"])
        if warmup_steps is not None:
            phase = ADVERSARIAL if step > warmup_steps else WARMUP
        else:
            phase = ADVERSARIAL if rec.get("phase") == "adversarial" else WARMUP
        base = {
            "step": step,
            "phase": phase,
            "id": rec["id"],
            "prompt": rec["prompt"],
            "teacher_score": float(rec["teacher_score"]),
            "teacher_text": rec["teacher"],
        }
        rows.append(
            {
                **base,
                "role": "teacher",
                "sample": pd.NA,
                "text": rec["teacher"],
                "score": float(rec["teacher_score"]),
                "length": int(rec["teacher_length"]),
            }
        )
        for j, s in enumerate(rec.get("samples", [])):
            rows.append(
                {
                    **base,
                    "role": "student",
                    "sample": j,
                    "text": s["text"],
                    "score": float(s["score"]),
                    "length": int(s["length"]),
                }
            )
    columns = [
        "step",
        "phase",
        "id",
        "prompt",
        "role",
        "sample",
        "text",
        "score",
        "length",
        "teacher_score",
        "teacher_text",
    ]
    df = pd.DataFrame(rows, columns=columns)
    df["sample"] = df["sample"].astype("Int64")
    df["margin"] = df["score"] - df["teacher_score"]
    return df


def load_rollouts(run_dir: str | Path, warmup_steps: int | None = None) -> pd.DataFrame:
    """`<run>/rollouts.jsonl` as `rollouts_frame`; the phase boundary comes from the run's config."""
    run_dir = Path(run_dir)
    path = run_dir / "rollouts.jsonl"
    if not path.is_file():
        raise GADError(
            f"{path}: no rollout samples (callbacks.rollout_samples was off, or no step reached every_n_steps)"
        )
    if warmup_steps is None:
        warmup_steps = _warmup_steps(run_dir)
    records = []
    with open(path, "rb") as fh:  # a received run's file: a bad line is one line naming it, not a traceback
        for number, raw in enumerate(fh, start=1):
            if raw.strip():
                try:
                    records.append(json_lines.loads(raw))
                except ValueError as err:  # invalid JSON or UTF-8, nested too deeply, a lone surrogate
                    raise GADError(f"{path} line {number}: {' '.join(str(err).split())[:160]}") from None
    return rollouts_frame(records, warmup_steps)


def early_late_steps(steps: Iterable[int], fraction: float = 1 / 3) -> tuple[list[int], list[int]]:
    """The first and the last `fraction` of the distinct logged steps (at least one step each)."""
    distinct = sorted({int(s) for s in steps})
    if not distinct:
        return [], []
    k = max(1, math.floor(len(distinct) * fraction))
    return distinct[:k], distinct[-k:]


# ------------------------------------------------------------------ reward hacking and examples


def correlation(x: Iterable[float], y: Iterable[float], method: str = "pearson") -> float:
    """Correlation of paired values (pairs with a NaN dropped); NaN if under 2 pairs or a constant side."""
    frame = pd.DataFrame({"x": np.asarray(list(x), dtype=float), "y": np.asarray(list(y), dtype=float)}).dropna()
    if len(frame) < 2 or frame["x"].nunique() < 2 or frame["y"].nunique() < 2:
        return float("nan")
    if method == "spearman":  # Pearson on average ranks (pandas would need scipy for this)
        frame = frame.rank()
    elif method != "pearson":
        raise GADError(f"correlation method must be 'pearson' or 'spearman', got '{method}'")
    return float(frame["x"].corr(frame["y"]))


def length_correlations(rollouts: pd.DataFrame, role: str = "student") -> pd.DataFrame:
    """Score-length correlation of one role's responses, over all steps and per phase.

    Columns: n, pearson, spearman; index: "all", then each phase present. A strongly
    positive value in the adversarial phase suggests the student is buying reward with length.
    """
    df = rollouts[rollouts["role"] == role]
    groups = [("all", df)] + [(p, df[df["phase"] == p]) for p in (WARMUP, ADVERSARIAL) if (df["phase"] == p).any()]
    return pd.DataFrame(
        [
            {
                "subset": name,
                "n": len(g),
                "pearson": correlation(g["length"], g["score"]),
                "spearman": correlation(g["length"], g["score"], "spearman"),
            }
            for name, g in groups
        ]
    ).set_index("subset")


def extreme_samples(rollouts: pd.DataFrame, k: int = 3, phase: str | None = None) -> pd.DataFrame:
    """The `k` highest- and `k` lowest-scored student samples, each beside the teacher's response.

    Columns: rank ("highest"/"lowest"), step, phase, id, prompt (its last user turn, see
    `user_turn`), sample, sample_score, sample_length, teacher, teacher_score, margin.

    `phase` ("warm-up" or "adversarial") restricts to that phase. Scores are compared across
    steps, where D's scale drifts; `margin` (sample minus teacher score, same step and prompt)
    is the step-local view.
    """
    df = rollouts[rollouts["role"] == "student"]
    if phase is not None:
        df = df[df["phase"] == phase]
    ranked = df.sort_values(["score", "step"], ascending=[False, True], kind="stable")
    top = ranked.head(k).assign(rank="highest")
    bottom = ranked.iloc[len(top) :].tail(k).iloc[::-1].assign(rank="lowest")  # lowest first; never a top sample again
    cols = [
        "rank",
        "step",
        "phase",
        "id",
        "prompt",
        "text",
        "score",
        "length",
        "teacher_text",
        "teacher_score",
        "margin",
    ]
    out = pd.concat([top, bottom])[cols].rename(
        columns={"text": "sample", "score": "sample_score", "length": "sample_length", "teacher_text": "teacher"}
    )
    out["prompt"] = out["prompt"].map(user_turn)
    return out.reset_index(drop=True)

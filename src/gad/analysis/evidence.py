"""Tables and plots of the toy evidence sweeps (conf/experiment/toy_evidence.yaml, toy_compare.yaml; docs/results.md).

    python src/train.py -m experiment=toy_evidence
    python -m gad.analysis.evidence outputs/toy_evidence/multiruns/<time> --out docs/figures
    python -m gad.analysis.evidence <sweep> [<sweep> ...] --compare [--equal-time <sweep> ...] --out docs/figures
    python bench/toy_compare.py --write     # the whole comparison: its sweeps, then this (docs/measured/toy_compare.md)

An arm is the job's `arm` override, else its `method` override (toy_compare sweeps methods), else gad; a job on
data=toy_two_teachers is the arm ", 2 teachers", a job of an `--equal-time` sweep the arm ", equal time".
`--compare` prints the methods' table with each arm's cost:
- training time: the wall time of its training steps (summary.json's `step_seconds`: no validation, no toy
  evaluation), plus, for SODA, the time its one-time snapshot took to draw (`train/snapshot_s` of the job that drew
  it: the other jobs of the same seed find it drawn, and it counts for them too);
- job wall time: config.yaml written -> summary.json written (training plus the toy evaluation before and after,
  the same for every arm; KD's first job also fits its toy teacher);
- the tokens its training generated (GAD and KD: the rollouts' `train/generated_tokens` summed over steps; SODA:
  its one-time snapshot, `train/snapshot_tokens`; SeqKD: none).
`--equal-time-steps` prints, from the given sweeps, how many steps each cheaper arm trains in GAD's training time
(`equal_time_steps`): what bench/toy_compare.py runs as the `--equal-time` sweeps.

Reads every finished job of the sweep (its arm and seed from `.hydra/overrides.yaml`, held-out
results from `summary.json`, per-step metrics from `metrics.csv`), prints a Markdown table of
mean +- standard deviation over seeds per arm and a table of reward and length over the
adversarial phase, and writes two figures: held-out accuracy per arm, and response length and
reward over the adversarial phase (on-policy GAD vs the frozen discriminator).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from gad.errors import GADError, exit_on_user_error  # noqa: E402
from gad.step_record import Phase  # noqa: E402

SPLITS = ("in_dist", "out_of_dist")
ARM_ORDER = ["gad", "seqkd", "soda", "kd", "ropd", "off_policy", "no_g_warmup", "no_d_warmup", "bce"]
TWO_TEACHERS = ", 2 teachers"  # the suffix of an arm trained on data=toy_two_teachers
EQUAL_TIME = ", equal time"  # the suffix of an arm of an equal-time sweep (its steps fill GAD's training time)


def arm_rank(arm: str) -> tuple[int, int, int]:
    """Sort key: one teacher before two, equal steps before equal time, then ARM_ORDER."""
    base = arm.removesuffix(EQUAL_TIME)
    timed = base != arm
    method = base.removesuffix(TWO_TEACHERS)
    return (method != base, timed, ARM_ORDER.index(method) if method in ARM_ORDER else 99)


def arm_method(arm: str) -> str:
    """The arm's method (or ablation) name, without its teachers and budget suffixes."""
    return arm.removesuffix(EQUAL_TIME).removesuffix(TWO_TEACHERS)


ADVERSARIAL = Phase.ADVERSARIAL.code  # the logged train/phase of the adversarial phase


def load_jobs(*sweep_dirs: Path, equal_time: tuple[Path, ...] = ()) -> pd.DataFrame:
    """One row per finished job of the sweeps: arm, seed, each result before and after training, and its cost.
    Jobs of the `equal_time` sweeps are the arms ", equal time"."""
    rows = []
    jobs = [
        (p, suffix)
        for dirs, suffix in ((sweep_dirs, ""), (equal_time, EQUAL_TIME))
        for d in dirs
        for p in sorted(d.iterdir())
        if p.is_dir() and p.name.isdigit()
    ]
    for job, suffix in jobs:
        summary = job / "summary.json"
        if not summary.is_file():
            continue
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        arm = overrides.get("arm", overrides.get("method", "gad"))
        arm += (TWO_TEACHERS if overrides.get("data") == "toy_two_teachers" else "") + suffix
        row = {"job": job, "arm": arm, "seed": int(overrides.get("seed", 1234))}
        config = job / "config.yaml"
        row["wall_s"] = summary.stat().st_mtime - config.stat().st_mtime if config.is_file() else float("nan")
        written = json.loads(summary.read_text())
        row["step_s"] = float(written.get("step_seconds", float("nan")))
        for name, values in written.get("results", {}).items():
            row.update({f"{name} {when}": value for when, value in values.items()})
        row["metrics"] = pd.read_csv(job / "metrics.csv")  # read once; the curves come from it too
        # The student's NLL of held-out teacher responses after training (the sweep's optimised metric).
        row["val/nll after"] = row["metrics"]["val/nll"].dropna().iloc[-1]
        metrics = row["metrics"]
        generated = metrics["train/generated_tokens"].sum() if "train/generated_tokens" in metrics else 0.0
        snapshot = metrics["train/snapshot_tokens"].max() if "train/snapshot_tokens" in metrics else 0.0
        row["tokens"] = float(generated) + float(snapshot)
        row["steps"] = int(metrics["train/step"].max()) if "train/step" in metrics else 0
        row["snapshot_s"] = float(metrics["train/snapshot_s"].max()) if "train/snapshot_s" in metrics else 0.0
        rows.append(row)
    if not rows:
        where = ", ".join(str(d) for d in (*sweep_dirs, *equal_time))
        raise GADError(f"{where}: no finished jobs (no <job>/summary.json); is it a sweep folder?")
    frame = pd.DataFrame(rows)
    # SODA's snapshot is drawn once per seed (its student's initial weights) by the first job that needs it; the
    # others find it drawn. Its drawing time is every such job's cost: NaN where no loaded job drew it.
    soda = frame.arm.map(arm_method) == "soda"
    drawn = frame[soda & (frame.snapshot_s > 0)].groupby("seed").snapshot_s.max()
    frame["train_s"] = frame.step_s + frame.seed.map(drawn).where(soda, 0.0)
    return frame


def equal_time_steps(jobs: pd.DataFrame, reference: str = "gad") -> dict[str, int]:
    """For each arm other than `reference` (one teacher, equal steps): how many steps fill the reference arm's mean
    training time, at the arm's own mean time per step, after its one-time cost (SODA's snapshot)."""
    budget = jobs[jobs.arm == reference].train_s.mean()
    if not budget > 0:
        raise GADError(f"no finished {reference} job with a training time (summary.json's step_seconds)")
    steps = {}
    for arm in sorted(set(jobs.arm) - {reference}, key=arm_rank):
        if arm != arm_method(arm):  # two teachers, or already an equal-time arm
            continue
        group = jobs[jobs.arm == arm]
        per_step = (group.step_s / group.steps).mean()
        fixed = (group.train_s - group.step_s).mean()
        if not per_step > 0 or fixed != fixed:
            raise GADError(f"{arm}: no training time to scale (summary.json's step_seconds, SODA's snapshot_s)")
        steps[arm] = max(1, round((budget - fixed) / per_step))
    return steps


def results_table(jobs: pd.DataFrame) -> str:
    """Markdown: per arm, mean +- std over seeds of accuracy and length ratio on each split."""
    columns = [(f"toy accuracy ({s})", f"acc {s.replace('_', ' ')}") for s in SPLITS]
    columns += [(f"len / teacher ({s})", f"len/teacher {s.replace('_', ' ')}") for s in SPLITS]
    columns += [("val/nll", "val NLL")]
    header = "| arm | seeds | " + " | ".join(label for _, label in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]

    def cell(values: pd.Series) -> str:
        return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values.mean():.3f}"

    before = jobs.drop_duplicates("seed")
    lines.append(
        f"| before (initial student) | {len(before)} | "
        + " | ".join(cell(before[f"{key} before"]) if f"{key} before" in before else "-" for key, _ in columns)
        + " |"
    )
    for arm in sorted(jobs.arm.unique(), key=arm_rank):
        group = jobs[jobs.arm == arm]
        lines.append(
            f"| {arm} | {len(group)} | " + " | ".join(cell(group[f"{key} after"]) for key, _ in columns) + " |"
        )
    return "\n".join(lines)


def cost_table(jobs: pd.DataFrame) -> str:
    """Markdown: per arm, the steps its students trained, its mean training time, job wall time and tokens
    generated."""
    lines = [
        "| arm | seeds | student steps | training time (s) | job wall time (s) | tokens generated in training |",
        "|---|---|---|---|---|---|",
    ]
    for arm in sorted(jobs.arm.unique(), key=arm_rank):
        group = jobs[jobs.arm == arm]
        steps = sorted(set(group.steps))
        train_s = group.train_s.mean()
        lines.append(
            f"| {arm} | {len(group)} | {', '.join(map(str, steps))} | {'-' if train_s != train_s else f'{train_s:.0f}'} "
            f"| {group.wall_s.mean():.0f} | {group.tokens.mean():,.0f} |"
        )
    return "\n".join(lines)


def adversarial_curves(jobs: pd.DataFrame, arm: str, metric: str) -> pd.DataFrame:
    """[adversarial step x seed] of `metric` for one arm."""
    curves = {}
    for _, job in jobs[jobs.arm == arm].iterrows():
        adversarial = job.metrics[job.metrics["train/phase"] == ADVERSARIAL]
        curves[job.seed] = adversarial[metric].reset_index(drop=True)
    return pd.DataFrame(curves)


def adversarial_table(jobs: pd.DataFrame) -> str:
    """Markdown: reward and length over the adversarial phase, mean over seeds, on-policy vs frozen D."""
    lines = [
        "| arm | reward, steps 1-5 | reward, steps 11-20 | reward, last 15 | length, last 15 | teacher length, last 15 |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ("gad", "off_policy"):
        if arm not in set(jobs.arm):
            continue
        reward = adversarial_curves(jobs, arm, "train/reward_mean").mean(axis=1)
        length = adversarial_curves(jobs, arm, "train/response_len").mean(axis=1)
        teacher = adversarial_curves(jobs, arm, "train/teacher_len").mean(axis=1)
        lines.append(
            f"| {arm} | {reward[:5].mean():.2f} | {reward[10:20].mean():.2f} | {reward[-15:].mean():.2f} "
            f"| {length[-15:].mean():.2f} | {teacher[-15:].mean():.2f} |"
        )
    return "\n".join(lines)


def plot_accuracy(jobs: pd.DataFrame, path: Path) -> None:
    arms = sorted(jobs.arm.unique(), key=arm_rank)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(arms)), 3.5))
    width = 0.38
    for k, split in enumerate(SPLITS):
        key = f"toy accuracy ({split}) after"
        means = [jobs[jobs.arm == a][key].mean() for a in arms]
        xs = [i + (k - 0.5) * width for i in range(len(arms))]
        ax.bar(xs, means, width, label=split.replace("_", " "))
        for x, arm in zip(xs, arms):
            ax.scatter([x] * len(jobs[jobs.arm == arm]), jobs[jobs.arm == arm][key], color="k", s=8, zorder=3)
    ax.set_xticks(range(len(arms)), [a.replace(", ", "\n") for a in arms], fontsize=7)
    ax.set_ylabel("toy accuracy (greedy)")
    ax.set_title("held-out toy accuracy after training (bars: mean over seeds; dots: seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cost(jobs: pd.DataFrame, path: Path) -> None:
    """Each arm's held-out accuracy (mean over seeds) against its training time and its generated tokens."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (cost, label) in zip(axes, [("train_s", "training time (s)"), ("tokens", "tokens generated in training")]):
        for arm in sorted(jobs.arm.unique(), key=arm_rank):
            group = jobs[jobs.arm == arm]
            for split, marker in zip(SPLITS, "os"):
                y = group[f"toy accuracy ({split}) after"].mean()
                ax.scatter(
                    group[cost].mean(),
                    y,
                    marker=marker,
                    color=f"C{arm_rank(arm)[2]}",
                    alpha=0.5 + 0.5 * (split == SPLITS[0]),
                )
            ax.annotate(arm, (group[cost].mean(), group["toy accuracy (in_dist) after"].mean()), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("toy accuracy (o: in dist, s: out of dist)")
    fig.suptitle("score against cost, mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_on_vs_off_policy(jobs: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (metric, label) in zip(
        axes,
        [
            ("train/response_len", "student response length (tokens)"),
            ("train/reward_mean", "reward (D score of student samples)"),
        ],
    ):
        for arm in ("gad", "off_policy"):
            if arm not in set(jobs.arm):
                continue
            curves = adversarial_curves(jobs, arm, metric)
            mean = curves.mean(axis=1)
            ax.plot(mean.index + 1, mean, label=f"{arm} (mean of {curves.shape[1]} seeds)")
            ax.fill_between(mean.index + 1, curves.min(axis=1), curves.max(axis=1), alpha=0.2)
        if metric == "train/response_len":
            teacher = adversarial_curves(jobs, "gad", "train/teacher_len").mean(axis=1)
            ax.plot(teacher.index + 1, teacher, "k:", label="teacher (on gad's prompts)")
        ax.set_xlabel("adversarial step")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("on-policy GAD vs the off-policy (frozen) discriminator: band = min..max over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dirs", type=Path, nargs="+", help="outputs/<task>/multiruns/<time> (one or more)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures (default: the first sweep's)")
    parser.add_argument(
        "--prefix", default="evidence", help="figure names: <prefix>_accuracy.png, <prefix>_on_vs_off_policy.png"
    )
    parser.add_argument("--compare", action="store_true", help="the methods' comparison: results and cost per arm")
    parser.add_argument(
        "--equal-time", type=Path, nargs="+", default=[], help="sweeps whose arms trained for GAD's training time"
    )
    parser.add_argument(
        "--equal-time-steps", action="store_true", help="print only the steps each arm needs to fill GAD's time"
    )
    args = parser.parse_args()
    with exit_on_user_error():
        for folder in (*args.sweep_dirs, *args.equal_time):
            if not folder.is_dir():
                raise GADError(f"{folder}: no such sweep folder")
        jobs = load_jobs(*args.sweep_dirs, equal_time=tuple(args.equal_time))
        if args.equal_time_steps:
            print(json.dumps(equal_time_steps(jobs)))
            return
        out = args.out or args.sweep_dirs[0]
        out.mkdir(parents=True, exist_ok=True)
        print(results_table(jobs))
        print()
        figures = [out / f"{args.prefix}_accuracy.png"]
        plot_accuracy(jobs, figures[0])
        if args.compare:
            print(cost_table(jobs))
            figures.append(out / f"{args.prefix}_cost.png")
            plot_cost(jobs, figures[1])
        else:
            print(adversarial_table(jobs))
            figures.append(out / f"{args.prefix}_on_vs_off_policy.png")
            plot_on_vs_off_policy(jobs, figures[1])
        print(f"\nfigures: {', '.join(map(str, figures))}")


if __name__ == "__main__":
    main()

"""Tables and plots of the toy evidence sweeps (conf/experiment/toy_evidence.yaml, toy_compare.yaml; docs/results.md).

    python src/train.py -m experiment=toy_evidence
    python -m gad.analysis.evidence outputs/toy_evidence/multiruns/<time> --out docs/figures
    python -m gad.analysis.evidence <sweep> [<sweep> ...] --compare --out docs/figures --prefix compare

An arm is the job's `arm` override, else its `method` override (toy_compare sweeps methods), else gad; a job on
data=toy_two_teachers is the arm ", 2 teachers". `--compare` prints the methods' table with each arm's cost: the
job's wall time (config.yaml written -> summary.json written: training plus the toy evaluation before and after,
the same for every arm) and the tokens its training generated (GAD and KD: the rollouts' `train/generated_tokens`
summed over steps; SODA: its one-time snapshot, `train/snapshot_tokens`; SeqKD: none).

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
ARM_ORDER = ["gad", "seqkd", "soda", "kd", "off_policy", "no_g_warmup", "no_d_warmup", "bce"]
TWO_TEACHERS = ", 2 teachers"  # the suffix of an arm trained on data=toy_two_teachers


def arm_rank(arm: str) -> tuple[int, int]:
    """Sort key: one teacher before two, then ARM_ORDER."""
    base = arm.removesuffix(TWO_TEACHERS)
    return (arm != base, ARM_ORDER.index(base) if base in ARM_ORDER else 99)


ADVERSARIAL = Phase.ADVERSARIAL.code  # the logged train/phase of the adversarial phase


def load_jobs(*sweep_dirs: Path) -> pd.DataFrame:
    """One row per finished job of the sweeps: arm, seed, each result before and after training, and its cost."""
    rows = []
    jobs = [p for d in sweep_dirs for p in sorted(d.iterdir()) if p.is_dir() and p.name.isdigit()]
    for job in jobs:
        summary = job / "summary.json"
        if not summary.is_file():
            continue
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        arm = overrides.get("arm", overrides.get("method", "gad"))
        arm += TWO_TEACHERS if overrides.get("data") == "toy_two_teachers" else ""
        row = {"job": job, "arm": arm, "seed": int(overrides.get("seed", 1234))}
        config = job / "config.yaml"
        row["wall_s"] = summary.stat().st_mtime - config.stat().st_mtime if config.is_file() else float("nan")
        for name, values in json.loads(summary.read_text()).get("results", {}).items():
            row.update({f"{name} {when}": value for when, value in values.items()})
        row["metrics"] = pd.read_csv(job / "metrics.csv")  # read once; the curves come from it too
        # The student's NLL of held-out teacher responses after training (the sweep's optimised metric).
        row["val/nll after"] = row["metrics"]["val/nll"].dropna().iloc[-1]
        metrics = row["metrics"]
        generated = metrics["train/generated_tokens"].sum() if "train/generated_tokens" in metrics else 0.0
        snapshot = metrics["train/snapshot_tokens"].max() if "train/snapshot_tokens" in metrics else 0.0
        row["tokens"] = float(generated) + float(snapshot)
        rows.append(row)
    if not rows:
        where = ", ".join(str(d) for d in sweep_dirs)
        raise GADError(f"{where}: no finished jobs (no <job>/summary.json); is it a sweep folder?")
    return pd.DataFrame(rows)


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
    """Markdown: per arm, the steps its students trained, its mean job wall time and tokens generated."""
    lines = [
        "| arm | seeds | student steps | job wall time (s) | tokens generated in training |",
        "|---|---|---|---|---|",
    ]
    for arm in sorted(jobs.arm.unique(), key=arm_rank):
        group = jobs[jobs.arm == arm]
        steps = sorted({int(m["train/step"].max()) for m in group.metrics})
        lines.append(
            f"| {arm} | {len(group)} | {', '.join(map(str, steps))} | {group.wall_s.mean():.0f} "
            f"| {group.tokens.mean():,.0f} |"
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
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.38
    for k, split in enumerate(SPLITS):
        key = f"toy accuracy ({split}) after"
        means = [jobs[jobs.arm == a][key].mean() for a in arms]
        xs = [i + (k - 0.5) * width for i in range(len(arms))]
        ax.bar(xs, means, width, label=split.replace("_", " "))
        for x, arm in zip(xs, arms):
            ax.scatter([x] * len(jobs[jobs.arm == arm]), jobs[jobs.arm == arm][key], color="k", s=8, zorder=3)
    ax.set_xticks(range(len(arms)), [a.replace(TWO_TEACHERS, "\n2 teachers") for a in arms])
    ax.set_ylabel("toy accuracy (greedy)")
    ax.set_title("held-out toy accuracy after training (bars: mean over seeds; dots: seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cost(jobs: pd.DataFrame, path: Path) -> None:
    """Each arm's held-out accuracy (mean over seeds) against its job wall time and its generated tokens."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (cost, label) in zip(axes, [("wall_s", "job wall time (s)"), ("tokens", "tokens generated in training")]):
        for arm in sorted(jobs.arm.unique(), key=arm_rank):
            group = jobs[jobs.arm == arm]
            for split, marker in zip(SPLITS, "os"):
                y = group[f"toy accuracy ({split}) after"].mean()
                ax.scatter(
                    group[cost].mean(),
                    y,
                    marker=marker,
                    color=f"C{arm_rank(arm)[1]}",
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
    args = parser.parse_args()
    with exit_on_user_error():
        for folder in args.sweep_dirs:
            if not folder.is_dir():
                raise GADError(f"{folder}: no such sweep folder")
        jobs = load_jobs(*args.sweep_dirs)
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

"""The methods side by side on the toy world (docs/results.md, section 4): every sweep, then the tables and figures.

    python bench/toy_compare.py            # about 40 minutes on 2 CPU cores; prints the tables, figures in its folder
    python bench/toy_compare.py --write    # also docs/measured/toy_compare.md and docs/figures/compare_*.png

1. Equal steps, one teacher: `experiment=toy_compare` (GAD, SeqKD, SODA, KD; each method's toy sizes: 160
   student steps of 16 prompts).
2. Equal steps, two teachers: the same on `data=toy_two_teachers` for GAD, SeqKD and SODA (KD's teacher is one
   model with logits).
3. Equal wall time, one teacher: SeqKD, SODA and KD again, each with as many steps as fill GAD's mean training
   time in sweep 1 at the arm's own time per step, less SODA's one-time snapshot
   (`gad.analysis.evidence.equal_time_steps`). Each arm keeps its own recipe (learning rate, schedule) stretched
   to those steps.
4. `gad.analysis.evidence` on all of them: results per arm (mean ± std over seeds, in and out of distribution),
   then each arm's steps, training time, job wall time and tokens generated.

The sweeps run one after the other (each job uses every core), with their own cache folder (so SODA's snapshots
are drawn, and timed, here, and KD's toy teacher is fitted once for the comparison). Each sweep's output goes to
`<out>/<sweep>.log`. Timings move with whatever else the machine runs: the load average is printed before and
after each sweep. `--seeds 1 --set trainer.max_steps=4` runs the pipeline in a few minutes (its figures mean
nothing: a smoke test of the command).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

from measured import ROOT, add_write_option, load_average, record

sys.path.insert(0, str(ROOT / "src"))

from gad.analysis.evidence import (  # noqa: E402
    cost_table,
    equal_time_steps,
    load_jobs,
    plot_accuracy,
    plot_cost,
    results_table,
)

ONE_TEACHER = ["experiment=toy_compare"]  # its sweeper: method=gad,seqkd,soda,kd
TWO_TEACHERS = ["experiment=toy_compare", "data=toy_two_teachers", "method=gad,seqkd,soda"]


def sweep(out: Path, name: str, overrides: list[str], seeds: str, extra: list[str]) -> Path:
    """One `python src/train.py -m` sweep into <out>/<name>; its output into <out>/<name>.log."""
    folder = out / name
    cmd = [
        sys.executable,
        "src/train.py",
        "-m",
        *overrides,
        f"seed={seeds}",
        f"paths.cache_dir={out / 'cache'}",
        f"hydra.sweep.dir={folder}",
        *extra,
    ]
    shown = " ".join(["python", "src/train.py", "-m", *overrides, f"seed={seeds}", *extra])
    print(f"$ {shown}   (load average {load_average()})", flush=True)
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    jobs = sum(1 for job in folder.iterdir() if (job / "summary.json").is_file()) if folder.is_dir() else 0
    print(f"  {jobs} jobs in {time.perf_counter() - start:.0f} s (load average {load_average()})", flush=True)
    if code != 0:
        sys.exit(f"error: the sweep {name} exited with status {code}: see {out / f'{name}.log'}")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_write_option(parser, "toy_compare")
    parser.add_argument("--seeds", default="1,2,3", help="the seeds of every arm (default: 1,2,3)")
    parser.add_argument(
        "--out", type=Path, default=None, help="the sweeps' folder (default: outputs/toy_compare_all/<time>)"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides for every job")
    args = parser.parse_args()
    out = (args.out or ROOT / "outputs" / "toy_compare_all" / f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    figures = ROOT / "docs" / "figures" if args.write else out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    title = "The methods side by side on the toy world: equal steps, equal wall time, one and two teachers"
    with record(title, "toy_compare", write=args.write) as rec:
        one = sweep(out, "steps_one_teacher", ONE_TEACHER, args.seeds, args.set)
        two = sweep(out, "steps_two_teachers", TWO_TEACHERS, args.seeds, args.set)
        steps = equal_time_steps(load_jobs(one))
        print(f"equal wall time: GAD's mean training time in {one.name} fills {steps} steps")
        timed = [
            sweep(
                out,
                f"time_{arm}",
                ["experiment=toy_compare", f"method={arm}", f"method.steps={n}"],
                args.seeds,
                args.set,
            )
            for arm, n in steps.items()
        ]
        jobs = load_jobs(one, two, equal_time=tuple(timed))
        print()
        print(results_table(jobs))
        print()
        print(cost_table(jobs))
        plot_accuracy(jobs, figures / "compare_accuracy.png")
        plot_cost(jobs, figures / "compare_cost.png")
        shown = figures.relative_to(ROOT) if figures.is_relative_to(ROOT) else figures
        print(f"\nfigures: {shown}/compare_accuracy.png, {shown}/compare_cost.png")
        rec.fact(
            "sweeps",
            f"{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} (a folder per sweep, its log beside it)",
        )


if __name__ == "__main__":
    main()

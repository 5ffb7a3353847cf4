"""This project's adversarial GAD step and TRL's GRPOTrainer, side by side, in one process.

    pip install -e ".[bench]"                  # TRL is an optional extra, used only here
    python bench/bench_trl.py                  # the default toy size, CPU
    python bench/bench_trl.py --rounds 1 trainer=gpu model=qwen2.5-0.5b ...   # any overrides

Both sides get the same student (architecture, initial weights, tokenizer and chat template), the
same prompt set (each side draws its own batches), prompts per step, group size, length budget, temperature, KL coefficient, learning
rate, gradient clipping and one update per rollout. On the TRL side a frozen sequence classifier of
the discriminator's size (the student's trunk plus a one-logit head, `num_labels=1`) stands in for
GAD's discriminator as the reward model. GAD's step does more work: it also trains that discriminator
(forward and backward on teacher and student responses, and an optimizer step). A third row times
this project's step with the discriminator frozen (`method.off_policy=true`, the off-policy
ablation's adversarial phase): TRL's work, plus D scoring the teacher's responses (no gradient).

The implementations differ where this project is built to be faster: D, G and the reference run each
prompt once per group of samples (`method.share_prompt`, exact to float rounding), where TRL runs every
row's prompt. `python bench/bench_trl.py method.share_prompt=false` times this project row by row too.

Both sides train at a negligible learning rate (`--lr`, 1e-9 by default): every forward, backward
and optimizer step still runs, but the policies stay at their shared initialisation, so both sample
responses of the same length distribution. (At the toy rates the two policies drift apart within a
few steps, and a side whose samples got shorter would look faster for it.)

Prints seconds per step and generated tokens per second for each (medians over steps), and the ratios
to TRL. The sides take turns over `--rounds` rounds, in a rotated order, so that a slow spell of a
shared machine falls on all of them; each round's ratio is printed too, to show the spread.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from bench_step import time_adversarial_steps
from hydra.utils import instantiate
from measured import add_write_option, record
from rich.console import Console
from rich.table import Table

from gad.data.records import read_records


def trl_grpo_steps(cfg, steps: int, skip: int) -> list[dict[str, float]]:
    """Runs `skip` + `steps` GRPOTrainer steps sized like cfg's GAD step; returns per-step timings."""
    try:
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as err:
        raise SystemExit(f'error: TRL is not installed ({err}); run: pip install -e ".[bench]"') from None

    torch.manual_seed(cfg.seed)
    tokenizer = instantiate(cfg.model.tokenizer)
    student = instantiate(cfg.model.student)
    reward_config = copy.deepcopy(student.config)
    reward_config.num_labels = 1
    reward_config.pad_token_id = tokenizer.pad_token_id
    reward_model = AutoModelForSequenceClassification.from_config(reward_config).eval().requires_grad_(False)

    # TRL builds its reference model from the policy's path, so the student goes through a folder.
    student_dir = tempfile.mkdtemp(prefix="trl-bench-student-")
    student.save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)

    records, _ = read_records(cfg.data.path)
    prompts = Dataset.from_list([{"prompt": r["messages"]} for r in records])

    m, on_cpu = cfg.method, cfg.trainer.accelerator == "cpu"
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        per_device_train_batch_size=cfg.data.batch_size * m.num_samples,  # completions per step, as GAD's
        gradient_accumulation_steps=1,
        num_generations=m.num_samples,
        max_completion_length=m.max_new_tokens,
        temperature=m.temperature,
        top_p=m.top_p,
        top_k=0,
        repetition_penalty=1.0,
        beta=m.kl_coef,  # a reference model and its forward, as GAD's KL term
        num_iterations=1,  # one update per rollout, as GAD
        learning_rate=m.generator_optimizer.lr,
        max_grad_norm=m.generator_grad_clip,
        lr_scheduler_type="constant",
        max_steps=steps + skip,
        gradient_checkpointing=bool(cfg.model.student.gradient_checkpointing),
        bf16=not on_cpu and "bf16" in str(cfg.trainer.precision),
        use_cpu=on_cpu,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=cfg.seed,
        model_init_kwargs={"dtype": torch.float32},
    )

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.rows: list[dict[str, float]] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.rows.append({"total": time.perf_counter() - self.start})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs and self.rows:
                completions = cfg.data.batch_size * m.num_samples
                self.rows[-1]["tokens"] = logs["completions/mean_length"] * completions

    timer = StepTimer()
    trainer = GRPOTrainer(
        model=student_dir,
        reward_funcs=reward_model,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        reward_processing_classes=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    return timer.rows[skip:]


def summarise(rows: list[dict[str, float]]) -> tuple[float, float]:
    """(seconds per step, generated tokens per second): medians over the timed steps, so that a
    step slowed by something else on the machine does not move the figure."""
    return statistics.median(r["total"] for r in rows), statistics.median(r["tokens"] / r["total"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps on each side, per round")
    parser.add_argument("--skip", type=int, default=3, help="untimed steps first on each side (warm-up), per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs the three sides, in a rotated order")
    parser.add_argument("--lr", type=float, default=1e-9, help="learning rate of every trained network, both sides")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for src/train.py")
    add_write_option(parser, "trl")
    args = parser.parse_args()
    with record("This project's GAD step and TRL's GRPOTrainer, side by side", "trl", write=args.write) as rec:
        device = compare(args)
        rec.fact("device used", device)
        rec.fact("trl", _trl_version())


def _trl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl")
    except PackageNotFoundError:
        return "not installed"


def compare(args) -> str:
    """Runs the rounds and prints the table; returns the device this project's module ran on."""
    overrides = [
        f"method.generator_optimizer.lr={args.lr}",
        f"method.discriminator_optimizer.lr={args.lr}",
        *args.overrides,
    ]
    built = {}

    def gad(*extra: str) -> list[dict[str, float]]:
        built["cfg"], built["module"], timed = time_adversarial_steps([*overrides, *extra], args.steps, args.skip)
        return timed

    sides = {  # round 0 runs "gad" first: TRL's side is sized from its config
        "gad": gad,
        "frozen": lambda: gad("method.off_policy=true"),
        "trl": lambda: trl_grpo_steps(built["cfg"], args.steps, args.skip),
    }
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    round_ratios = []
    for r in range(args.rounds):
        # The machine's speed drifts (other tenants); rotating the order spreads that over the sides.
        names = list(sides)[r % 3 :] + list(sides)[: r % 3]
        this_round = {name: sides[name]() for name in names}
        for name, timed in this_round.items():
            rows[name] += timed
        round_ratios.append(summarise(this_round["gad"])[0] / summarise(this_round["trl"])[0])
    (gad_step, gad_tps), (frozen_step, frozen_tps), (trl_step, trl_tps) = (summarise(rows[n]) for n in sides)

    cfg, module = built["cfg"], built["module"]
    m = cfg.method
    table = Table(
        title=f"median of {args.rounds} rounds x {args.steps} steps (after {args.skip} untimed each): "
        f"{cfg.data.batch_size} prompts x {m.num_samples} samples, <= {m.max_new_tokens} new tokens, "
        f"T={m.temperature}, lr {args.lr:g}, device {module.device}, torch threads {torch.get_num_threads()}"
    )
    for column in ("", "s / step", "generated tokens / s"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("this project: GAD adversarial step (trains G and D)", f"{gad_step:.3f}", f"{gad_tps:.0f}")
    table.add_row("this project: D frozen (trains G; off_policy=true)", f"{frozen_step:.3f}", f"{frozen_tps:.0f}")
    table.add_row("TRL GRPOTrainer step (trains G; frozen reward model)", f"{trl_step:.3f}", f"{trl_tps:.0f}")
    table.add_row("ratio, GAD step / TRL", f"{gad_step / trl_step:.2f}", f"{gad_tps / trl_tps:.2f}")
    table.add_row(
        "ratio, D frozen / TRL (the same work)", f"{frozen_step / trl_step:.2f}", f"{frozen_tps / trl_tps:.2f}"
    )
    console = Console()
    console.print(table)
    console.print("GAD step / TRL, each round's medians: " + ", ".join(f"{x:.2f}" for x in round_ratios))
    return str(module.device)


if __name__ == "__main__":
    main()

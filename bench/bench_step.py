"""Where an adversarial GAD step spends its time, at the default (toy) size or any config.

    python bench/bench_step.py                       # the default toy experiment, CPU
    python bench/bench_step.py --steps 20 trainer=gpu model=qwen2.5-0.5b ...   # any overrides

Runs real training steps through Lightning (adversarial phase only: warm-up skipped) with
`method.profile=true`, and prints the mean time per step of each section: rollout, D
forward+backward+step, G forward+backward+step, reference forward, and everything else
(the step's wall time minus those; Lightning, logging, advantages, bookkeeping).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import lightning as L  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from measured import add_write_option, record  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from gad.config.validate import validate  # noqa: E402
from gad.fit import build_module  # noqa: E402

SECTIONS = {
    "rollout": "rollout (generate)",
    "d_step": "D forward+backward+step",
    "g_step": "G forward+backward+step",
    "ref_forward": "reference forward",
}


class StepTimer(L.Callback):
    def __init__(self, skip: int):
        self.skip, self.rows = skip, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        total = time.perf_counter() - self.start
        if batch_idx >= self.skip:
            samples = batch["prompt_ids"].size(0) * pl_module.num_samples
            self.rows.append({"total": total, "tokens": outputs["train/response_len"] * samples, **pl_module.timings})


def time_adversarial_steps(overrides: list[str], steps: int, skip: int):
    """Runs `skip` + `steps` adversarial GAD steps through Lightning; returns (cfg, module, per-step timings)."""
    out = tempfile.mkdtemp(prefix="gad-bench-")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={out}",
                "method.profile=true",
                "method.warmup_steps=0",
                "method.d_only_steps=0",
                f"method.adversarial_steps={steps + skip}",
                *overrides,
            ],
        )
    validate(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    tokenizer = instantiate(cfg.model.tokenizer)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, cache_dir=None)
    module = build_module(cfg, tokenizer)
    timer = StepTimer(skip)
    trainer = instantiate(
        cfg.trainer,
        callbacks=[timer],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=10**9,
    )
    trainer.fit(module, datamodule=datamodule)
    return cfg, module, timer.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed adversarial steps")
    parser.add_argument("--skip", type=int, default=3, help="untimed steps first (allocator and cache warm-up)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for src/train.py")
    add_write_option(parser, "step")
    args = parser.parse_args()
    with record("Where an adversarial GAD step spends its time", "step", write=args.write) as rec:
        rec.fact("device used", report(args))


def report(args) -> str:
    """Times the steps and prints the table; returns the device the module ran on."""
    cfg, module, rows = time_adversarial_steps(args.overrides, args.steps, args.skip)

    mean = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in ["total", *SECTIONS]}
    mean["other"] = mean["total"] - sum(mean[k] for k in SECTIONS)
    m = cfg.method
    table = Table(
        title=f"adversarial step, mean of {len(rows)} steps: {cfg.data.batch_size} prompts x "
        f"{m.num_samples} samples, <= {m.max_new_tokens} new tokens, device {module.device}"
    )
    table.add_column("section")
    table.add_column("ms / step", justify="right")
    table.add_column("share", justify="right")
    for key, label in [*SECTIONS.items(), ("other", "everything else"), ("total", "step")]:
        table.add_row(label, f"{1000 * mean[key]:.1f}", f"{100 * mean[key] / mean['total']:.1f}%")
    Console().print(table)
    tokens = sum(r["tokens"] for r in rows)
    Console().print(
        f"rollout throughput: {tokens / sum(r['rollout'] for r in rows):.0f} generated tokens/s; "
        f"whole step: {tokens / sum(r['total'] for r in rows):.0f} generated tokens/s"
    )
    return str(module.device)


if __name__ == "__main__":
    main()

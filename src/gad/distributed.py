"""Multi-process training of two networks, and Hydra sweeps that launch it.

Lightning's `DDPStrategy` wraps the whole LightningModule in one DistributedDataParallel,
which fails at GAD's first backward: the discriminator's loss leaves the generator's
parameters without gradients, and vice versa. `TwoNetworkDDPStrategy` wraps each trained
network in its own DDP instead (`DistillModule.networks`), so each backward synchronises
exactly the network it trains, with no unused-parameter search. The LightningModule itself
stays unwrapped: checkpoints keep their keys and `generate` runs on the plain student.

Sweeps: Lightning starts ranks > 0 by re-running the command line. Under `-m` that command
is the whole sweep, so rank 1 used to re-launch every job into a second sweep folder.
`job_subprocess_cmd` gives each rank exactly its job's overrides, in RUN mode, in the
job's own folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import subprocess_script
from torch.nn.parallel import DistributedDataParallel

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


class TwoNetworkDDPStrategy(DDPStrategy):
    """DDP with the generator and the discriminator each in their own DistributedDataParallel."""

    def _configure_launcher(self) -> None:
        subprocess_script._hydra_subprocess_cmd = job_subprocess_cmd
        super()._configure_launcher()

    def setup_environment(self) -> None:
        # CPU ranks each default to one thread per core; oversubscribed, they spin against each
        # other and a step gets several times slower. Give each rank its share of the cores.
        if self.root_device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.num_processes))
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


def finish_distributed() -> None:
    """Close the process group and forget the launch variables, so that the next job of a
    sweep starts its own ranks (and the process does not abort on exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in LAUNCH_ENV:
        os.environ.pop(key, None)

"""What every distillation method shares: the student, its optimizer, the step counter,
teacher-forced log-probs, the validation metric, checkpoint state and the export.

Training is counted in method steps (one batch of prompts each), not in Lightning's
`global_step`, which counts optimizer steps and so advances twice per GAD step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics.aggregation import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gad.checkpoint_io import save_pretrained_atomic
from gad.config.method import MethodConfig
from gad.config.model import LoraConfig
from gad.distributed import full_state_dict, full_tensor, is_sharded, shard
from gad.losses import masked_sum, token_logprobs
from gad.methods.optim import NetworkOptim, partial_of
from gad.models import apply_lora, has_lora, plain_from_state
from gad.packing import packed_response_logits, plan_packs
from gad.prompt_sharing import forward_after_prompt
from gad.rollout import HFSampler, Rollout, Sampler, generation_config, rollout_from_rows
from gad.step_record import Phase, Scores, StepRecord


def micro_batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def packed_micro_batches(lengths: torch.Tensor, max_tokens: int, group: int = 1) -> list[torch.Tensor]:
    """Row indices of each padding-free micro-batch (gad.packing): whole groups of `group` consecutive
    rows, at most `max_tokens` real tokens per micro-batch (a larger group alone). `lengths` [rows]."""
    sizes = lengths.view(-1, group).sum(1).tolist()
    rows = torch.arange(lengths.numel(), device=lengths.device).view(-1, group)
    return [rows[pack].flatten() for pack in plan_packs(sizes, max_tokens)]


class DistillModule(L.LightningModule):
    """Base class: subclasses register their networks in `self.networks` and write `training_step`,
    which ends in `end_step`."""

    share_prompt = False  # run each prompt's forward once per group of samples (gad.prompt_sharing)
    rollout_segment_tokens: int | None = None  # decode in segments, dropping ended rows (gad.rollout)
    last_step: StepRecord | None = None  # the step just completed, for callbacks (set by end_step)
    sampler: Sampler | None = None  # draws on-policy rollouts (gad.rollout.Sampler); set by `use_hf_sampler` or yours

    Config: type[MethodConfig] = MethodConfig  # the method's config dataclass (gad.config.registry reads it)

    def __init__(
        self,
        config: MethodConfig,
        student: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        lora: LoraConfig | None = None,
    ):
        """`config`: the method's validated config (gad.fit.build_module types the composed `method` node);
        `lora`: the validated `model.lora` (None: all off, as in runs saved before it existed)."""
        super().__init__()
        self.automatic_optimization = False
        self.config = config
        # With model.lora.generator on, G trains adapters only
        self.lora = lora if lora is not None else LoraConfig()
        student = apply_lora(student, self.lora, "generator")
        self.generator = student
        self.tokenizer = tokenizer
        self.micro_batch_size = config.micro_batch_size
        # Set: training forwards are padding-free, packed to this many real tokens (gad.packing);
        # micro_batch_size is then unused by them. None: micro_batch_size rows at the batch's width.
        self.max_tokens_per_micro_batch = config.max_tokens_per_micro_batch
        self.seed = config.seed
        self.profile = config.profile
        self.networks: dict[str, NetworkOptim] = {
            "generator": NetworkOptim(
                student,
                partial_of(config.generator_optimizer),
                partial_of(config.generator_scheduler),
                config.generator_grad_clip,
            )
        }
        # Set by gad.distributed.TwoNetworkDDPStrategy: name -> that network in its own DDP wrapper.
        self.wrapped: dict[str, torch.nn.Module] = {}
        self.synced: set[str] = set()  # networks whose gradients went through their wrapper's all-reduce this step
        self.completed_steps = 0
        self.reshard_after_forward = True  # under FSDP: the strategy's setting (configure_model)
        self.timings: dict[str, float] = {}
        self.val_nll = MeanMetric()
        eos = student.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = sorted({*eos, tokenizer.eos_token_id})

    # ------------------------------------------------------------ schedule

    @property
    def total_steps(self) -> int:
        raise NotImplementedError

    def schedule(self) -> tuple[Phase | None, bool, bool]:
        """(phase, train D?, train G?) for the next step, method step `completed_steps` + 1. Methods
        without phases (SeqKD, KD) train the student alone at every step."""
        return None, False, True

    def phase_name(self) -> str:
        """What the progress line calls the phase of the next step: "training" for a method without phases,
        else its phase's `label` (a method's own phases: any objects with a `label` and a `code`)."""
        phase = self.schedule()[0]
        return "training" if phase is None else str(getattr(phase, "label", phase))

    def end_step(
        self,
        metrics: dict[str, Any],
        batch: dict[str, Any],
        phase: Phase | None = None,
        rollout: Rollout | None = None,
        scores: Scores | None = None,
    ) -> dict[str, float]:
        """Count the step, log its metrics, leave its `StepRecord` in `self.last_step` for the callbacks,
        and stop the trainer after the last step. Returns the logged metrics (Lightning's `outputs`)."""
        self.completed_steps += 1
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["train/step"] = float(self.completed_steps)
        if self.profile:
            metrics.update({f"time/{k}": v for k, v in self.timings.items()})
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=self.trainer.world_size > 1)
        self.last_step = StepRecord(self.completed_steps, phase, metrics, batch, rollout, scores)
        if self.completed_steps >= self.total_steps:
            self.trainer.should_stop = True
        return metrics

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Accumulate wall time per section of the step (synchronising CUDA only when profiling)."""
        sync = self.profile and self.device.type == "cuda"
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if sync:
            torch.cuda.synchronize()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.timings = {}
        self.synced.clear()

    def use_hf_sampler(self) -> None:
        """The default HFSampler: call it once rollout_batch_size, share_prompt and rollout_segment_tokens are set."""
        self.sampler = HFSampler(
            eos_ids=self.eos_ids, pad_id=self.tokenizer.pad_token_id, micro_batch_size=self.rollout_batch_size,
            share_prompt=self.share_prompt, segment_tokens=self.rollout_segment_tokens,
        )  # fmt: skip

    def use_configured_sampler(self, *, max_new_tokens: int, temperature: float, top_p: float) -> None:
        """`self.sampling` (the rollout's law) and the sampler `method.rollout.engine` names (HF or vLLM)."""
        eos_pad = {"eos_ids": self.eos_ids, "pad_id": self.tokenizer.pad_token_id}
        self.sampling = generation_config(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, **eos_pad
        )
        if self.config.rollout.engine != "vllm":
            return self.use_hf_sampler()
        from gad.vllm_rollout import VLLMSampler, engine_options  # vLLM itself is imported at the first rollout

        self.sampler = VLLMSampler(engine_options(self.config.rollout), eos_ids=self.eos_ids, seed=self.seed)

    def teardown(self, stage: str) -> None:
        """A sampler that holds resources (with `close`: the vLLM engine) releases them at the end of fit."""
        if hasattr(self.sampler, "close"):
            self.sampler.close()

    def rollout_seed(self) -> int:
        """Sampling is a pure function of (seed, step, rank): exact on resume, distinct per rank."""
        return (self.seed * 1_000_003 + self.completed_steps) * 4096 + self.global_rank

    def rollout(self, batch: dict[str, Any]) -> Rollout:
        """`self.num_samples` responses per prompt from the current student, drawn by `self.sampler`
        (gad.rollout.Sampler) at `self.sampling`'s temperature, top-p and length, seeded by `rollout_seed`.
        On-policy methods set all three (and `num_samples`)."""
        with self.timed("rollout"):
            self.sampler.sync_weights(self)
            prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"])]
            rows = self.sampler.sample(
                prompts,
                num_samples=self.num_samples,
                temperature=self.sampling.temperature,
                top_p=self.sampling.top_p,
                max_new_tokens=self.sampling.max_new_tokens,
                seed=self.rollout_seed(),
            )
            return rollout_from_rows(
                batch["prompt_ids"],
                batch["prompt_mask"],
                rows,
                self.num_samples,
                self.tokenizer.pad_token_id,
                self.eos_ids,
            )

    # ------------------------------------------------------------ sharding (trainer=fsdp)

    def frozen_networks(self) -> list[torch.nn.Module]:
        """Networks that are run but never trained (e.g. GAD's KL reference); sharded too under FSDP."""
        return []

    def train(self, mode: bool = True):
        """Lightning puts the whole module in train mode; frozen networks stay in eval mode (no
        dropout in the reference's log-probs, and no checkpointing: it can share prompts)."""
        super().train(mode)
        for network in self.frozen_networks():
            network.eval()
        return self

    @property
    def sharded(self) -> bool:
        return is_sharded(self.generator)

    def configure_model(self) -> None:
        """Under `gad.distributed.TwoNetworkFSDPStrategy`, shard every network with FSDP2."""
        if self.device_mesh is None or self.sharded:  # not FSDP, or already sharded (validate after fit)
            return
        self.reshard_after_forward = getattr(self.trainer.strategy, "reshard_after_forward", True)
        for module in [*(net.module for net in self.networks.values()), *self.frozen_networks()]:
            shard(module, self.device_mesh["data_parallel"], reshard_after_forward=self.reshard_after_forward)

    # ------------------------------------------------------------ optimisation

    @contextlib.contextmanager
    def network(self, name: str, sync: bool = True) -> Iterator[torch.nn.Module]:
        """The network to run a training forward and backward through.

        Under DDP this is its wrapper; with `sync=False` gradients only accumulate locally
        (`no_sync`), so a step's micro-batches all-reduce once, at their last backward.
        Under FSDP it is the sharded network itself, which reduce-scatters at every
        micro-batch: skipping that would keep a full, unsharded gradient on every rank.
        """
        wrapper = self.wrapped.get(name)
        if wrapper is None:
            yield self.networks[name].module
        elif sync:
            self.synced.add(name)  # step_optimizer checks this step all-reduced through the wrapper
            yield wrapper
        else:
            with wrapper.no_sync():
                yield wrapper

    def configure_optimizers(self):
        built = [net.build() for net in self.networks.values()]
        return [opt for opt, _ in built], [sched for _, sched in built]

    def step_optimizer(self, name: str) -> torch.Tensor:
        """Clip, step and zero one network's optimizer, step its schedule; returns the grad norm."""
        if name in self.wrapped and name not in self.synced:
            # A training forward on the bare network (e.g. self.generator) skips DDP's all-reduce:
            # each rank would step on its own gradients and the replicas drift apart silently.
            raise RuntimeError(
                f"step_optimizer('{name}'): no backward of this step went through "
                f"self.network('{name}') with sync, so its gradients were never all-reduced across ranks"
            )
        self.synced.discard(name)
        index = list(self.networks).index(name)
        net = self.networks[name]
        optimizers, schedulers = self.optimizers(), self.lr_schedulers()
        opt = optimizers[index] if isinstance(optimizers, list) else optimizers
        sched = schedulers[index] if isinstance(schedulers, list) else schedulers
        params = [p for p in net.module.parameters() if p.grad is not None]
        max_norm = net.grad_clip if net.grad_clip else float("inf")
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return grad_norm

    # ------------------------------------------------------------ the student on teacher text

    @property
    def packed(self) -> bool:
        return self.max_tokens_per_micro_batch is not None

    def row_chunks(self, prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> list[slice | torch.Tensor]:
        """The micro-batches of a step's forwards over these rows: packed by the token budget, or
        `micro_batch_size` rows each. Either indexes the rows (`x[chunk]`)."""
        if not self.packed:
            return list(micro_batches(response_mask.size(0), self.micro_batch_size))
        lengths = prompt_mask.sum(1) + response_mask.sum(1)
        return packed_micro_batches(lengths, self.max_tokens_per_micro_batch)

    def response_logprobs(
        self,
        model: PreTrainedModel,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float = 1.0,
        with_logits: bool = False,
        group_size: int = 1,
    ):
        """log q(response token | prefix) [rows, R] for rows `[pad.. prompt | response ..pad]`
        (0 past each response's end), and with `with_logits` the logits at the real response
        tokens, flat: [response_mask.sum(), V].

        Only the response positions go through the LM head (`logits_to_keep`), since the
        prompt's own predictions are never used. `group_size` > 1: consecutive rows share
        their prompt, which then runs once per group (gad.prompt_sharing). With
        `max_tokens_per_micro_batch` set the rows run packed, without padding (gad.packing).
        """
        real = response_mask.bool()
        if self.packed:
            logits = packed_response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
            picked = token_logprobs(logits, response_ids[real], temperature)
            logp = picked.new_zeros(real.shape).masked_scatter(real, picked)
            return (logp, logits) if with_logits else logp
        logits = forward_after_prompt(
            model,
            prompt_ids,
            prompt_mask,
            response_ids,
            response_mask,
            group_size=group_size,
            logits_to_keep=response_ids.size(1) + 1,
        )[:, :-1]
        logp = token_logprobs(logits, response_ids, temperature) * real
        return (logp, logits[real]) if with_logits else logp

    def sft_backward(self, batch: dict[str, Any], weight: float = 1.0) -> torch.Tensor:
        """Backpropagate `weight` x token-mean cross-entropy on the teacher responses; returns the CE."""
        prompts, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        targets, mask = batch["response_ids"], batch["response_mask"]
        total = mask.sum().clamp(min=1)
        ce = torch.zeros((), device=self.device)
        chunks = self.row_chunks(prompt_mask, mask)
        for i, sl in enumerate(chunks):
            with self.network("generator", sync=i == len(chunks) - 1) as generator:
                logp = self.response_logprobs(generator, prompts[sl], prompt_mask[sl], targets[sl], mask[sl])
                loss = -masked_sum(logp, mask[sl]) / total
                self.manual_backward(weight * loss)
            ce += loss.detach()
        return ce

    def sft_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with self.timed("g_step"):
            ce = self.sft_backward(batch)
            grad_norm = self.step_optimizer("generator")
        return {"train/sft_loss": ce, "train/grad_norm_g": grad_norm}

    # ------------------------------------------------------------ validation: needs no API

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        mask = batch["response_mask"]
        nll = torch.zeros((), device=self.device)
        for sl in self.row_chunks(batch["prompt_mask"], mask) if self.packed else [slice(None)]:
            logp = self.response_logprobs(
                self.generator, batch["prompt_ids"][sl], batch["prompt_mask"][sl], batch["response_ids"][sl], mask[sl]
            )
            nll -= masked_sum(logp, mask[sl])
        tokens = mask.sum()
        self.val_nll.update(nll / tokens.clamp(min=1), weight=tokens)

    def on_validation_epoch_end(self) -> None:
        self.log("val/nll", self.val_nll, prog_bar=True)  # a torchmetrics object: reduced across ranks

    # ------------------------------------------------------------ checkpoint state and export

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["distill_state"] = self.extra_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.load_extra_state(checkpoint.get("distill_state", {}))

    def extra_state(self) -> dict[str, Any]:
        return {"completed_steps": self.completed_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.completed_steps = int(state.get("completed_steps", 0))

    def export_student(self, directory: str | Path, resume: Path | None = None) -> Path:
        """The student as a Hugging Face folder (`AutoModelForCausalLM.from_pretrained` loads it), moved into place
        whole. Call it on every rank: under FSDP the weights are gathered (a collective); rank 0 writes.
        With LoRA on the generator (`model.lora.generator`) the adapters are merged into the copy.
        `resume`: the checkpoint a full disk's error line says to resume from (gad.errors.writing).
        """
        directory = Path(directory)
        state = full_state_dict(self.generator)
        if self.global_rank == 0:
            model = self.generator
            if self.sharded or has_lora(model):
                # A plain model of the same class (so the saved config names that class), from a CPU
                # copy of the weights; LoRA adapters merged in, so the folder is never adapter-only.
                if not self.sharded:  # `state` holds the live weights: copy them
                    state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
                model = plain_from_state(model, state)
            save_pretrained_atomic(directory, model, self.tokenizer, resume=resume)
        return directory

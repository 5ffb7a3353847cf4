"""The vLLM engine's start (gad.vllm_rollout): its options, the per-row sampling parameters and seeds, and the
environment, logging and native output around vLLM's import and start-up, kept out of the trainer's output.

Only one training process is supported so far (`check_world_size`): colocating one engine per rank needs vLLM's
`external_launcher` executor sharing the trainer's process group (as TRL does), which has not been built or run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gad.errors import GADError

# Per-request seeds live in [0, 2**63): vLLM seeds a torch.Generator with them.
SEED_MODULUS = 2**63 - 1


@dataclass
class EngineOptions:
    """`method.rollout`'s engine knobs (conf/method/gad.yaml documents them)."""

    kv_cache_gb: float = 1.0  # CPU: VLLM_CPU_KVCACHE_SPACE; GPU: unused (gpu_memory_utilization)
    gpu_memory_utilization: float = 0.3
    tensor_parallel_size: int = 1
    max_model_len: int | None = None  # None: the student's max_position_embeddings
    enforce_eager: bool = True
    sleep: bool = False  # GPU: free the engine's weights and KV cache while training runs (vLLM sleep mode)


def row_seeds(rollout_seed: int, rows: int) -> list[int]:
    """One seed per request (a row of the rollout, prompt-major), a function of (seed, step, rank, row):
    `rollout_seed` (DistillModule.rollout_seed) already is one of (seed, step, rank)."""
    return [(rollout_seed * 1_000_003 + row) % SEED_MODULUS for row in range(rows)]


def sampling_params(*, temperature: float, top_p: float, max_new_tokens: int, eos_ids: list[int], seed: int):
    """vLLM's SamplingParams for one row: softmax(logits / T), top_p as asked, every other warper neutral."""
    from vllm import SamplingParams

    return SamplingParams(
        n=1,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        min_p=0.0,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        min_tokens=0,
        max_tokens=max_new_tokens,
        stop_token_ids=list(eos_ids),  # exactly these end a response, as in gad.rollout:
        ignore_eos=True,  # not also the eos vLLM reads from the model's config
        seed=seed,
        logprobs=0,  # the sampled token's log-prob only
        detokenize=False,
        skip_special_tokens=False,
    )


def check_world_size(world_size: int) -> None:
    if world_size > 1:
        raise GADError(
            "method.rollout.engine=vllm: one training process only so far (this run has "
            f"{world_size}); use method.rollout.engine=hf with several ranks"
        )


@contextlib.contextmanager
def _engine_environment(kv_cache_gb: float) -> Iterator[None]:
    """Environment vLLM reads while it starts, its logging, and torch's thread count kept as the trainer set it.

    In-process vLLM on CPU sets torch to one thread unless OMP_NUM_THREADS is set, and replaces
    `torch.set_num_threads` with a warning no-op for the whole process: both are undone here."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: tensors by reference
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc with a function
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = (
        f"{kv_cache_gb:g}"  # GiB (method.rollout.kv_cache_gb); unset, vLLM claims most of the RAM
    )
    # vLLM logs its configuration, memory and CPU tuning hints at INFO/WARNING on every start; its
    # loggers only get their handler and level once an engine starts, so the level is set here first.
    level = os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR").upper()
    logging.getLogger("vllm").setLevel(level)
    threads = torch.get_num_threads()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    set_num_threads = torch.set_num_threads
    try:
        with warnings.catch_warnings():
            # vLLM's own import walks torch.distributed's attributes and touches a deprecated one
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.triton_utils\.dispatcher")
            # and it defines TorchScript methods, which torch 2.13 deprecates, at import
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.script_method` is deprecated", category=DeprecationWarning
            )
            yield
    finally:
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _native_output_held(verbose: bool) -> Iterator[None]:
    """What native code writes to the process's stdout/stderr while the engine starts (e.g. a C++
    NUMA-binding notice from vLLM's CPU worker), held back: replayed on stderr only if the start fails."""
    if verbose:
        yield
        return
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 1)
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def start(folder: str, *, dtype, seed: int, max_model_len: int, options: EngineOptions, verbose: bool):
    """vLLM's `LLM` on the architecture in `folder` (placeholder weights), and the extra arguments it got."""
    with _engine_environment(options.kv_cache_gb):
        try:
            from vllm import LLM
        except ImportError:
            raise GADError(
                "method.rollout.engine=vllm needs vLLM, which is not installed: "
                'pip install -e ".[vllm]" on GPU; on CPU the environment .ci/vllm-env builds (README)'
            ) from None
        kwargs = dict(enable_sleep_mode=True) if options.sleep and torch.cuda.is_available() else {}
        with _native_output_held(verbose):
            llm = LLM(
                model=folder,
                skip_tokenizer_init=True,
                load_format="dummy",
                dtype=str(dtype).removeprefix("torch."),
                seed=seed,
                max_model_len=max_model_len,
                enforce_eager=options.enforce_eager,
                tensor_parallel_size=options.tensor_parallel_size,
                gpu_memory_utilization=options.gpu_memory_utilization,
                generation_config="vllm",  # never the model's own sampling defaults
                logprobs_mode="processed_logprobs",  # log-softmax(logits / T) of the sampled token
                enable_prefix_caching=True,  # a prompt's N samples share its prefill
                **kwargs,
            )
    return llm, kwargs

"""The student's weights into a colocated vLLM engine (gad.vllm_rollout.VLLMRollout.push_weights).

On vLLM's CPU build the `model.load_weights` path TRL and OpenRLHF use fails (linear weights are repacked into
oneDNN handles); `reload_weights(weights_iterator=...)` works, but leaves a tied output layer with its packed copy
of the OLD embedding (greedy tokens do not show it, log-probs do), so the output layer's packing is redone after
each push (`_output_layer_repack`). LoRA adapters are merged into the pushed tensors (the student is not touched).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def _output_layer_repack(worker) -> None:
    """Redo the output layer's weight packing (CPU: oneDNN) from its current weight: after a push, a
    tied output layer's packed copy still holds the old embedding."""
    model = worker.model_runner.model
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)


def reload(worker, weights) -> None:
    worker.reload_weights(weights_iterator=weights)
    _output_layer_repack(worker)


def student_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) for each weight of the plain student that `model` is, one at a time.

    LoRA (a peft wrapper): each adapted layer's weight is base + delta, computed into a new tensor (the
    student's weights are not touched, unlike merge/unmerge, which would round them a little each step).
    FSDP: each tensor is gathered (a collective) just before it is yielded, so the whole model is never
    held at once. A tied output layer is not yielded: the engine ties it to the embedding itself.
    """
    from gad.distributed import full_tensor
    from gad.models import has_lora

    lora = has_lora(model)
    base = model.get_base_model() if lora else model
    tied = getattr(base.config, "tie_word_embeddings", False)
    deltas: dict[str, nn.Module] = {}
    if lora:
        for name, module in base.named_modules():
            if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                deltas[f"{name}.base_layer.weight"] = module
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        if tied and name == "lm_head.weight":
            continue
        with torch.no_grad():
            tensor = full_tensor(param.detach())
            layer = deltas.get(name)
            if layer is not None:
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        tensor = tensor + full_tensor(layer.get_delta_weight(adapter)).to(tensor.dtype)
        yield name.replace(".base_layer.", "."), tensor

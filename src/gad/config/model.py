"""`model.lora`: the typed definition of the LoRA switches (applied by gad.models.apply_lora).

Each knob's default and meaning: conf/model/tiny.yaml (`lora:`), which every model preset starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gad.config.typed import require


@dataclass
class LoraConfig:
    """Which networks train LoRA adapters instead of their full weights, and the adapters' shape.
    The defaults (all off) are what a run saved before `model.lora` existed gets."""

    generator: bool = False
    discriminator: bool = False
    r: int = 16
    alpha: float = 32
    dropout: float = 0.0
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names

    def __post_init__(self) -> None:
        require(self.r >= 1, "r", self.r, "must be an integer >= 1")
        require(self.alpha > 0, "alpha", self.alpha, "must be a finite number > 0")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        require(
            isinstance(self.target_modules, str)
            or isinstance(self.target_modules, list)
            and all(isinstance(m, str) for m in self.target_modules),
            "target_modules",
            self.target_modules,
            "must be all-linear or a list of module names",
        )

    def adapter_shape(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "target_modules": self.target_modules}

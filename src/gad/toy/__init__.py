"""The embedded toy world: rule-checkable tasks, a rule-based teacher, a byte tokenizer.

It lets the whole distillation method run offline on CPU in minutes. Data ships in
`data/toy/`; `python -m gad.toy` regenerates it byte for byte.

  gad.toy.tasks      task kinds, ID/OOD generators, the teacher (`solve`)
  gad.toy.check      `check(meta, response)`, `accuracy(records, responses)`
  gad.toy.tokenizer  `build_tokenizer()` (imports transformers)
  gad.toy.build      `build(out_dir)`, the `python -m gad.toy` entry point
  gad.toy.accuracy   the ToyAccuracy callback: held-out toy accuracy before/after a run (callbacks/data/toy.yaml)
  gad.toy.kd_teacher the recipe that fits the toy KD teacher (method=kd on data=toy)
"""

from gad.toy.tasks import ID_RANGES, OOD_RANGES, TASKS, TEACHER, format_prompt, generate, solve

__all__ = ["ID_RANGES", "OOD_RANGES", "TASKS", "TEACHER", "format_prompt", "generate", "solve"]

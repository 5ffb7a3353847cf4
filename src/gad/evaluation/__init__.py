"""Evaluation of students (`python src/eval.py`, docs/eval.md).

- `config`: the typed knob groups of conf/eval.yaml, checked before torch is imported
- `model_specs`: model specs (run, checkpoint, init:<run>, model folder, hub id) and their fingerprints
- `sets`: named prompt sets in the canonical format
- `keys`: the cache keys (a stable hash of what changes a result)
- `generate`: cached greedy generations and teacher-forced NLL per prompt
- `metrics`: ROUGE-L, n-gram F1, lengths, perplexity, toy exact match
- `judge`: the LLM judge (reference answers, pairwise verdicts in both orders) on `gad.api`
- `length_control`: judge scores at comparable lengths
- `report`: per-prompt JSONL, summary.csv/json, the printed table, the score-vs-length plot
- `harness`, `harness_lm`, `harness_report`: lm-evaluation-harness tasks on the same loaded models (cached per
  (model, task)), its model wrapper (the chat template and system-prompt policy), its table and files
- `select`: checkpoint selection on a validation split
- `evaluate`: the pipeline
- `run`: the body of src/eval.py (evaluate, or select a checkpoint)
"""

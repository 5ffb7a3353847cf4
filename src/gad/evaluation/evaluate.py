"""Evaluation proper: generate (cached), score without and with a judge; `gad.evaluation.run` reports.

    evaluation = score(models, sets, cfg)      # per (model, set): per-prompt rows + summary row
    write_outputs(evaluation, out_dir, cfg)    # <set>/<model>.jsonl, summary.csv/json, table, plot

Models are evaluated one at a time (one model's weights in memory at once); the judge runs
once over every (model, set, prompt) after all generations, on one client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gad.config.typed import typed
from gad.errors import GADError
from gad.evaluation import length_control as lc
from gad.evaluation.config import GenerationParams, LengthControl, PerplexityParams
from gad.evaluation.generate import CacheStats, StudentRunner
from gad.evaluation.judge import STUDENT_FIRST, STUDENT_SECOND, Judge, JudgeStats, PairRequest, student_reference
from gad.evaluation.keys import prompt_sha
from gad.evaluation.metrics import (
    NGRAM_ORDERS,
    mean,
    perplexity,
    ratio_of_sums,
    text_metrics,
    token_length,
    toy_correct,
)
from gad.evaluation.model_specs import ModelSpec, load_tokenizer_for, resolve_spec
from gad.evaluation.sets import PromptSet, check_name, load_set

EXIT_INCOMPLETE = 3  # some judge requests failed this time: re-run the same command to finish


@dataclass
class Evaluation:
    models: dict[str, ModelSpec]
    sets: list[PromptSet]
    prompts: dict[tuple[str, str], list[dict[str, Any]]]  # (model, set) -> per-prompt rows
    rows: list[dict[str, Any]]  # summary rows, one per (model, set)
    cache: dict[str, CacheStats] = field(default_factory=dict)
    judge: JudgeStats | None = None
    judge_model: str | None = None
    judge_cost: float | None = None  # USD for this run's judge tokens, at the configured prices
    harness: Any = None  # gad.evaluation.harness.Harness: lm-evaluation-harness rows, samples, cache stats

    @property
    def incomplete(self) -> int:
        return sum(int(r.get("judge_missing") or 0) for r in self.rows)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def resolve_models(cfg: DictConfig) -> dict[str, ModelSpec]:
    models = _plain(cfg.get("models"))
    if models is None:
        models = _plain(cfg.benchmark.get("models"))
    if not isinstance(models, Mapping) or not models:
        raise GADError(
            "models: name at least one model, e.g. models='{before: Qwen/Qwen2.5-3B-Instruct, gad: outputs/train/runs/<run>}'"
        )
    return {check_name("models", n): resolve_spec(n, s, cfg.paths.log_dir) for n, s in models.items()}


def load_sets(cfg: DictConfig) -> list[PromptSet]:
    sets = _plain(cfg.get("prompt_sets"))
    if sets is None:
        sets = _plain(cfg.benchmark.get("prompt_sets"))
    if isinstance(sets, Mapping) and not sets and (cfg.get("harness") or {}).get("tasks"):
        return []  # harness tasks only (benchmark=harness)
    if not isinstance(sets, Mapping) or not sets:
        raise GADError("prompt_sets: name at least one prompt file, e.g. prompt_sets='{lmsys: data/lmsys/test.jsonl}'")
    return [load_set(name, spec, cfg.get("limit")) for name, spec in sets.items()]


def generation_params(cfg: DictConfig) -> GenerationParams:
    return typed(GenerationParams, cfg.generation, "generation")


def perplexity_params(cfg: DictConfig) -> PerplexityParams:
    return typed(PerplexityParams, cfg.perplexity, "perplexity")


# ------------------------------------------------------------------------------------------ score
def score(
    models: dict[str, ModelSpec], sets: list[PromptSet], cfg: DictConfig, console=None, harness=None
) -> Evaluation:
    gen, ppl = generation_params(cfg), perplexity_params(cfg)
    bounds = typed(LengthControl, cfg.length_control, "length_control")
    low, high = bounds.low, bounds.high
    judge_cfg = _plain(cfg.get("judge"))
    judge = Judge(judge_cfg, cfg.cache_dir, progress=bool(cfg.progress), console=console) if judge_cfg else None

    prompts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    tokenizers: dict[str, Any] = {}
    cache: dict[str, CacheStats] = {}
    for name, spec in models.items():
        tokenizer = load_tokenizer_for(spec)
        tokenizers[name] = tokenizer
        cache[name] = CacheStats()
        with StudentRunner(
            spec,
            tokenizer,
            cfg.cache_dir,
            gen=gen,
            ppl=ppl,
            device=str(cfg.device),
            dtype=str(cfg.dtype),
            attn_implementation=str(cfg.attn_implementation),
            console=console if cfg.progress else None,
        ) as runner:
            for pset in sets:
                out = runner.run(pset.records, description=f"{name} / {pset.name}")
                cache[name].add(out.stats)
                prompts[(name, pset.name)] = [
                    _prompt_row(record, response, nll, n_tok, tokenizer)
                    for record, response, nll, n_tok in zip(pset.records, out.responses, out.nll, out.nll_tokens)
                ]
            if harness is not None:  # on the same loaded model (loaded only if a task is not cached)
                harness.run_model(name, spec, tokenizer, runner._model, console=console if cfg.progress else None)

    judge_stats = None
    if judge is not None:
        judge_stats = _judge(judge, prompts, tokenizers)

    rows = []
    for name, spec in models.items():
        for pset in sets:
            row = {"model": name, "spec": spec.spec, "set": pset.name}
            row.update(summarize(prompts[(name, pset.name)], low, high, judged=judge is not None))
            rows.append(row)
    cost = None
    if judge is not None and judge_stats is not None:
        from gad.api import estimate_cost

        cost = estimate_cost(
            judge_stats.tokens_in, judge_stats.tokens_out, judge.cfg.price_in_per_mtok, judge.cfg.price_out_per_mtok
        )
    return Evaluation(
        models, sets, prompts, rows, cache, judge_stats, judge.cfg.model if judge else None, cost, harness=harness
    )


def _prompt_row(record: dict, response: str, nll: float | None, nll_tokens: int | None, tokenizer) -> dict[str, Any]:
    teacher = record.get("response")
    tokens = token_length(tokenizer, response)
    teacher_tokens = token_length(tokenizer, teacher)
    row: dict[str, Any] = {
        "id": record["id"],
        "messages": record["messages"],
        "teacher": teacher,
        "response": response,
        "tokens": tokens,
        "teacher_tokens": teacher_tokens,
        "length_ratio": tokens / teacher_tokens if teacher_tokens else None,
    }
    row.update(text_metrics(response, teacher))
    row.update({"nll": nll, "nll_tokens": nll_tokens, "toy_correct": toy_correct(record, response)})
    return row


def _judge(judge: Judge, prompts: dict[tuple[str, str], list[dict]], tokenizers: dict[str, Any]) -> JudgeStats:
    by_prompt: dict[str, list[dict]] = {}
    pairs = []
    for rows in prompts.values():
        for row in rows:
            key = prompt_sha(row["messages"])
            by_prompt[key] = row["messages"]
            pairs.append(PairRequest(key, row["messages"], row["response"]))
    results = judge.run(pairs, by_prompt)
    for (model, _), rows in prompts.items():
        for row, pair in zip(
            rows, (PairRequest(prompt_sha(r["messages"]), r["messages"], r["response"]) for r in rows)
        ):
            reference = results.references.get(pair.prompt)
            row["judge_reference"] = reference
            row["reference_tokens"] = token_length(tokenizers[model], reference)
            verdicts: dict[str, Any] = {}
            if reference is not None:
                for order, key, _, _ in judge.verdict_plan(pair, reference):
                    if key in results.verdicts:
                        verdicts[order] = list(student_reference(order, results.verdicts[key]))
                    elif key in results.unparseable:
                        verdicts[order] = "unparseable"
                    else:
                        verdicts[order] = None
            row["judge"] = verdicts
            complete = reference is not None and all(isinstance(verdicts.get(o), list) for o in judge.cfg.orders)
            if complete:
                pairs_sr = [verdicts[o] for o in judge.cfg.orders]
                row["judge_student"] = sum(p[0] for p in pairs_sr) / len(pairs_sr)
                row["judge_ref"] = sum(p[1] for p in pairs_sr) / len(pairs_sr)
                row["judge_prompt_score"] = lc.prompt_score(row["judge_student"], row["judge_ref"])
            else:
                row["judge_student"] = row["judge_ref"] = row["judge_prompt_score"] = None
    return results.stats


# -------------------------------------------------------------------------------------- summarize
def summarize(rows: list[dict[str, Any]], low: float, high: float, judged: bool) -> dict[str, Any]:
    """The summary numbers of one (model, set) from its per-prompt rows (see docs/eval.md)."""
    out: dict[str, Any] = {"n": len(rows)}
    out["tokens_mean"] = mean([r["tokens"] for r in rows])
    with_teacher = [r for r in rows if r["teacher"] is not None]
    out["teacher_tokens_mean"] = mean([r["teacher_tokens"] for r in with_teacher])
    out["length_ratio"] = ratio_of_sums(
        [r["tokens"] for r in with_teacher], [r["teacher_tokens"] for r in with_teacher]
    )
    out["rougeL"] = mean([r["rougeL"] for r in rows])
    for n in NGRAM_ORDERS:
        out[f"f1_{n}"] = mean([r[f"f1_{n}"] for r in rows])
    out["f1_mean"] = mean([out[f"f1_{n}"] for n in NGRAM_ORDERS])
    out["perplexity"] = perplexity([r["nll"] for r in rows], [r["nll_tokens"] for r in rows])
    toy = [r["toy_correct"] for r in rows if r["toy_correct"] is not None]
    out["toy_accuracy"] = sum(toy) / len(toy) if toy else math.nan
    if not judged:
        return out
    scored = [r for r in rows if r.get("judge_student") is not None]
    s = [r["judge_student"] for r in scored]
    ref = [r["judge_ref"] for r in scored]
    out["judge_score"] = lc.raw_score(s, ref)
    for order, key in ((STUDENT_FIRST, "judge_score_student_first"), (STUDENT_SECOND, "judge_score_student_second")):
        pairs = [r["judge"][order] for r in rows if isinstance(r.get("judge", {}).get(order), list)]
        out[key] = lc.raw_score([p[0] for p in pairs], [p[1] for p in pairs])
    out["judge_prompt_mean"] = mean([r["judge_prompt_score"] for r in scored])
    out["judge_n"] = len(scored)
    out["judge_unparseable"] = sum(1 for r in rows for v in r.get("judge", {}).values() if v == "unparseable")
    # prompts a re-run can still complete: no reference yet, or an order whose request failed
    out["judge_missing"] = sum(
        1 for r in rows if r.get("judge_reference") is None or any(v is None for v in r.get("judge", {}).values())
    )
    out["judge_length_ratio"] = ratio_of_sums([r["tokens"] for r in scored], [r["reference_tokens"] for r in scored])
    ratios = [max(r["tokens"], 1) / max(r["reference_tokens"], 1) for r in scored]
    out["judge_lc_subset"], out["judge_lc_subset_n"] = lc.subset_score(s, ref, ratios, low, high)
    x = [lc.log_ratio(r["tokens"], r["reference_tokens"]) for r in scored]
    out["judge_lc_regression"], out["judge_lc_slope"] = lc.regression([r["judge_prompt_score"] for r in scored], x)
    return out

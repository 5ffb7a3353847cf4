"""ROPD's grader: per prompt, the Rubricator's rubric from the teacher references and the current rollouts,
then the Verifier's judgements of every rollout (and every reference) against it, through `gad.api`.

One step, as the official reward manager (algo/ropd/reward_manager.py) does it per group:
  1. rubric    one request per prompt: question + all its teacher references + its N rollouts -> 4..12 criteria
  2. verdicts  one request per prompt: the rubric + the references and rollouts, deterministically shuffled
               together, 1-based -> one boolean per criterion per answer
  3. rewards   s_i = sum_k w_k v_ik / (sum_k w_k + eps) per rollout (gad.ropd_rubrics.rubric_reward); the
               references' scores are logged (`train/teacher_reward`), never trained on
Requests go through `gad.api` (one client per step, the openai client's retry layer, `concurrency` prompts at
once, `gad.api.runner.run_journaled`). A reply that breaks the schema is asked again up to `parse_retries`
times; a prompt whose rubric or verdicts could not be had (unparseable, refused, or a transient error after the
HTTP retries) gets no rewards: the module gives its rollouts equal rewards, so zero advantage (the official
manager's fallback: reward 0 for the whole group). A fatal error (rejected key, quota, unknown model) stops the
run with one line, as does `abort_after_failures` failed requests in a row.

Journals (`<grader_cache>/ropd/grader.jsonl`, failures in `grader.failures.jsonl`; `.rank<r>` under DDP): every
reply is kept under a key of (model, request parameters, template version, sha of the question, references and
rollouts; for verdicts also the rubric and the answers' order), so a resumed run, which draws the same rollouts,
asks nothing it already got; a prompt given up on as unparseable is not asked again either (the same reward as
the first time). The API key is read from the variable `api_key_env` names and never written.
"""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gad.config.ropd import GraderConfig
from gad.ropd_rubrics import (
    TEMPLATE_VERSION,
    Criterion,
    ReplyError,
    judged_text,
    parse_rubric,
    parse_verdicts,
    rubric_reward,
    rubricator_messages,
    sha,
    shuffled,
    verifier_messages,
)


@dataclass
class Group:
    """One prompt of a step: its key (the prompt id), the question text, its teachers' responses and rollouts."""

    key: str
    question: str
    references: list[str]
    rollouts: list[str]


@dataclass
class GroupResult:
    rewards: list[float] | None  # one per rollout; None: the prompt failed (zero advantage)
    reference_rewards: list[float] = field(default_factory=list)
    items: int = 0  # criteria in its rubric
    failed: str | None = None  # "rubric" or "verdicts" when it failed


@dataclass
class Grading:
    results: list[GroupResult]
    requests: int = 0  # chat completions sent this step (parse retries included)
    cached: int = 0  # rubrics and verdicts found in the journal


def step_metrics(grading: Grading) -> dict[str, float]:
    """What a rubric step logs about its grading (NaN where no prompt was graded)."""
    ok = [r for r in grading.results if r.rewards is not None]
    refs = [s for r in ok for s in r.reference_rewards]
    return {
        "train/grader_failed": float(len(grading.results) - len(ok)),
        "train/rubric_items": sum(r.items for r in ok) / len(ok) if ok else math.nan,
        "train/teacher_reward": sum(refs) / len(refs) if refs else math.nan,
        "train/grader_requests": float(grading.requests),
        "train/grader_cached": float(grading.cached),
    }


class Grader:
    """See the module doc. `base_url`: where to send the requests instead of the config's (the toy server)."""

    def __init__(self, cfg: GraderConfig, cache_dir: str | Path, *, rank: int = 0, base_url: str | None = None):
        from gad.api import api_key_from_env, protect_logs
        from gad.api.settings import PLACEHOLDER_KEY

        self.cfg = cfg
        self.settings = copy.copy(cfg)  # the connection side; the toy server's URL replaces base_url there only
        if base_url is not None:
            self.settings.base_url = base_url
        self.key = PLACEHOLDER_KEY if base_url is not None else api_key_from_env(cfg, "method.grader")
        protect_logs([self.key])
        suffix = f".rank{rank}" if rank else ""
        folder = Path(cache_dir) / "ropd"
        self.paths = (folder / f"grader{suffix}.jsonl", folder / f"grader{suffix}.failures.jsonl")
        self.journals: tuple[Any, Any] | None = None
        self.requests = 0
        params: dict[str, Any] = {"temperature": cfg.temperature}
        if cfg.extra_body:
            params["extra_body"] = dict(cfg.extra_body)
        self.rubric_params = {**params, cfg.max_tokens_field: cfg.rubric_max_tokens}
        self.verdict_params = {**params, cfg.max_tokens_field: cfg.verdict_max_tokens}
        protocol = [TEMPLATE_VERSION, cfg.min_criteria, cfg.max_criteria]
        self.rubric_fp = sha([cfg.model, self.rubric_params, *protocol, cfg.rubric_instructions])[:16]
        self.verdict_fp = sha([cfg.verifier, self.verdict_params, TEMPLATE_VERSION, cfg.scoring_instructions])[:16]

    def open(self) -> None:
        from gad.api import Journal

        if self.journals is None:
            out = Journal(self.paths[0], index_fields=("rubric", "judgements")).open()
            self.journals = (out, Journal(self.paths[1], index_fields=("status",)).open())

    def close(self) -> None:
        for journal in self.journals or ():
            journal.close()
        self.journals = None

    # ------------------------------------------------------------------------------------------ a step
    def grade(self, groups: list[Group]) -> Grading:
        self.open()
        self.requests = 0
        grading = Grading([])
        asyncio.run(self._grade(groups, grading))
        grading.requests = self.requests
        return grading

    def rubric_item(self, group: Group) -> dict[str, Any]:
        refs, rolls = [judged_text(t) for t in group.references], [judged_text(t) for t in group.rollouts]
        key = "rub:" + sha([self.rubric_fp, group.question, refs, rolls])[:40]
        return {"id": key, "question": group.question, "references": refs, "students": rolls}

    def verdict_item(self, group: Group, rubric: list[Criterion]) -> dict[str, Any]:
        answers = [("reference", i, judged_text(t)) for i, t in enumerate(group.references)]
        answers += [("rollout", i, judged_text(t)) for i, t in enumerate(group.rollouts)]
        order = shuffled(group.key, answers)
        rubric_rows = [c.__dict__ for c in rubric]
        key = "vrd:" + sha([self.verdict_fp, group.question, rubric_rows, [a[2] for a in order]])[:40]
        return {"id": key, "question": group.question, "rubric": rubric, "order": order}

    async def _grade(self, groups: list[Group], grading: Grading) -> None:
        out, _ = self.journals
        client = None
        try:
            rubric_items = [self.rubric_item(g) for g in groups]
            client = await self._stage(rubric_items, self._rubric, client, grading)
            rubrics: list[list[Criterion] | None] = []
            for item in rubric_items:
                rows = out.index.get(item["id"], {}).get("rubric") if item["id"] in out.keys else None
                rubrics.append([Criterion(**r) for r in rows] if rows else None)
            verdict_items = [self.verdict_item(g, r) if r else None for g, r in zip(groups, rubrics)]
            client = await self._stage([v for v in verdict_items if v], self._verdicts, client, grading)
        finally:
            if client is not None:
                await client.close()
        for group, rubric, item in zip(groups, rubrics, verdict_items):
            grading.results.append(self._result(group, rubric, item))

    def _result(self, group: Group, rubric: list[Criterion] | None, item: dict[str, Any] | None) -> GroupResult:
        out, _ = self.journals
        if rubric is None or item is None:
            return GroupResult(None, failed="rubric")
        judgements = out.index.get(item["id"], {}).get("judgements") if item["id"] in out.keys else None
        if not judgements:
            return GroupResult(None, items=len(rubric), failed="verdicts")
        points = [c.points for c in rubric]
        scores = {(source, i): rubric_reward(points, j) for (source, i, _), j in zip(item["order"], judgements)}
        return GroupResult(
            rewards=[scores["rollout", i] for i in range(len(group.rollouts))],
            reference_rewards=[scores["reference", i] for i in range(len(group.references))],
            items=len(rubric),
        )

    async def _stage(self, items: list[dict[str, Any]], work: Callable, client: Any, grading: Grading) -> Any:
        """Send the items not in the journals yet (each key once); returns the client (made when first needed)."""
        from gad.api import make_client, pending_items, run_journaled

        out, failures = self.journals
        unique = list({item["id"]: item for item in items}.values())
        todo = pending_items(unique, out, failures)
        grading.cached += sum(1 for item in unique if item["id"] in out.keys)
        if not todo:
            return client
        if client is None:
            client = make_client(self.settings, self.key, concurrency=self.cfg.concurrency)
        await run_journaled(
            todo,
            lambda item: work(client, item),
            output=out,
            failures=failures,
            concurrency=self.cfg.concurrency,
            retry_counts=client.retry_counts,
            abort_after_failures=self.cfg.abort_after_failures,
            progress=False,
        )
        return client

    # ----------------------------------------------------------------------------------- one request
    async def _ask(self, client: Any, item: dict[str, Any], model: str, messages, params, parse) -> Any:
        """Up to 1 + parse_retries chat completions until `parse(text)` succeeds; an Outcome."""
        from gad.api import FAILED, OK, REJECTED, FatalRunError, Outcome, chat_completion, classify_error

        why = ""
        tokens_in = tokens_out = 0
        for _ in range(1 + self.cfg.parse_retries):
            self.requests += 1
            try:
                reply = await chat_completion(client, model=model, messages=messages, params=params)
            except Exception as exc:  # classified; anything unknown is re-raised by classify_error
                info = classify_error(exc, secrets=[self.key], where=str(self.settings.base_url or "the OpenAI API"))
                if info.fatal:
                    raise FatalRunError(f"method.grader: {info.message}") from None
                status = FAILED if info.scope == "transient" else REJECTED
                return Outcome(status, {"id": item["id"], "detail": info.message}, kind=info.kind)
            tokens_in += reply.prompt_tokens
            tokens_out += reply.completion_tokens
            try:
                parsed = parse(reply.text)
            except ReplyError as err:
                why = f"{err} (reply: {(reply.text or '')[:200]!r})"
                continue
            return Outcome(OK, {"id": item["id"], **parsed}, tokens_in=tokens_in, tokens_out=tokens_out)
        return Outcome(REJECTED, {"id": item["id"], "detail": why[:500]}, kind="unparseable")

    async def _rubric(self, client: Any, item: dict[str, Any]) -> Any:
        c = self.cfg
        messages = rubricator_messages(
            item["question"],
            item["references"],
            item["students"],
            instructions=c.rubric_instructions,
            min_items=c.min_criteria,
            max_items=c.max_criteria,
        )

        def parse(text: str | None) -> dict[str, Any]:
            rubric = parse_rubric(text, min_items=c.min_criteria, max_items=c.max_criteria)
            return {"rubric": [r.__dict__ for r in rubric]}

        return await self._ask(client, item, c.model, messages, self.rubric_params, parse)

    async def _verdicts(self, client: Any, item: dict[str, Any]) -> Any:
        rubric, answers = item["rubric"], [a[2] for a in item["order"]]
        messages = verifier_messages(item["question"], rubric, answers, instructions=self.cfg.scoring_instructions)

        def parse(text: str | None) -> dict[str, Any]:
            return {"judgements": parse_verdicts(text, answers=len(answers), items=len(rubric))}

        return await self._ask(client, item, self.cfg.verifier, messages, self.verdict_params, parse)

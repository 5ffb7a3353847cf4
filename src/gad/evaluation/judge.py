"""The LLM judge: its own reference answer per prompt, then pairwise 1-10 ratings (MiniLLM prompt).

Protocol (docs/eval.md): for each prompt the judge first answers the prompt itself (the
reference). Then it rates the student's answer and the reference with the MiniLLM/Vicuna
pairwise prompt; the first line of its reply must hold the two scores. With `both_orders`
each pair is rated twice, student as Assistant 1 and as Assistant 2, and the two ratings of
each side are averaged (position bias cancels). A verdict whose first line is not two numbers
in [0, 10] is re-requested up to `parse_retries` times, then counted as unparseable; a prompt
is scored only when every order it needs has a parsed verdict.

Every request goes through `gad.api` (one long-lived client, the openai client's retry layer,
bounded concurrency, journals under `<cache_dir>/judge/`): cached answers and verdicts are never
requested again, an interrupted run resumes, and the API key (read from the environment variable
`judge.api_key_env` names) is never written anywhere.
Cache keys: reference (judge model, reference params, sha of the prompt messages); verdict (judge
model, verdict params, prompt sha, order, sha of the two answers in the order shown).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from gad.api.settings import ClientSettings
from gad.chat import system_prompt_sent, with_system_prompt
from gad.config.typed import finite, require, typed
from gad.evaluation.keys import sha
from gad.evaluation.verdicts import (  # noqa: F401  (PAIR_TEMPLATE, parse_verdict, student_reference: re-exported)
    JUDGE_INSTRUCTION,
    JUDGE_SYSTEM,
    PAIR_TEMPLATE,
    STUDENT_FIRST,
    STUDENT_SECOND,
    TEMPLATE_VERSION,
    parse_verdict,
    question_text,
    student_reference,
    verdict_messages,
)


# -------------------------------------------------------------------------------------- settings
@dataclass
class ReferenceConfig:
    """`judge.reference`: the judge's own answer (conf/judge/gpt4o.yaml documents the keys)."""

    max_tokens: Optional[int]
    system_prompt: Optional[str]


@dataclass
class VerdictConfig:
    """`judge.verdict`: one pairwise rating (conf/judge/gpt4o.yaml)."""

    max_tokens: Optional[int]


@dataclass
class JudgeConfig(ClientSettings):
    """A judge endpoint (the `ClientSettings` keys) and its protocol: conf/judge/{gpt4o,local}.yaml, where
    every key is documented. Derived: `reference_system_prompt` (the text the reference policy sends)."""

    model: str
    concurrency: int
    temperature: Optional[float]
    max_tokens_field: str
    extra_body: dict[str, Any]
    reference: ReferenceConfig
    verdict: VerdictConfig
    both_orders: bool
    parse_retries: int
    retry_rejected: bool
    abort_after_failures: int
    price_in_per_mtok: Optional[float]
    price_out_per_mtok: Optional[float]

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.model.strip()), "model", self.model, "must name the judge model (e.g. gpt-4o)")
        require(
            self.max_tokens_field in ("max_tokens", "max_completion_tokens"),
            "max_tokens_field",
            self.max_tokens_field,
            "must be max_tokens or max_completion_tokens",
        )
        require(self.concurrency >= 1, "concurrency", self.concurrency, "must be >= 1")
        require(self.parse_retries >= 0, "parse_retries", self.parse_retries, "must be >= 0")
        require(self.abort_after_failures >= 0, "abort_after_failures", self.abort_after_failures, "must be >= 0")
        t = self.temperature
        require(t is None or (finite(t) and 0 <= t <= 2), "temperature", t, "must be >= 0 and <= 2")
        for name, value in (
            ("reference.max_tokens", self.reference.max_tokens),
            ("verdict.max_tokens", self.verdict.max_tokens),
        ):
            require(value is None or value >= 1, name, value, "must be >= 1")
        for name in ("price_in_per_mtok", "price_out_per_mtok"):
            price = getattr(self, name)
            require(price is None or (finite(price) and price >= 0), name, price, "must be >= 0")
        self.reference_system_prompt = system_prompt_sent(self.reference.system_prompt)

    @property
    def reference_max_tokens(self) -> int | None:
        return self.reference.max_tokens

    @property
    def verdict_max_tokens(self) -> int | None:
        return self.verdict.max_tokens

    def params(self, max_tokens: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.temperature, self.max_tokens_field: max_tokens}
        if self.extra_body:
            out["extra_body"] = dict(self.extra_body)
        return out

    @property
    def orders(self) -> tuple[str, ...]:
        return (STUDENT_FIRST, STUDENT_SECOND) if self.both_orders else (STUDENT_FIRST,)

    def reference_fp(self) -> str:
        return sha([self.model, self.params(self.reference_max_tokens), self.reference_system_prompt])[:16]

    def verdict_fp(self) -> str:
        return sha(
            [self.model, self.params(self.verdict_max_tokens), TEMPLATE_VERSION, JUDGE_SYSTEM, JUDGE_INSTRUCTION]
        )[:16]

    def reference_key(self, prompt: str) -> str:
        return "ref:" + sha([self.reference_fp(), prompt])[:40]

    def verdict_key(self, prompt: str, order: str, answer_1: str, answer_2: str) -> str:
        return "vrd:" + sha([self.verdict_fp(), prompt, order, sha(answer_1), sha(answer_2)])[:40]


# ------------------------------------------------------------------------------------------ work
@dataclass
class PairRequest:
    """One (prompt, student answer) to judge; the reference comes from the judge's own answers."""

    prompt: str  # prompt sha
    messages: list[dict]
    answer: str


@dataclass
class JudgeStats:
    references_cached: int = 0
    references_sent: int = 0
    verdicts_cached: int = 0
    verdicts_sent: int = 0
    requests: int = 0  # chat-completion calls made by this process (parse retries included)
    http_retries: int = 0  # retries inside the client (429, 5xx, timeouts)
    tokens_in: int = 0
    tokens_out: int = 0
    failed: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "references_cached": self.references_cached,
            "references_sent": self.references_sent,
            "verdicts_cached": self.verdicts_cached,
            "verdicts_sent": self.verdicts_sent,
            "requests": self.requests,
            "http_retries": self.http_retries,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "failed": dict(self.failed),
            "rejected": dict(self.rejected),
            "elapsed_s": round(self.elapsed_s, 2),
        }


@dataclass
class JudgeResults:
    references: dict[str, str]  # prompt sha -> the judge's answer
    verdicts: dict[str, tuple[float, float]]  # verdict key -> (Assistant 1, Assistant 2) scores
    unparseable: set[str]  # verdict keys given up on
    stats: JudgeStats


class Judge:
    """Runs references and verdicts through the shared API layer, with the journals as cache."""

    def __init__(self, cfg: Mapping[str, Any], cache_dir: str | Path, *, progress: bool = True, console=None):
        from gad.api import api_key_from_env, protect_logs

        self.cfg = typed(JudgeConfig, cfg, "judge")
        self.settings = self.cfg  # the connection side
        self.key = api_key_from_env(self.settings, "judge")  # read now, so a missing key fails before any model loads
        protect_logs([self.key])
        self.dir = Path(cache_dir) / "judge"
        self.progress = progress
        self.console = console

    # ---------------------------------------------------------------------------- public
    def run(self, pairs: list[PairRequest], messages_by_prompt: dict[str, list[dict]]) -> JudgeResults:
        from gad.api import Journal

        stats = JudgeStats()
        journals = [
            Journal(self.dir / f"{name}.jsonl", index_fields=("status",))
            for name in ("references", "references.failures", "verdicts", "verdicts.failures")
        ]
        for j in journals:
            j.open()
        try:
            refs, ref_fail, vrd, vrd_fail = journals
            stats_holder: list[Any] = []
            asyncio.run(self._run(pairs, messages_by_prompt, refs, ref_fail, vrd, vrd_fail, stats, stats_holder))
            references = self._texts(refs, {self.cfg.reference_key(p): p for p in messages_by_prompt})
            verdicts = {r["id"]: (float(r["s1"]), float(r["s2"])) for r in vrd.records()}
            unparseable = {
                r["id"] for r in vrd_fail.records() if r.get("reason") == "unparseable" and r["id"] not in verdicts
            }
        finally:
            for j in journals:
                j.close()
        return JudgeResults(references, verdicts, unparseable, stats)

    def verdict_plan(self, pair: PairRequest, reference: str) -> list[tuple[str, str, str, str]]:
        """[(order, key, answer_1, answer_2)] for one pair."""
        out = []
        for order in self.cfg.orders:
            a1, a2 = (pair.answer, reference) if order == STUDENT_FIRST else (reference, pair.answer)
            out.append((order, self.cfg.verdict_key(pair.prompt, order, a1, a2), a1, a2))
        return out

    # --------------------------------------------------------------------------- private
    @staticmethod
    def _texts(journal, wanted: dict[str, str]) -> dict[str, str]:
        out = {}
        for r in journal.records():
            if r["id"] in wanted and isinstance(r.get("text"), str):
                out[wanted[r["id"]]] = r["text"]
        return out

    async def _run(self, pairs, messages_by_prompt, refs, ref_fail, vrd, vrd_fail, stats: JudgeStats, holder) -> None:
        import time

        from gad.api import make_client, pending_items, run_journaled

        start = time.monotonic()
        cfg = self.cfg
        ref_items = [{"id": cfg.reference_key(p), "prompt": p} for p in messages_by_prompt]
        ref_todo = pending_items(ref_items, refs, ref_fail, retry_rejected=cfg.retry_rejected)
        stats.references_cached = sum(1 for i in ref_items if i["id"] in refs.keys)
        client = None
        try:
            if ref_todo:
                client = make_client(self.settings, self.key, concurrency=cfg.concurrency)
                run = await run_journaled(
                    ref_todo,
                    lambda item: self._reference(client, item, messages_by_prompt[item["prompt"]], stats),
                    output=refs,
                    failures=ref_fail,
                    concurrency=cfg.concurrency,
                    retry_counts=client.retry_counts,
                    abort_after_failures=cfg.abort_after_failures,
                    progress=self.progress,
                    description="judge: references",
                )
                stats.references_sent = run.done
                stats.failed.update({f"reference {k}": v for k, v in run.failed.items()})
                stats.rejected.update({f"reference {k}": v for k, v in run.rejected.items()})
            references = self._texts(refs, {i["id"]: i["prompt"] for i in ref_items})

            items, seen = [], set()
            for pair in pairs:
                reference = references.get(pair.prompt)
                if reference is None:
                    continue
                for order, key, a1, a2 in self.verdict_plan(pair, reference):
                    if key not in seen:
                        seen.add(key)
                        items.append({"id": key, "prompt": pair.prompt, "order": order, "a1": a1, "a2": a2})
            todo = pending_items(items, vrd, vrd_fail, retry_rejected=cfg.retry_rejected)
            stats.verdicts_cached = sum(1 for i in items if i["id"] in vrd.keys)
            if todo:
                if client is None:
                    client = make_client(self.settings, self.key, concurrency=cfg.concurrency)
                run = await run_journaled(
                    todo,
                    lambda item: self._verdict(client, item, messages_by_prompt[item["prompt"]], stats),
                    output=vrd,
                    failures=vrd_fail,
                    concurrency=cfg.concurrency,
                    retry_counts=client.retry_counts,
                    abort_after_failures=cfg.abort_after_failures,
                    progress=self.progress,
                    description="judge: verdicts",
                )
                stats.verdicts_sent = run.done
                stats.failed.update({f"verdict {k}": v for k, v in run.failed.items()})
                stats.rejected.update({f"verdict {k}": v for k, v in run.rejected.items()})
        finally:
            if client is not None:
                stats.http_retries = sum(client.retry_counts.values())
                await client.close()
            stats.elapsed_s = time.monotonic() - start

    async def _call(self, client, messages: list[dict], max_tokens: int | None, stats: JudgeStats):
        """One chat completion; returns (reply, None) or (None, ErrorInfo) for a non-fatal error."""
        from gad.api import FatalRunError, chat_completion, classify_error

        stats.requests += 1
        try:
            reply = await chat_completion(
                client, model=self.cfg.model, messages=messages, params=self.cfg.params(max_tokens)
            )
        except Exception as exc:  # classified below; anything unknown is re-raised by classify_error
            info = classify_error(exc, secrets=[self.key], where=str(self.settings.base_url or "the OpenAI API"))
            if info.fatal:
                raise FatalRunError(f"judge: {info.message}") from None
            return None, info
        stats.tokens_in += reply.prompt_tokens
        stats.tokens_out += reply.completion_tokens
        return reply, None

    async def _reference(self, client, item: dict, messages: list[dict], stats: JudgeStats):
        from gad.api import FAILED, OK, REJECTED, Outcome

        prompt = with_system_prompt(messages, self.cfg.reference_system_prompt)  # as a teacher is sent it (gad.chat)
        reply, error = await self._call(client, prompt, self.cfg.reference_max_tokens, stats)
        if error is not None:
            status = FAILED if error.scope == "transient" else REJECTED
            return Outcome(status, {"id": item["id"], "detail": error.message}, kind=error.kind)
        if reply.finish_reason == "content_filter" or (reply.refusal and not reply.text):
            return Outcome(REJECTED, {"id": item["id"], "detail": "judge refused or filtered"}, kind="refusal")
        if not reply.text or not reply.text.strip():
            return Outcome(FAILED, {"id": item["id"], "detail": "empty reply"}, kind="empty")
        record = {"id": item["id"], "text": reply.text, "model": reply.model, "finish_reason": reply.finish_reason}
        return Outcome(
            OK, record, tokens_in=reply.prompt_tokens, tokens_out=reply.completion_tokens, retries=reply.retries
        )

    async def _verdict(self, client, item: dict, messages: list[dict], stats: JudgeStats):
        from gad.api import FAILED, OK, REJECTED, Outcome

        request = verdict_messages(question_text(messages), item["a1"], item["a2"])
        raw = None
        tokens_in = tokens_out = 0
        for _ in range(1 + self.cfg.parse_retries):
            reply, error = await self._call(client, request, self.cfg.verdict_max_tokens, stats)
            if error is not None:
                status = FAILED if error.scope == "transient" else REJECTED
                return Outcome(status, {"id": item["id"], "detail": error.message}, kind=error.kind)
            tokens_in += reply.prompt_tokens
            tokens_out += reply.completion_tokens
            raw = reply.text
            scores = parse_verdict(raw)
            if scores is not None:
                record = {"id": item["id"], "order": item["order"], "s1": scores[0], "s2": scores[1], "text": raw}
                return Outcome(OK, record, tokens_in=tokens_in, tokens_out=tokens_out, retries=reply.retries)
        record = {"id": item["id"], "order": item["order"], "raw": (raw or "")[:500]}
        return Outcome(REJECTED, record, kind="unparseable", tokens_in=tokens_in, tokens_out=tokens_out)

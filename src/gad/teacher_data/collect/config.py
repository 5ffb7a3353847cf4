"""What `python src/collect.py` is asked to do: the teacher endpoints (`TeacherConfig`, conf/teacher/: one with
`teacher=<preset>`, several with `teachers=[a,b]`), the refusal policy, and the whole plan (`CollectPlan`:
prompts, output, sidecar), checked before any request."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from gad.api.settings import ClientSettings
from gad.chat import NONE, TEMPLATE_DEFAULT, system_prompt_sent
from gad.config.typed import finite, require, typed
from gad.errors import GADError
from gad.teacher_data.collect.refusals import DEFAULT_REFUSAL_PATTERNS, RefusalDetector

ENTRY_ONLY = ("paths", "hydra", "task_name")  # keys of the entry config that are not collect's own


@dataclass
class TeacherConfig(ClientSettings):
    """A teacher endpoint (the `ClientSettings` keys) and what to ask it: conf/teacher/{openai,vllm}.yaml,
    where every key is documented."""

    model: str
    concurrency: int
    temperature: Optional[float]
    top_p: Optional[float]
    max_tokens: Optional[int]
    max_tokens_field: str
    seed: Optional[int]
    system_prompt: Optional[str]
    extra_body: dict[str, Any]
    price_in_per_mtok: Optional[float]
    price_out_per_mtok: Optional[float]
    name: Optional[str] = None  # the dump's `teacher` field for this endpoint (None: the model name)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.model.strip()), "model", self.model, "must name the model to ask (e.g. gpt-5-chat-latest)")
        self.model = self.model.strip()
        self.name = (self.name or "").strip() or None
        self.system_prompt = self.system_prompt or None
        require(self.concurrency >= 1, "concurrency", self.concurrency, "must be >= 1")
        t, top_p = self.temperature, self.top_p
        require(t is None or (finite(t) and 0 <= t <= 2), "temperature", t, "must be >= 0 and <= 2")
        require(top_p is None or (finite(top_p) and 0 < top_p <= 1), "top_p", top_p, "must be > 0 and <= 1")
        require(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", self.max_tokens, "must be >= 1")
        require(
            self.max_tokens_field in ("max_tokens", "max_completion_tokens"),
            "max_tokens_field",
            self.max_tokens_field,
            "must be max_tokens or max_completion_tokens",
        )
        for name in ("price_in_per_mtok", "price_out_per_mtok"):
            price = getattr(self, name)
            require(price is None or (finite(price) and price >= 0), name, price, "must be >= 0")

    @property
    def label(self) -> str:
        """What the dump's `teacher` field says for this endpoint: `name`, else the model."""
        return self.name or self.model

    @property
    def params(self) -> dict[str, Any]:
        """The request fields besides model and messages (unset ones left to the server)."""
        params: dict[str, Any] = {}
        for name, value in (
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            (self.max_tokens_field, self.max_tokens),
            ("seed", self.seed),
        ):
            if value is not None:
                params[name] = value
        if self.extra_body:
            params["extra_body"] = dict(self.extra_body)
        return params


@dataclass
class RefusalConfig:
    """The refusal filter (`refusal` in conf/collect.yaml, documented there); `patterns` None: the built-in set."""

    enabled: bool
    scan_chars: int
    patterns: Optional[list[str]]

    def __post_init__(self) -> None:
        require(self.scan_chars >= 1, "scan_chars", self.scan_chars, "must be >= 1")
        if self.patterns is None:
            self.patterns = list(DEFAULT_REFUSAL_PATTERNS)
        for i, pattern in enumerate(self.patterns):
            try:
                re.compile(pattern)
            except re.error as err:
                require(False, f"patterns[{i}]", pattern, f"not a valid regular expression ({err})")

    def detector(self) -> RefusalDetector:
        return RefusalDetector(self.patterns or [], scan_chars=self.scan_chars, enabled=self.enabled)


def _looks_like_hub_id(path: str) -> bool:
    # same rule as gad.data.records.is_hub_id, without importing gad.data (which loads the training stack)
    return path.count("/") == 1 and not path.endswith((".jsonl", ".json", ".parquet"))


def sidecar_path(output: Path, failures: str | None) -> Path:
    """Where permanent failures go: `failures`, or `<output>.failures` beside the output.

    Not a dump suffix: the sidecar holds refusals, and `data.path=<that folder>` must never train
    on them (gad.data.records skips `.failures` files, and the `.failures.jsonl` of earlier versions).
    """
    return Path(failures) if failures else output.with_name(f"{output.name}.failures")


def _dump_suffix(failures: str) -> bool:
    path = Path(failures)
    dump = path.suffix in (".jsonl", ".json", ".parquet", ".gz", ".bz2", ".xz")
    return dump and not path.name.endswith(".failures.jsonl")


def adopt_legacy_sidecar(output: Path, sidecar: Path) -> Path | None:
    """Rename an earlier version's `<output stem>.failures.jsonl` to the sidecar's name, so a re-run
    still knows which prompts were rejected (and never re-sends them). Returns the old path if moved."""
    legacy = output.with_name(f"{output.stem}.failures.jsonl")
    if sidecar == output.with_name(f"{output.name}.failures") and legacy.is_file() and not sidecar.exists():
        os.rename(legacy, sidecar)
        return legacy
    return None


@dataclass
class CollectPlan:
    """One collect run: conf/collect.yaml (every key documented there) with its teacher group (conf/teacher/).
    Derived: `output_path`, `failures_path` (the sidecar), `detector` (the refusal filter)."""

    prompts: str
    system_prompt: Optional[str]
    system_prompt_tokenizer: Optional[str]
    prompts_split: str
    limit: Optional[int]
    output: str
    failures: Optional[str]
    retry_rejected: bool
    keep_truncated: bool
    refusal: RefusalConfig
    abort_after_failures: int
    fsync_interval_s: float
    progress: bool
    teacher: TeacherConfig
    teachers: list[Any] = dataclasses.field(default_factory=list)  # resolved by plan_from_config

    def __post_init__(self) -> None:
        prompts = Path(self.prompts)
        require(prompts.exists() or _looks_like_hub_id(self.prompts), "prompts", self.prompts, "no such file or folder")
        self.output_path = Path(self.output)
        require(self.output_path.suffix == ".jsonl", "output", self.output, "must be a .jsonl file")
        same = prompts.exists() and self.output_path.exists() and self.output_path.resolve() == prompts.resolve()
        require(not same, "output", self.output, "must differ from prompts")
        require(
            not (self.failures and _dump_suffix(self.failures)),
            "failures",
            self.failures,
            "a dump suffix, so a data folder holding it would train on the refusals it lists; "
            "use a name ending in .failures",
        )
        self.failures_path = sidecar_path(self.output_path, self.failures)
        require(self.limit is None or self.limit >= 1, "limit", self.limit, "must be >= 1 (null = all)")
        require(self.abort_after_failures >= 0, "abort_after_failures", self.abort_after_failures, "must be >= 0")
        require(
            finite(self.fsync_interval_s) and self.fsync_interval_s >= 0,
            "fsync_interval_s",
            self.fsync_interval_s,
            "must be >= 0",
        )
        self.detector = self.refusal.detector()
        self.endpoints: list[TeacherConfig] = [self.teacher]  # `teachers=[..]` replaces it (plan_from_config)

    @property
    def client(self) -> ClientSettings:
        """The connection side of the (first) teacher config."""
        return self.teacher


def plan_from_config(cfg: Any) -> CollectPlan:
    """Check every config value up front; each problem is one line naming its key."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    if not isinstance(cfg.get("teacher"), DictConfig):
        raise GADError("teacher config group is missing (teacher=openai or teacher=vllm)")
    # the run folder's keys (paths, hydra: they only resolve inside a Hydra run) are not collect's
    plan = typed(CollectPlan, OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ENTRY_ONLY]), "")
    if plan.teachers:
        plan.endpoints = [_teacher_entry(entry, i) for i, entry in enumerate(plan.teachers)]
        plan.teacher = plan.endpoints[0]
        labels = [t.label for t in plan.endpoints]
        for label in labels:
            if labels.count(label) > 1:
                raise GADError(
                    f"teachers: two entries write teacher '{label}': give each its own `name` "
                    "(e.g. teachers=[{preset: vllm, name: qwen-a}, ...])"
                )
    return _with_policy(plan)


def teacher_preset_dir() -> Path:
    """conf/teacher/ of the checkout (PROJECT_ROOT, set by the entry scripts, else this package's checkout)."""
    root = os.environ.get("PROJECT_ROOT") or str(Path(__file__).resolve().parents[4])
    return Path(root) / "conf" / "teacher"


def _teacher_entry(entry: Any, i: int) -> TeacherConfig:
    """One entry of `teachers`: a preset name of conf/teacher/, a path to a YAML file with the same keys,
    or a mapping {preset: <name or path>, <key>: <value>, ...} overriding some of the preset's keys."""
    where = f"teachers[{i}]"
    overrides: dict[str, Any] = {}
    if isinstance(entry, (dict, DictConfig)):
        overrides = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)
        preset = overrides.pop("preset", None)
        if not isinstance(preset, str) or not preset:
            raise GADError(f"{where}.preset: required (a preset of conf/teacher/ or a YAML file)")
        where_preset = f"{where}.preset"
    elif isinstance(entry, str) and entry:
        preset, where_preset = entry, where
    else:
        raise GADError(f"{where}={entry} is invalid: must be a preset name, a YAML file or {{preset: ..., key: value}}")
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = teacher_preset_dir() / f"{preset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in teacher_preset_dir().glob("*.yaml")))
        raise GADError(f"{where_preset}={preset} is invalid: no such preset (known: {known}) or YAML file")
    try:
        node = OmegaConf.merge(OmegaConf.load(path), overrides)
    except Exception as err:  # a YAML or merge error: one line naming the entry
        raise GADError(f"{where}: cannot read {path} ({' '.join(str(err).split())[:200]})") from None
    return typed(TeacherConfig, node, where)


def _with_policy(plan: CollectPlan) -> CollectPlan:
    """`plan` whose teachers send the system prompt that `system_prompt` sends (gad.chat; training's
    data.system_prompt)."""
    policy = plan.system_prompt or NONE
    if policy == NONE:
        return plan  # (teacher.system_prompt, if set, is the explicit text)
    for t in plan.endpoints:
        if t.system_prompt:
            raise GADError(f"teacher.system_prompt ({t.label}) and system_prompt={policy} are both set: keep one")
    tokenizer = None
    if policy == TEMPLATE_DEFAULT:
        from transformers import AutoTokenizer

        path = plan.system_prompt_tokenizer
        if not path:
            raise GADError(
                "system_prompt=template_default needs system_prompt_tokenizer=<the student's tokenizer folder or hub id>"
            )
        from gad.remote_code import refuse_remote_code

        refuse_remote_code(str(path), "system_prompt_tokenizer")  # and trust_remote_code=False: never asked
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise GADError(f"system_prompt_tokenizer: cannot load '{path}' ({type(err).__name__})") from None
    sent = system_prompt_sent(policy, tokenizer)
    plan.endpoints = [dataclasses.replace(t, system_prompt=sent) for t in plan.endpoints]
    plan.teacher = plan.endpoints[0]
    return plan

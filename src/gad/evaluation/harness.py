"""lm-evaluation-harness beside the judge: standard benchmarks on every model of `models`
(`harness.tasks=[gsm8k,mmlu]`, docs/eval.md), through its Python API on the model eval already loaded.

    harness = harness_for(cfg, models)            # names checked, offline refusals: before any model loads
    score(models, sets, cfg, harness=harness)     # per model, in its turn: harness.run_model(...)
    harness.rows / harness.samples                # gad.evaluation.harness_report writes them

Each (model, task) is one `lm_eval.simple_evaluate` call on an `HFLM` wrapping the loaded model and the
spec's tokenizer; generative tasks see the model's chat template under `generation.system_prompt`
(gad.chat), per `harness.chat_template`. Results are cached per (model fingerprint, task, what changes the
numbers) in `<cache_dir>/harness/<fingerprint>.jsonl`, a `gad.api.Journal` (append-only, one line per
finished pair), with the per-document outputs in `<cache_dir>/harness/samples/<key>.jsonl`, written first:
a repeated or interrupted evaluation recomputes only the pairs that never finished. A task that fails
is reported and left out of the cache; the other tasks' results stand.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gad.api.journal import Journal
from gad.config.typed import typed
from gad.errors import GADError, one_line
from gad.evaluation.config import GenerationParams, HarnessParams, SelectConfig, harness_metric
from gad.evaluation.keys import sha
from gad.evaluation.model_specs import ModelSpec

INSTALL = 'pip install -e ".[harness]"'
GENERATIVE = "generate_until"


@dataclass
class HarnessStats:
    computed: int = 0
    cached: int = 0
    models_loaded: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"new": self.computed, "cached": self.cached, "models_loaded": self.models_loaded}


def harness_for(cfg: DictConfig, models: dict[str, ModelSpec]) -> Harness | None:
    """The configured harness tasks, checked (names, offline availability), or None when there are none."""
    params = typed(HarnessParams, cfg.harness, "harness") if cfg.get("harness") is not None else None
    tasks = list(params.tasks) if params else []
    if cfg.select.get("run"):  # a harness metric to select by runs its task too
        picked = harness_metric(typed(SelectConfig, cfg.select, "select").metric)
        if picked and picked[0] not in tasks:
            tasks.append(picked[0])
    if not tasks:
        return None
    if params is None:
        raise GADError("select.metric: a harness metric needs the harness knobs of conf/eval.yaml")
    harness = Harness(cfg, params, tasks, models)
    harness.prepare()
    return harness


class Harness:
    def __init__(self, cfg: DictConfig, params: HarnessParams, tasks: list[str], models: dict[str, ModelSpec]):
        self.params, self.tasks, self.models = params, list(dict.fromkeys(str(t).strip() for t in tasks)), models
        self.gen = typed(GenerationParams, cfg.generation, "generation")
        self.limit = params.limit if params.limit is not None else cfg.get("limit")
        self.batch_size = params.batch_size or self.gen.batch_size
        self.include_path = str(Path(params.include_path).expanduser().resolve()) if params.include_path else None
        self.cache = Path(cfg.cache_dir) / "harness"
        self.verbose = bool(cfg.get("verbose", False))
        self.rows: list[dict[str, Any]] = []  # one per (model, task or subtask, metric)
        self.samples: dict[tuple[str, str], Path] = {}  # (model, task) -> per-document outputs
        self.failures: list[dict[str, str]] = []
        self.stats = HarnessStats()
        self.manager = None
        self.version = ""

    # --------------------------------------------------------------------------------- before any model
    def prepare(self) -> None:
        """Import lm-eval, index the tasks, refuse unknown names and (offline) uncached hub datasets."""
        try:
            import lm_eval
            from lm_eval.tasks import TaskManager
        except ImportError:
            raise GADError(f"harness.tasks needs lm-evaluation-harness: {INSTALL}") from None
        quiet(self.verbose)
        self.version = lm_eval.__version__
        if self.include_path and not Path(self.include_path).is_dir():
            raise GADError(f"harness.include_path: {self.include_path} is not a folder")
        manager = None
        if self.include_path:  # local tasks only: no need to index the ~15k built-in names (~7 s)
            local = TaskManager(include_path=self.include_path, include_defaults=False)
            if all(t in local.task_index for t in self.tasks):
                manager = local
        self.manager = manager or TaskManager(include_path=self.include_path)
        index = self.manager.task_index
        for name in self.tasks:
            if name not in index:
                raise GADError(unknown_task(name, list(index), self.include_path))
        if _offline():
            self._check_offline()

    def _check_offline(self) -> None:
        """With HF_HUB_OFFLINE=1, every hub dataset the tasks read must be in the local cache: one line naming
        the tasks and the datasets missing, now, before a model loads (read off the index: importing a task's
        code can already reach for the network, IFEval's NLTK download)."""
        missing: dict[str, list[str]] = {}
        for name in self.tasks:
            for cfg in self._leaves(name, set()):
                path = cfg.get("dataset_path")
                if cfg.get("custom_dataset") or not path or not _hub_id(str(path)) or _dataset_cached(str(path)):
                    continue
                if str(path) not in missing.setdefault(name, []):
                    missing[name].append(str(path))
        if missing:
            what = ", ".join(f"'{t}' needs {' '.join(d)}" for t, d in missing.items())
            raise GADError(
                f"harness.tasks: hub datasets not in the local cache, and HF_HUB_OFFLINE=1: {what}; run the same "
                "command once with hub access (HF_HUB_OFFLINE unset) to download them into the Hugging Face cache"
            )

    # ------------------------------------------------------------------------------------ cache keys
    def chat(self, name: str) -> bool:
        mode = self.params.chat_template
        return mode == "always" or (mode == "generative" and GENERATIVE in self._output_types(name))

    def _output_types(self, name: str) -> set[str]:
        return {str(cfg.get("output_type")) for cfg in self._leaves(name, set())}

    def _leaves(self, name: str, seen: set[str]) -> list[dict[str, Any]]:
        """The configs of a task, group or tag's leaf tasks, read off the index (no task code, no dataset)."""
        if name in seen:
            return []
        seen.add(name)
        index = self.manager.task_index
        entry = index.get(name)
        if entry is None:
            return []
        cfg = entry.cfg or {}
        kind = getattr(entry.kind, "name", str(entry.kind))
        if kind == "GROUP":
            children = cfg.get("task") or []
        elif kind == "TAG":
            children = [n for n, e in index.items() if name in (getattr(e, "tags", None) or ())]
        else:
            return [cfg]
        out: list[dict[str, Any]] = []
        for child in children if isinstance(children, list) else [children]:
            if isinstance(child, dict):  # a task written inline in its group
                out += [child] if child.get("output_type") else self._leaves(str(child.get("task")), seen)
            else:
                out += self._leaves(str(child), seen)
        return out

    def _task_identity(self, name: str) -> Any:
        """What defines a task's documents and scoring: its config, and for a local task the files of its
        folder and the files its dataset_kwargs name (e.g. data/toy/test_id.jsonl)."""
        entry = self.manager.task_index[name]
        parts: list[Any] = [json.loads(json.dumps(entry.cfg or {}, sort_keys=True, default=str))]
        yaml_path = getattr(entry, "yaml_path", None)
        if yaml_path and self.include_path and Path(yaml_path).resolve().is_relative_to(self.include_path):
            folder = Path(yaml_path).resolve().parent
            files = [f for f in sorted(folder.iterdir()) if f.is_file()]
            for value in ((entry.cfg or {}).get("dataset_kwargs") or {}).values():
                if isinstance(value, str) and (folder / value).is_file():
                    files.append((folder / value).resolve())
            parts.append(
                {
                    str(f.relative_to(folder.parent) if f.is_relative_to(folder.parent) else f): _file_sha(f)
                    for f in files
                }
            )
        return parts

    def key(self, spec: ModelSpec, name: str, template: str) -> str:
        """The cache key of (model, task): what changes the numbers (batch size does not)."""
        chat = self.chat(name)
        parts = {
            "model": spec.fingerprint,
            "task": name,
            "identity": self._task_identity(name),
            "lm_eval": self.version,
            "limit": self.limit,
            "num_fewshot": self.params.num_fewshot,
            "bootstrap_iters": self.params.bootstrap_iters,
            "chat": chat,
            "system_prompt": self.gen.system_prompt if chat else None,
            "template": template if chat else None,  # the rendered prompts depend on the chat template
        }
        return "harness:" + sha(parts)[:40]

    # ------------------------------------------------------------------------------------- per model
    def run_model(self, name: str, spec: ModelSpec, tokenizer, load_model, console=None) -> None:
        """Every task on one model (`load_model()` gives the loaded model; called only when a task is not cached)."""
        template = template_sha(tokenizer)
        lm = None
        with Journal(self.cache / f"{spec.fingerprint}.jsonl", fsync_interval_s=0) as journal:
            done = {r["id"]: r for r in journal.records()}
            for task in self.tasks:
                key = self.key(spec, task, template)
                record = done.get(key)
                if record is None:
                    if lm is None:
                        lm = self._lm(load_model(), tokenizer)
                        self.stats.models_loaded.append(name)
                    if console is not None:
                        console.print(f"[dim]harness: {name} / {task}[/dim]")
                    try:
                        record = self._evaluate(lm, task, key)
                    except Exception as err:  # one task's failure keeps the others' results (Ctrl-C still stops)
                        message = one_line(err) or type(err).__name__
                        self.failures.append({"model": name, "task": task, "error": message})
                        if console is not None:
                            console.print(f"[red]harness: {name} / {task} failed: {message}[/red]")
                        continue
                    journal.append(record)
                    self.stats.computed += 1
                else:
                    self.stats.cached += 1
                for row in record["rows"]:
                    self.rows.append({"model": name, "spec": spec.spec, **row, "requested": row["task"] == task})
                samples = self.cache / "samples" / f"{key.split(':', 1)[1]}.jsonl"
                if samples.exists():
                    self.samples[(name, task)] = samples

    def _lm(self, model, tokenizer):
        from gad.evaluation.harness_lm import policy_lm

        return policy_lm(model, tokenizer, self.gen.system_prompt, self.batch_size, progress=self.verbose)

    def _evaluate(self, lm, task: str, key: str) -> dict[str, Any]:
        from lm_eval import simple_evaluate

        chat = self.chat(task)
        results = simple_evaluate(
            model=lm,
            tasks=[task],
            task_manager=self.manager,
            num_fewshot=self.params.num_fewshot,
            limit=self.limit,
            bootstrap_iters=self.params.bootstrap_iters,
            apply_chat_template=chat,
            fewshot_as_multiturn=chat,
            log_samples=True,
        )
        path = self.cache / "samples" / f"{key.split(':', 1)[1]}.jsonl"
        _write_samples(path, results.get("samples") or {})  # before the journal line that says the pair is done
        return {"id": key, "task": task, "rows": result_rows(results), "lm_eval": self.version}

    # ------------------------------------------------------------------------------------ read-back
    def value(self, model: str, task: str, metric: str) -> float | None:
        """A requested task's metric (`metric` or `metric,filter`) of one model, for select.metric."""
        for row in self.rows:
            if (
                row["model"] == model
                and row["task"] == task
                and metric in (row["metric"], f"{row['metric']},{row['filter']}")
            ):
                return row["value"]
        return None

    def higher_is_better(self, task: str, metric: str) -> bool:
        for row in self.rows:
            if row["task"] == task and metric in (row["metric"], f"{row['metric']},{row['filter']}"):
                return row.get("higher_is_better") is not False
        return True


def unknown_task(name: str, known: list[str], include_path: str | None) -> str:
    """The one line for a task name lm-eval does not know, with the close names it does."""
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else "; see `lm_eval ls tasks`"
    where = f" (built-in or in {include_path})" if include_path else ""
    return f"harness.tasks: no task, group or tag named '{name}'{where}{hint}"


def template_sha(tokenizer) -> str:
    return sha(str(getattr(tokenizer, "chat_template", "")))[:16]


def result_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task or group, metric, filter) of a `simple_evaluate` result, with its stderr."""
    rows = []
    better = results.get("higher_is_better") or {}
    counts = results.get("n-samples") or {}
    for task, metrics in (results.get("results") or {}).items():
        n = (counts.get(task) or {}).get("effective")
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "task": task,
                    "alias": str(metrics.get("alias", task)).strip(" -"),
                    "metric": metric,
                    "filter": filt,
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                    "n": n,
                    "higher_is_better": (better.get(task) or {}).get(metric),
                }
            )
    return rows


def _write_samples(path: Path, samples: dict[str, list[dict[str, Any]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        for task, docs in samples.items():
            for doc in docs:
                fh.write(json.dumps({"task": task, **doc}, ensure_ascii=False, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_id(path: str) -> bool:
    """A hub dataset id (owner/name or name), not a datasets builder ("json") or a local path."""
    return path not in LOCAL_BUILDERS and not Path(path).expanduser().exists() and not path.startswith((".", "/", "~"))


LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder", "webdataset"}


def _dataset_cached(repo_id: str) -> bool:
    """Whether the datasets library can load `repo_id` offline: its files in the hub cache, or its prepared
    Arrow files in the datasets cache (<owner>___<name>)."""
    import datasets.config
    from huggingface_hub.constants import HF_HUB_CACHE

    if (Path(datasets.config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")).is_dir():
        return True
    snapshots = Path(HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def quiet(verbose: bool) -> None:
    """lm-eval logs its progress and by-design notices of this integration (a pre-loaded model, a task's own
    dataset function) at INFO and WARNING on its own logger: only its errors show, unless verbose=true.
    Its tqdm bars follow gad.console.quiet_raw_bars (TQDM_DISABLE)."""
    logging.getLogger("lm_eval").setLevel(logging.INFO if verbose else logging.ERROR)

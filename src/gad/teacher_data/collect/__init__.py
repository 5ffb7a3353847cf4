"""Collect black-box teacher responses: one canonical record per prompt, nothing lost, nothing twice.

`collect(cfg)` is the body of `python src/collect.py` (config: conf/collect.yaml, conf/teacher/).
It reads the prompts (canonical records, `read_records`), skips what the output and its sidecar
already hold, sends the rest through one long-lived client (`gad.api`) with at most
`teacher.concurrency` requests in flight, and journals each outcome the moment it is known:

  output   <output>                       one canonical record per answered prompt:
           {id, messages, response, teacher, meta: {..prompt meta, finish_reason, usage}}
  sidecar  <output>.failures              one line per prompt that has no usable answer (JSONL; not a
                                          dump suffix, so a data folder never trains on it):
           {id, status: rejected|failed, reason, detail, attempts, response?, messages, time}

rejected = refusal (pattern or the API's `refusal` field), content_filter, truncated
           (finish_reason "length", unless keep_truncated), invalid_request (400/422).
           Not re-sent by a re-run unless `retry_rejected=true`.
failed   = timeout, connection, rate_limited, server_error, malformed, empty, after the
           client's retries. A re-run sends them again.
A rejected key, an exhausted quota or an unknown model stops the run at once (exit 2, one line).

Exit status: 0 when every prompt is answered or rejected; 3 when some are still missing
(failed, or never sent): re-run the same command to send exactly those.

Modules by job: `refusals` (spotting a refusal in a reply), `config` (the typed config and the plan
it resolves to: paths, sidecar, teacher, refusal policy), `run` (the per-prompt work and the run).
"""

from gad.teacher_data.collect.config import CollectPlan, RefusalConfig, TeacherConfig, plan_from_config, sidecar_path
from gad.teacher_data.collect.refusals import DEFAULT_REFUSAL_PATTERNS, RefusalDetector
from gad.teacher_data.collect.run import EXIT_MISSING, collect, make_work

__all__ = [
    "DEFAULT_REFUSAL_PATTERNS",
    "EXIT_MISSING",
    "CollectPlan",
    "RefusalConfig",
    "RefusalDetector",
    "TeacherConfig",
    "collect",
    "make_work",
    "plan_from_config",
    "sidecar_path",
]

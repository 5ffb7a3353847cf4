"""Hydra callback (conf/hydra/default.yaml, listed first): refuses a composed config that holds a secret
before Hydra writes anything (the run folder, .hydra/config.yaml, hydra.yaml, overrides.yaml).

The command line is checked earlier (gad.errors.refuse_secrets, in run_cli); this catches what only the
composed config shows: an `api_key:` line in a `--config-dir` preset, a `base_url` with `user:password@`
in a config file, a secret set through `hydra.job.env_set`. One `error:` line and exit 2, never the value.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gad.errors import EXIT_USER_ERROR, GADError, one_line, refuse_config_secrets


def _refuse(config: DictConfig) -> None:
    try:
        refuse_config_secrets(config)
    except GADError as err:  # printed here: raised, Hydra would report it as a failed sweep job
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


class SecretsCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse(config)

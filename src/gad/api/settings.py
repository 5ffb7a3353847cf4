"""How to reach one OpenAI-compatible endpoint, and where its key comes from.

`ClientSettings` is the connection part of a teacher config (conf/teacher/*.yaml) or a judge
config (conf/judge/*.yaml); each knob's default and documentation live there. The config holds
the NAME of the environment variable with the key (`api_key_env`), never the key:

    settings = typed(TeacherConfig, cfg.teacher, "teacher")  # a ClientSettings subclass; errors name the key
    key = api_key_from_env(settings, "teacher")              # reads the env var NAMED in the config
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from gad.config.typed import finite, require
from gad.errors import GADError, url_has_credentials

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
PLACEHOLDER_KEY = "EMPTY"  # what keyless local servers (vLLM without --api-key) are sent
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEYLIKE = re.compile(r"\b(?:sk|rk|pk|key)-[A-Za-z0-9_\-*.]{4,}")


@dataclass
class ClientSettings:
    """The connection keys of an endpoint (documented in conf/teacher/openai.yaml). Holds the env var
    NAME, never the key. `base_url` None: https://api.openai.com/v1 (or $OPENAI_BASE_URL)."""

    base_url: Optional[str]
    api_key_env: str
    require_api_key: bool
    timeout_s: float  # per attempt
    connect_timeout_s: float
    max_retries: int
    backoff_initial_s: float
    backoff_max_s: float
    http_backend: str  # aiohttp (half the CPU per request) or httpx (the SDK's default)

    def __post_init__(self) -> None:
        base_url = self.base_url.strip() if self.base_url is not None else None
        require(
            base_url is None or bool(re.match(r"^https?://[^\s/]+", base_url)),
            "base_url",
            base_url,
            "must be an http(s) URL such as http://127.0.0.1:8000/v1",
        )
        require(  # never echoed: the password would reach the error line
            not url_has_credentials(base_url),
            "base_url",
            None,
            "must not carry credentials (user:password@): put the key in the environment variable named by api_key_env",
        )
        self.base_url = base_url or None
        env = self.api_key_env
        # never echo the value (None: the message leaves it out): it may be the key itself
        require(
            not KEYLIKE.search(env) and (not env or bool(ENV_NAME.match(env))),
            "api_key_env",
            None,
            "must be the NAME of an environment variable (like OPENAI_API_KEY), not a key",
        )
        require(bool(env), "api_key_env", env, "must name an environment variable")
        for name in ("timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            require(finite(value) and value > 0, name, value, "must be a finite number > 0")
        require(self.max_retries >= 0, "max_retries", self.max_retries, "must be >= 0")
        for name in ("backoff_initial_s", "backoff_max_s"):
            value = getattr(self, name)
            require(finite(value) and value >= 0, name, value, "must be a finite number >= 0")
        require(
            self.backoff_max_s >= self.backoff_initial_s,
            "backoff_max_s",
            self.backoff_max_s,
            "must be >= backoff_initial_s",
        )
        backend = self.http_backend
        require(backend in ("aiohttp", "httpx"), "http_backend", backend, "must be aiohttp or httpx")


def api_key_from_env(settings: ClientSettings, where: str = "") -> str:
    """The API key from the environment variable the settings name; `GADError` if it is required and unset.
    `where` is the settings' key in the config (`teacher`, `judge`), for the message."""
    key = os.environ.get(settings.api_key_env, "").strip()
    if key:
        return key
    if settings.require_api_key:
        at = f"{where}." if where else ""
        raise GADError(
            f"environment variable {settings.api_key_env} is not set: it must hold the API key "
            f"({at}api_key_env names the variable; {at}require_api_key=false for a keyless local server)"
        )
    return PLACEHOLDER_KEY

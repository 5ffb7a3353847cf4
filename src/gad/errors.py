"""User-facing errors: one clear line, a non-zero exit, no traceback.

Anything the user can fix (a bad config value, a malformed dump, a model that cannot be
downloaded) raises `GADError` with a message that names *what* is wrong and *where*
(config key, or file and row). Entry scripts wrap their body in `exit_on_user_error`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by SIGINT (128 + 2)


class GADError(Exception):
    """An error caused by input the user controls; its message is shown as a single line."""


# Control characters (C0, DEL, C1: ESC, CSI, BEL, CR, backspace...) and the bidirectional overrides:
# from a server's error body or a dump's ids they could clear the screen, retitle the window or hide text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def one_line(message: object) -> str:
    """`message` as one line of plain printable text: line breaks and control characters become
    single spaces (printable unicode is kept). Everything shown as an error goes through here."""
    return " ".join(_CONTROL.sub(" ", str(message)).split())


def terminal_text(text: object) -> str:
    """`text` with line breaks and tabs kept but every other control character dropped: for
    multi-line text from outside (a server, a dump) printed to the terminal."""
    return _CONTROL.sub(lambda m: m.group() if m.group() in "\n\t" else "", str(text))


def user_error(err: BaseException | None) -> GADError | None:
    """The `GADError` behind `err`, if any (Hydra's `instantiate` wraps what targets raise)."""
    while err is not None:
        if isinstance(err, GADError):
            return err
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a `GADError` (raised directly or wrapped), or a full disk, into `error: <message>` on stderr and exit
    status 2."""
    try:
        yield
    except Exception as err:
        found = user_error(err) or unplaced_full_disk(err)
        if found is None:
            raise
        print(f"error: {one_line(found)}", file=sys.stderr, flush=True)
        if _in_multirun():
            raise  # Hydra records this job as failed and goes on with the sweep
        sys.exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def exit_on_interrupt(kept: str) -> Iterator[None]:
    """Turn Ctrl-C (KeyboardInterrupt) into `error: interrupted ...` and exit status 130, instead of
    a traceback. `kept` says what survived (the code inside closes its files on the way out)."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"error: interrupted (Ctrl-C); {kept}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)


# A full disk, a quota, a file-size limit (`ulimit -f`): the user frees space or writes elsewhere, then resumes.
_OUT_OF_SPACE = {  # errno: (what happened, what to do; {} is the config key that moves the files)
    errno.ENOSPC: ("no space left on device", "free space or point {} elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota or point {} elsewhere"),
    errno.EFBIG: ("file too large", "raise the file-size limit (ulimit -f) or point {} at another filesystem"),
}
# Rust-backed writers (safetensors' SafetensorError, tokenizers) raise no OSError: the errno is only in the text
_RUST_IO_ERROR = re.compile(r"\(os error (\d+)\)")


def _full_disk(err: BaseException | None) -> tuple[BaseException, int] | None:
    """The exception in `err`'s chain (causes and contexts) that says the disk, a quota or a file-size limit is
    full, with its errno (torch.save turns a failed write into a RuntimeError whose context is the OSError)."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _OUT_OF_SPACE:
            return err, err.errno
        found = _RUST_IO_ERROR.search(str(err)) if not isinstance(err, OSError) else None
        if found and int(found.group(1)) in _OUT_OF_SPACE:
            return err, int(found.group(1))
        todo += [err.__cause__, err.__context__]
    return None


def out_of_space(err: BaseException | None) -> int | None:
    """The errno (ENOSPC, EDQUOT or EFBIG) of a full disk, quota or file-size limit anywhere in `err`'s chain, or None."""
    found = _full_disk(err)
    return None if found is None else found[1]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_space(path: str | os.PathLike) -> str:
    """'<n> free on its filesystem' for the nearest existing folder above `path` (a failed write may have removed it)."""
    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return f"{_size(shutil.disk_usage(where).free)} free on its filesystem"
    except OSError:
        return "free space unknown"


def _full_disk_message(path: object, code: int, setting: str, then: str) -> str:
    what, remedy = _OUT_OF_SPACE[code]
    return f"cannot write {path}: {what} ({free_space(path)}); {remedy.format(setting)}, then {then}"


@contextlib.contextmanager
def writing(
    path: str | os.PathLike, resume: str | os.PathLike | None = None, setting: str = "paths.log_dir"
) -> Iterator[None]:
    """Turn a full disk, quota or file-size limit while the block writes `path` into one `GADError` line naming
    it, the space left there and what to do: free space (or point `setting` elsewhere), then resume from
    `resume` (a checkpoint) if it exists, else run again. Other errors pass unchanged. The block cleans up
    after itself (temporary files); this only says what happened."""
    try:
        yield
    except Exception as err:
        code = out_of_space(err)
        if code is None or user_error(err) is not None:
            raise
        then = f"resume with ckpt_path={resume}" if resume is not None and os.path.exists(resume) else "run again"
        raise GADError(_full_disk_message(path, code, setting, then)) from err


def unplaced_full_disk(err: BaseException | None) -> GADError | None:
    """A full disk in a write no `writing` block covers (a log line, metrics.csv) as a `GADError` too, naming the
    file the OSError names: the big writes (checkpoints, the export) say more, but none ends in a traceback."""
    found = _full_disk(err)
    if found is None:
        return None
    what, remedy = _OUT_OF_SPACE[found[1]]
    path = getattr(found[0], "filename", None)
    then = "run again, or resume a training run with ckpt_path=<its checkpoints/last.ckpt>"
    if path is None:
        return GADError(f"a write failed: {what}; {remedy.format('paths.log_dir')}, then {then}")
    return GADError(_full_disk_message(path, found[1], "paths.log_dir", then))


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# ------------------------------------------------------------------------------------- secrets
# Shapes of real API keys and tokens: OpenAI/Anthropic-style sk-..., restricted/publishable rk-/pk-,
# Hugging Face hf_... (long enough that a file or model name is not taken for one).
_KEY_SHAPED = re.compile(r"(?<![A-Za-z0-9])(?:(?:sk|rk|pk)-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{30,})")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# A knob that holds a secret by its name (any case): api_key, OPENAI_API_KEY, apikey, password, hf_token, ...
# (not `require_api_key`: its values are booleans, and a boolean or null is never a secret).
_SECRET_NAME = re.compile(r"(?:api_?key|password|passwd|secret|(?:access|auth|api|hf)_?token)$", re.IGNORECASE)
# An environment variable that holds one, set through hydra.job.env_set.<VAR>
# (a whole `_`-separated word: OPENAI_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY; not TOKENIZERS_PARALLELISM)
_SECRET_ENV = re.compile(r"(?:^|_)(?:KEY|APIKEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(?:_|$)", re.IGNORECASE)
# A URL with credentials in it: scheme://user:password@host or scheme://token@host
_URL_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\s@]*@")
_NOT_A_SECRET = {"", "true", "false", "null", "none", "~"}


def url_has_credentials(text: object) -> bool:
    """Whether `text` holds a URL with `user:password@` (or `token@`) in it."""
    return isinstance(text, str) and bool(_URL_CREDENTIALS.search(text))


def secret_problem(key: str, value: object, where: str = "on the command line") -> str | None:
    """Why `key=value` (a command-line override or a composed config's entry, `where` saying which) would
    put a secret into the run's saved config (.hydra/, config.yaml), or None. Never echoes the value."""
    if not isinstance(value, str) or value.strip(" '\"").lower() in _NOT_A_SECRET:
        return None
    key = key.lstrip("+~")
    section, _, leaf = key.rpartition(".")
    saved = "values given " + where + " are saved in the run's .hydra/ files"
    reference = value.lstrip().startswith("${") and value.rstrip().endswith("}") and value.count("${") == 1
    if reference and not _KEY_SHAPED.search(value):
        return None  # an interpolation (${oc.env:VAR}): the saved config holds the reference, not the secret
    if section.lower().endswith("env_set"):
        if _SECRET_ENV.search(leaf) or _KEY_SHAPED.search(value):
            return f"{key}: a secret is never set {where}: set the environment variable {leaf} in the shell instead ({saved})"
        return None
    knob = (
        f"{section}.api_key_env"
        if section and (_SECRET_NAME.search(leaf) or leaf.lower().endswith("api_key_env") or "url" in leaf.lower())
        else "teacher.api_key_env (judge.api_key_env for the judge)"
    )
    advice = f"put the key in an environment variable and name that variable with {knob} ({saved})"
    if leaf.lower().endswith("api_key_env"):
        names = [v.strip(" '\"") for v in value.split(",") if v.strip(" '\"")]
        if all(_ENV_NAME.match(v) for v in names):
            return None
        return f"{key} must be the NAME of an environment variable (like OPENAI_API_KEY), not a key: {advice}"
    if _SECRET_NAME.search(leaf):
        return f"{key}: an API key is never given {where}: {advice}"
    if url_has_credentials(value):
        return f"{key}: a URL with credentials in it (user:password@) is never given {where}: {advice}"
    if _KEY_SHAPED.search(value):
        return f"{key}: the value looks like an API key, which is never given {where}: {advice}"
    return None


def refuse_secrets(overrides: Sequence[str]) -> None:
    """`GADError` for a command-line override that carries an API key: Hydra saves every override
    in the run's .hydra/ files (and config.yaml), so a key must come from the environment.

    Refused (`secret_problem`): a knob named like a secret (`...api_key=`, any case, with or without `+`),
    an `...api_key_env=` value that is not an environment variable's name, a secret-named variable set
    through `hydra.job.env_set.<VAR>=`, a URL with `user:password@`, and any value shaped like a key.
    The key itself is never echoed."""
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        problem = secret_problem(key, value)
        if problem:
            raise GADError(problem)


def refuse_config_secrets(cfg: object) -> None:
    """`GADError` for a secret anywhere in a composed config (a `--config-dir` preset with an `api_key:`
    line, a `base_url` with a password, an env_set of a key): the same rules as `refuse_secrets`, on every
    entry, unresolved (an `${oc.env:...}` reference is fine: the saved config keeps the reference)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, (DictConfig, ListConfig)) else cfg

    def walk(node: object, path: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for name, value in items:
            key = f"{path}.{name}" if path else str(name)
            if path == "hydra.overrides":
                continue  # the override strings themselves: refuse_secrets has read them
            problem = secret_problem(key, value, "in a config")
            if problem:
                raise GADError(problem)
            walk(value, key)

    walk(tree, "")

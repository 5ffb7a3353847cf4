"""A model or tokenizer folder never runs its own code.

A Hugging Face folder can name Python files of its own in `auto_map` (config.json, tokenizer_config.json):
transformers then asks "Do you wish to run the custom code? [y/N]" on the terminal (and runs it on `y`),
or runs it outright with `trust_remote_code=True`. This project loads every model and tokenizer with
`trust_remote_code=False` (never asked, never run) and, before that, refuses a folder whose files carry an
`auto_map` with one line naming the file, so a received folder is refused for what it is rather than
for the ValueError transformers raises deep in its loader.

Checked: a local folder's files; for a hub id, the copies already in the local Hugging Face cache (a
download is checked by transformers itself, with `trust_remote_code=False`).
"""

from __future__ import annotations

import json
from pathlib import Path

from gad.errors import GADError

# The files whose `auto_map` makes transformers import a module of the folder's own.
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
_MAX_CONFIG_BYTES = 16 << 20  # a config is kilobytes; a larger one is left to transformers (which refuses it)


def _candidates(name_or_path: str | Path) -> list[Path]:
    path = Path(name_or_path)
    if path.is_dir():
        return [path / name for name in AUTO_MAP_FILES]
    if path.exists() or str(name_or_path).count("/") > 1:
        return []  # a file (a GGUF), or a path that is no hub id
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover (a dependency of transformers)
        return []
    found = []
    for name in AUTO_MAP_FILES:
        try:
            cached = try_to_load_from_cache(str(name_or_path), name)
        except Exception:  # not a valid repo id: transformers says so
            return []
        if isinstance(cached, str):
            found.append(Path(cached))
    return found


def refuse_remote_code(name_or_path: str | Path | None, key: str = "") -> None:
    """`GADError` when the model or tokenizer folder `name_or_path` (or a hub id's cached files) names code of
    its own in `auto_map`. `key`: the config key that named it, for the message."""
    if name_or_path is None:
        return
    for file in _candidates(name_or_path):
        try:
            if not file.is_file() or file.stat().st_size > _MAX_CONFIG_BYTES:
                continue
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # unreadable or not JSON: transformers refuses it, with trust_remote_code=False
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            names = sorted(auto_map) if isinstance(auto_map, dict) else [str(auto_map)[:80]]
            where = f"{key}: " if key else ""
            raise GADError(
                f"{where}{file} has an auto_map ({', '.join(map(str, names))[:120]}): the model's own Python code, "
                "which this project never runs (trust_remote_code); use a model transformers supports, or delete "
                "auto_map from that file to load it with transformers' own class for its model_type"
            )

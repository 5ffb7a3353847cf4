"""What a run prints, and where: one console policy, applied by the entry scripts.

- Everything a person reads (tables, the progress bar, the run folder) goes to stdout through
  one rich `Console` (`console()`); errors stay on stderr (`gad.errors`).
- Piped or redirected (a file, a cluster log), that console is wide, so no table cell is cut.
- `quiet_libraries()` turns off the progress bars and info chatter of the libraries underneath
  (datasets, transformers, huggingface_hub, Lightning) unless `verbose=true`, and `quiet_raw_bars()`
  the tqdm bars no library switch reaches; their warnings stay visible, since a warning caused by
  our own calls is a bug to fix, not to hide.

Nothing here acts on import: the entry scripts call `setup` once the config is composed, so
importing `gad` from a notebook or a test changes no global state.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from rich.console import Console

PIPED_WIDTH = 400  # columns when stdout is not a terminal: wider than any table we print

_console: Console | None = None


def console() -> Console:
    """The one console for human-facing output: stdout; `PIPED_WIDTH` columns when not a terminal."""
    global _console
    if _console is None:
        probe = Console()
        _console = probe if probe.is_terminal or probe.is_jupyter else Console(width=PIPED_WIDTH)
    return _console


def quiet_libraries(verbose: bool = False) -> None:
    """Third-party progress bars and info logs off (on again with `verbose`)."""
    import datasets
    import transformers

    if verbose:
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()  # also huggingface_hub's bars
    else:
        datasets.disable_progress_bars()  # "Saving the dataset" bars of the data cache
        transformers.utils.logging.disable_progress_bar()  # "Writing model shards", hub downloads
    # Lightning's info lines (accelerator availability, a product tip, callback bookkeeping);
    # its warnings still show.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def quiet_raw_bars(verbose: bool = False) -> None:
    """Also off: the bars a library draws with tqdm directly, past its own switch (transformers' GGUF
    loading, "Converting and de-quantizing GGUF tensors"). tqdm reads its TQDM_* variables when it is
    first imported, so this runs before the libraries are (gad.cli.start); child processes inherit it."""
    if not verbose:
        os.environ.setdefault("TQDM_DISABLE", "1")


def is_main_process() -> bool:
    """False in the extra processes of a multi-process (DDP) run, which print nothing of their own."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def setup(cfg, run_dir: str | Path | None = None) -> None:
    """The entry scripts' console setup: quiet libraries (unless `cfg.verbose`), then name the run folder."""
    quiet_libraries(bool(cfg.get("verbose", False)))
    if run_dir is None:
        return
    if not (Path(run_dir) / "metrics.csv").exists():
        # The CSV logger writes <run>/metrics.csv into the run folder, which holds the run's config
        # by then; Lightning takes any non-empty folder for old logs and warns that they will be
        # deleted. Only an existing metrics.csv would be, so the warning stays where there is one.
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    if is_main_process():
        console().print(f"run folder: {run_dir}", highlight=False, soft_wrap=True)

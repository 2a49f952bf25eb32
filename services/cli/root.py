"""`medqa`: the operator's command line. Listings print tables, or one JSON document with --json.
Unknown ids and bad arguments exit non-zero with a clear message and change nothing."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from services.cli.common import die
from shared.settings import SettingsError, get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.callback()
def _main(verbose: bool = typer.Option(False, "-v", "--verbose")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_libraries()
    try:
        settings = get_settings()
    except SettingsError as exc:
        die(str(exc), code=2)
    if settings.eager:  # every consumer runs in this process: load each queue's tasks on first use
        from services.cli.tasks import load_task_modules
        from shared.pipeline import set_task_loader

        set_task_loader(lambda queue: load_task_modules([queue]))


def quiet_libraries() -> None:
    """Library chatter (alembic plugin set-up, optional bitsandbytes kernels, HF advisories) would
    bury the lines an operator needs; keep their warnings about real problems."""
    for noisy in ("httpx", "urllib3", "alembic", "celery.app.trace", "absl"):  # absl: rouge_score's tokenizer
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")  # library bars; our own progress uses rich
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")

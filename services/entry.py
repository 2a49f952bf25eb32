"""The `medqa` console script. It imports the command modules inside main(): a bad setting is found
while they load (the Celery app reads the settings at import), and must read as one line naming the
variable, exit 2, not as a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    from shared.settings import SettingsError

    try:
        from services.cli import main as run
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    run()

"""The `medqa` command line: the composition root, the one package besides the dev kit that may
import every service. One module per command group; this file only assembles them."""

from services.cli import lineage, monitoring, registry, training, workers  # noqa: F401  (they register commands)
from services.cli.data import data_app
from services.cli.db import db_app
from services.cli.ingest import ingest_app
from services.cli.registry import policy_app
from services.cli.review import review_app
from services.cli.root import app

app.add_typer(ingest_app, name="ingest")
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")
app.add_typer(policy_app, name="policy")
app.add_typer(review_app, name="review")



def main() -> None:
    """The `medqa` entry point: the app, with a store that is down reported in one line (exit 1)
    instead of a driver traceback hundreds of lines long."""
    import signal
    import sys

    from sqlalchemy.exc import InterfaceError, OperationalError

    from services.cli.common import err
    from shared.db import store_unavailable

    # `kill` stops a command as Ctrl-C does: cleanly (an eager training run goes back to the queue),
    # and typer exits 130.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except (OperationalError, InterfaceError) as exc:
        reason = store_unavailable(exc)
        err.print("[bold red]error:[/] " + (f"the store is unavailable: {reason}" if reason
                                             else "another change held the store; try again"), highlight=False)
        sys.exit(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


__all__ = ["app", "main"]

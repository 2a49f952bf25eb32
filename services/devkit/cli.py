"""`python -m services.devkit`: dev tools, never part of a deployment: the demo loop, a local
E-utilities emulator, and synthetic PubMed XML."""

from __future__ import annotations

from pathlib import Path

import typer

from services.cli.common import JsonOpt, die, emit, out
from services.cli.root import quiet_libraries

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.callback()
def _main() -> None:
    quiet_libraries()


@app.command()
def synth(directory: Path, files: int = typer.Option(3, min=1), per_file: int = typer.Option(40, min=1),
                 seed: int = 0) -> None:
    """Write synthetic PubMed XML (the project's own generator) for trying the loop out."""
    from services.devkit.synth import write_corpus

    for p in write_corpus(directory, files=files, per_file=per_file, seed=seed):
        out.print(str(p))




@app.command()
def emulator(corpus: Path = typer.Option(..., "--corpus", help="A PubMed XML file or folder (plain or .gz)."),
             port: int = typer.Option(8765, min=0, max=65535, help="Port on 127.0.0.1 (0: any free one).")) -> None:
    """Serve PubMed XML as a local E-utilities (esearch, efetch, einfo) until Ctrl-C."""
    import signal
    import time

    # Started from a background job, a process inherits SIGINT ignored and Python then leaves it so:
    # Ctrl-C (or a test's SIGINT) would never stop the server.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    from services.devkit.emulator import EntrezEmulator
    from services.ingest.store import pubmed_files

    try:
        files = pubmed_files(corpus)
    except FileNotFoundError as exc:
        die(str(exc))
        return
    try:
        server = EntrezEmulator(files, port=port).start()
    except OSError as exc:
        die(f"cannot serve on port {port}: {exc}")
        return
    try:  # printing inside: Ctrl-C right after the banner still stops the server cleanly
        out.print(f"serving {len(server)} articles from {len(files)} files at {server.base_url}\n"
                  f"point ingest at it: MEDQA_ENTREZ_BASE_URL={server.base_url}", highlight=False)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@app.command()
def demo(corpus: Path | None = typer.Option(None, envvar="MEDQA_DEMO_CORPUS",
                                            help="Folder of PubMed XML; default ../shared/data samples."),
         as_json: bool = JsonOpt) -> None:
    """The whole loop on this machine: ingest, train, evaluate, promote, monitor; then a summary."""
    from services.devkit.demo import run_demo

    try:
        summary = run_demo(corpus, console=None if as_json else out)
    except FileNotFoundError as exc:
        die(str(exc))
        return
    emit(summary, as_json)
    if any(r["status"] != "succeeded" for r in summary["rounds"]) or not summary["rounds"]:
        die("the loop did not complete: see the summary above")

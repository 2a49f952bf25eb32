"""sha256 of files and folders: base-model manifests, imported XML files, adapters."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Streamed, so a 500 MB weights file never sits in memory whole."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(folder: Path) -> str:
    """One digest over a folder's files (names and contents, in name order): an adapter's identity."""
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            digest.update(f.name.encode())
            with f.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()

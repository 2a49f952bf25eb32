"""An approximate nearest-neighbour index over abstract vectors, on disk, that API replicas share.

Why: an API replica with MEDQA_API_RETRIEVAL_INDEX=memory holds every abstract's MiniLM vector in a dense matrix;
for all of PubMed that is 36M x 384 x 4 bytes, about 55 GB per replica. This index is FAISS's IVF with
8-bit scalar quantization (IndexIVFScalarQuantizer, inner product on unit vectors = cosine): 384 bytes
a vector, and the file is memory-mapped, so a replica's resident memory holds only the inverted lists
its queries touch. `nprobe` of `nlist` lists are scanned per query. The cosine it returns is
approximate (8-bit); the caller re-scores its few hits exactly where it needs the true cosine.

A published version is an immutable folder in the artifact store (`write_version`: the index, and its
keys with a fingerprint of the text each vector came from), verified by sha256 before a reader maps it
(`read_version`). A newer version adds the vectors stored since (IVF takes additions without
retraining) and drops replaced ones, and is retrained from scratch only when the collection has grown
past what its lists were trained for. Deleted and retracted abstracts are not removed from a published
version: callers filter hits at query time against the store, as the dense matrix's callers already do.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIM = 384
MIN_TRAIN = 39  # FAISS's k-means wants at least 39 points per list
GROWTH_RETRAIN = 4.0  # retrain the lists once the collection is this many times what they were trained on


def nlist_for(n: int) -> int:
    """Inverted lists for n vectors: about 4 sqrt(n) (FAISS's guidance), at least 1, at most n / 39."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // MIN_TRAIN or 1))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query: about 3% of them, at least 16 (chosen on bench/retrieval.py's recall)."""
    return min(nlist, max(16, round(nlist * 0.03)))


@dataclass
class AnnIndex:
    """A loaded index: search by cosine, keys are PMIDs."""

    index: object  # faiss.IndexIVFScalarQuantizer
    trained_on: int  # vectors its lists were trained on
    path: Path | None = None

    @property
    def size(self) -> int:
        return int(self.index.ntotal)  # type: ignore[attr-defined]

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(keys, approximate cosines), each [len(queries), k]; key -1 where fewer than k were found."""
        faiss = _faiss()
        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = nprobe or default_nprobe(ivf.nlist)
        scores, keys = self.index.search(_unit(queries), k)  # type: ignore[attr-defined]
        return keys, scores


def _faiss():  # type: ignore[no-untyped-def]
    import faiss  # a C++ library with its own thread pool: imported where an index is used

    return faiss


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, DIM)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def build(vectors: np.ndarray, keys: np.ndarray, *, seed: int = 0, train_sample: int = 100_000) -> AnnIndex:
    """A fresh index over `vectors` (rows) with `keys` (PMIDs); its lists trained on a seeded sample."""
    faiss = _faiss()
    x, ids = _unit(vectors), np.ascontiguousarray(keys, dtype=np.int64)
    if len(x) != len(ids):
        raise ValueError(f"{len(x)} vectors for {len(ids)} keys")
    if len(x) == 0:
        raise ValueError("an index needs at least one vector")
    nlist = nlist_for(len(x))
    quantizer = faiss.IndexFlatIP(DIM)
    index = faiss.IndexIVFScalarQuantizer(quantizer, DIM, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = x if len(x) <= train_sample else x[np.sort(rng.choice(len(x), train_sample, replace=False))]
    index.cp.seed = seed  # k-means is seeded: the same vectors give the same file
    index.train(sample)
    index.add_with_ids(x, ids)
    return AnnIndex(index, trained_on=len(x))


def extend(previous: AnnIndex, vectors: np.ndarray, keys: np.ndarray, *, replaced: np.ndarray | None = None,
           all_vectors: tuple[np.ndarray, np.ndarray] | None = None) -> AnnIndex:
    """The next version: `previous` plus `vectors` under `keys`, without the `replaced` keys (revised
    abstracts). Retrained from `all_vectors` (vectors, keys) when the collection has outgrown the lists."""
    faiss = _faiss()
    grown = previous.size + len(keys)
    if all_vectors is not None and grown > GROWTH_RETRAIN * previous.trained_on:
        return build(*all_vectors)
    # A memory-mapped version is read-only (and cannot be cloned): the next one starts from its file, read whole.
    index = faiss.read_index(str(previous.path)) if previous.path is not None else faiss.clone_index(previous.index)
    if replaced is not None and len(replaced):
        index.remove_ids(np.ascontiguousarray(replaced, dtype=np.int64))
    if len(keys):
        index.add_with_ids(_unit(vectors), np.ascontiguousarray(keys, dtype=np.int64))
    return AnnIndex(index, trained_on=previous.trained_on)


def save(ann: AnnIndex, folder: Path) -> tuple[Path, str]:
    """Write the index under `folder` as <sha256>.faiss, atomically (temporary file, fsync, rename);
    returns (path, sha256). The trained-on count goes in the name of a sidecar, so loading needs no store."""
    faiss = _faiss()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".faiss.tmp")
    os.close(fd)
    try:
        faiss.write_index(ann.index, tmp)
        digest = _sha256(Path(tmp))
        final = folder / f"{digest}.faiss"
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        (folder / f"{digest}.trained").write_text(str(ann.trained_on))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final, digest


def load(path: Path, sha256: str | None, *, mmap: bool = True) -> AnnIndex:
    """A saved index, checked against its sha256 first (a corrupt or swapped file is refused); None when
    the caller has verified it already (a version folder the artifact store checked as a whole)."""
    faiss = _faiss()
    if not path.is_file():
        raise FileNotFoundError(f"no retrieval index at {path}")
    if sha256 is not None and _sha256(path) != sha256:
        raise ValueError(f"retrieval index {path} does not match its sha256")
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
    trained = path.with_suffix(".trained")
    return AnnIndex(index, trained_on=int(trained.read_text()) if trained.is_file() else int(index.ntotal), path=path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- published versions: a flat folder in the artifact store (shared/artifacts.py), verified as a whole

INDEX_FILE, KEYS_FILE = "index.faiss", "keys.npy"


def fingerprint(content_hash: str) -> int:
    """What a version records of the text each vector was computed from (an abstract's content_hash,
    as a 32-bit number): a reader tells the abstracts revised since from those it covers."""
    return zlib.crc32(content_hash.encode())


def write_version(ann: AnnIndex, covered: dict[int, int], folder: Path) -> Path:
    """A version's files in `folder` (new): the index, its keys with their text fingerprints, and the
    trained-on count beside them."""
    faiss = _faiss()
    folder.mkdir(parents=True)
    faiss.write_index(ann.index, str(folder / INDEX_FILE))
    np.save(folder / KEYS_FILE, np.array(sorted(covered.items()), dtype=np.int64).reshape(-1, 2))
    (folder / INDEX_FILE).with_suffix(".trained").write_text(str(ann.trained_on))
    return folder


def read_version(folder: Path, *, mmap: bool = True) -> tuple[AnnIndex, dict[int, int]]:
    """A version folder the artifact store has verified: the index (memory-mapped) and pmid -> fingerprint."""
    keys = np.load(folder / KEYS_FILE)
    return load(folder / INDEX_FILE, None, mmap=mmap), dict(zip(keys[:, 0].tolist(), keys[:, 1].tolist(), strict=True))

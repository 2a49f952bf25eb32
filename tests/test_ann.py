"""The shared ANN retrieval index (shared/ann.py): exactness where it matters, versions that verify."""

from __future__ import annotations

import numpy as np
import pytest

from shared import ann


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors, like sentence embeddings (bench/retrieval.py's model, small)."""
    from services.devkit.synth import made_up_vectors

    x, _, _ = made_up_vectors(n, 1, seed=seed, centres=max(1, n // 40))
    return x


def test_search_finds_what_the_exact_matrix_finds(tmp_path):
    x = _vectors(4000)
    keys = np.arange(10_000, 14_000, dtype=np.int64)  # PMIDs, not row numbers
    index = ann.build(x, keys)
    queries = x[:200] + 0.02 * np.random.default_rng(1).normal(size=(200, 384)).astype(np.float32)
    found, scores = index.search(queries, 3)
    exact = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ x.T, axis=1)[:, :3]
    recall = np.mean([len(set(f) & set(keys[e])) / 3 for f, e in zip(found.tolist(), exact, strict=True)])
    assert recall >= 0.95
    assert (found[:, 0] == keys[:200]).mean() >= 0.95  # a vector's own key first
    assert np.all(scores[:, 0] > 0.9) and np.all(np.diff(scores, axis=1) <= 1e-6)  # cosines, best first


def test_a_published_version_is_verified_and_extends(tmp_path):
    x = _vectors(3000)
    first = ann.build(x[:2000], np.arange(2000, dtype=np.int64))
    path, sha = ann.save(first, tmp_path)
    assert path.name == f"{sha}.faiss" and not list(tmp_path.glob("*.tmp"))
    loaded = ann.load(path, sha)
    assert loaded.size == 2000 and loaded.trained_on == 2000

    # The next version: 1000 new vectors, and key 5 revised (its old vector replaced by a new one).
    revised = x[2999:3000]
    nxt = ann.extend(loaded, np.vstack([x[2000:2999], revised]), np.r_[np.arange(2000, 2999), 5],
                     replaced=np.array([5]))
    assert nxt.size == 2999  # 2000, less key 5's old vector, plus 999 new and key 5's new one
    keys, _ = nxt.search(revised, 1)
    assert keys[0, 0] == 5  # found by its new vector
    keys, _ = nxt.search(x[2500:2501], 1)
    assert keys[0, 0] == 2500
    assert loaded.size == 2000  # the loaded version is unchanged

    # Grown past what its lists were trained for: rebuilt from all vectors.
    grown = ann.extend(first, x[2000:], np.arange(2000, 3000), all_vectors=(x, np.arange(3000)))
    assert grown.trained_on == 2000
    big = ann.extend(ann.build(x[:500], np.arange(500)), x[500:], np.arange(500, 3000),
                     all_vectors=(x, np.arange(3000)))
    assert big.trained_on == 3000 and big.size == 3000

    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="sha256"):
        ann.load(path, sha)
    with pytest.raises(FileNotFoundError):
        ann.load(tmp_path / "nope.faiss", sha)
    with pytest.raises(ValueError, match="vectors for"):
        ann.build(x[:10], np.arange(9))

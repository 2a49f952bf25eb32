"""A run's data manifest: exactly what it trains on and what it holds out, fixed when it is queued.

Stored on the run row as JSON (TrainingRun.manifest) with a sha256 over its content, so a redelivered
or resumed task trains on the same data and every version's lineage is exact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunManifest:
    new: list[int] = field(default_factory=list)  # new abstracts trained on
    holdout: list[int] = field(default_factory=list)  # new abstracts kept out, scored by the `new` suite
    replay_pmids: list[int] = field(default_factory=list)  # earlier runs' abstracts, replayed
    replay_general: list[str] = field(default_factory=list)  # general-medical item ids, replayed
    replay_ratio: float = 0.0
    mined: list[int] = field(default_factory=list)  # PMIDs of `new` whose mined QA item is trained too
    replay_mined: list[int] = field(default_factory=list)  # PMIDs of `replay_pmids` likewise
    reviewed: list[int] = field(default_factory=list)  # ReviewedExample ids: expert-checked corrections, new
    replay_reviewed: list[int] = field(default_factory=list)  # those an earlier run trained, replayed

    @property
    def counts(self) -> dict[str, int]:
        return {"new": len(self.new), "holdout": len(self.holdout), "replay_pmids": len(self.replay_pmids),
                "replay_general": len(self.replay_general), "mined": len(self.mined),
                "replay_mined": len(self.replay_mined), "reviewed": len(self.reviewed),
                "replay_reviewed": len(self.replay_reviewed)}

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self._content(), sort_keys=True).encode()).hexdigest()

    def _content(self) -> dict[str, Any]:
        content = {"new": self.new, "holdout": self.holdout, "replay_pmids": self.replay_pmids,
                   "replay_general": self.replay_general, "replay_ratio": self.replay_ratio, "mined": self.mined,
                   "replay_mined": self.replay_mined, "counts": self.counts}
        # A manifest without reviewed examples keeps the content (and the hash) it had before they existed.
        if self.reviewed or self.replay_reviewed:
            content |= {"reviewed": self.reviewed, "replay_reviewed": self.replay_reviewed}
        else:
            content["counts"] = {k: v for k, v in self.counts.items() if k not in ("reviewed", "replay_reviewed")}
        return content

    def to_json(self) -> dict[str, Any]:
        return {**self._content(), "hash": self.hash}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | None) -> RunManifest:
        """The stored form back; a manifest written before a field existed reads it as empty."""
        doc = doc or {}
        return cls(new=list(doc.get("new", [])), holdout=list(doc.get("holdout", [])),
                   replay_pmids=list(doc.get("replay_pmids", [])), replay_general=list(doc.get("replay_general", [])),
                   replay_ratio=float(doc.get("replay_ratio", 0.0)), mined=list(doc.get("mined", [])),
                   replay_mined=list(doc.get("replay_mined", [])), reviewed=list(doc.get("reviewed", [])),
                   replay_reviewed=list(doc.get("replay_reviewed", [])))

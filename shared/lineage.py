"""Document-level lineage: which versions learned from a paper, directly or through warm starts.

A run's manifest is copied into LineageItem (indexed by PMID) when the run is queued, so "who trained
on PMID X" is an index lookup. A version inherits everything its parent learned: it was warm-started
from the parent's adapter (services/trainer), so a paper trained in v1 is in v2 and v3 after it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlmodel import Session, col, delete, func, insert, select

from shared.manifest import RunManifest
from shared.tables import Abstract, Alias, AuditEvent, CitationLog, LineageItem, ModelVersion, TrainingRun

# Manifest field -> lineage role. Roles in TRAINED put the paper's text (or its mined QA item) into the
# weights; a held-out abstract was only scored, as were the gate's suite items (role EVALUATED).
ROLES = {"new": "new", "holdout": "holdout", "replay_pmids": "replay", "mined": "mined",
         "replay_mined": "replay_mined", "replay_general": "general", "reviewed": "reviewed",
         "replay_reviewed": "replay_reviewed"}
TRAINED = ("new", "replay", "mined", "replay_mined")
# Roles whose items are not papers: general-medical replay items (by id) and expert-reviewed examples
# (ref "reviewed:<ReviewedExample id>").
NOT_PAPERS = {"general": "", "reviewed": "reviewed:", "replay_reviewed": "reviewed:"}
EVALUATED = "eval"
PMID_ITEMS = ("pmid", "pubmedqa")  # suite item ids "<prefix>:<PMID>" that name a paper
RETRACTION_ALERT = "retraction:"  # + PMID: the dedup key of a retraction's one alert (services/monitor)


def retraction_key(pmid: int) -> str:
    return f"{RETRACTION_ALERT}{pmid}"


def record_run(session: Session, run_id: int, manifest: RunManifest) -> int:
    """Write a run's manifest into the lineage table (in the transaction that queues the run)."""
    doc = manifest.to_json()
    rows = [{"run_id": run_id, "role": role, "ref": f"{NOT_PAPERS.get(role, '')}{item}"[:64],
             "pmid": None if role in NOT_PAPERS else int(item)}
            for name, role in ROLES.items() for item in dict.fromkeys(doc.get(name) or [])]
    if rows:
        session.exec(insert(LineageItem), params=rows)  # type: ignore[call-overload]
    return len(rows)


def record_evaluation(session: Session, run_id: int, item_ids: list[str]) -> int:
    """Index the items a version was scored on (its gate's suites), once per run."""
    session.exec(delete(LineageItem).where(col(LineageItem.run_id) == run_id, col(LineageItem.role) == EVALUATED))  # type: ignore[call-overload]
    rows = []
    for item in dict.fromkeys(item_ids):
        rows.append({"run_id": run_id, "role": EVALUATED, "ref": item[:64], "pmid": _pmid_of(item)})
    if rows:
        session.exec(insert(LineageItem), params=rows)  # type: ignore[call-overload]
    return len(rows)


@dataclass
class VersionUse:
    """How one version relates to one paper."""

    version: int
    run: int
    model_line: str
    status: str
    how: list[str]  # the roles it had in this version's own run; empty when inherited only
    inherited_from: int | None  # the nearest ancestor that trained on it, if this version did not itself
    champion: bool  # the serving champion of its line now
    was_champion: bool  # ever promoted (the audit trail)
    cited: int  # answers of this version that cited the paper (question-log retention applies)


@dataclass
class PaperLineage:
    pmid: int
    versions: list[VersionUse] = field(default_factory=list)  # trained on it, directly or inherited
    evaluated_by: list[int] = field(default_factory=list)  # versions that only scored it (held out, or a suite item)
    cited_total: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Node:
    run_id: int
    parent: int | None
    status: str
    model_line: str


def _version_graph(session: Session) -> tuple[dict[int, _Node], dict[int, list[int]]]:
    """Every version as a small node (columns only: a thousand ORM rows with their metrics JSON cost
    more than the whole lookup), and each version's children."""
    rows = session.exec(select(ModelVersion.id, ModelVersion.run_id, ModelVersion.parent_version_id,  # type: ignore[call-overload]
                               ModelVersion.status, ModelVersion.model_line)).all()
    versions = {vid: _Node(run_id, parent, str(getattr(status, "value", status)), line)
                for vid, run_id, parent, status, line in rows if vid is not None}
    children: dict[int, list[int]] = defaultdict(list)
    for vid, node in versions.items():
        if node.parent is not None:
            children[node.parent].append(vid)
    return versions, children


def paper_lineage(session: Session, pmid: int) -> PaperLineage:
    roles_by_run: dict[int, set[str]] = defaultdict(set)
    for run_id, role in session.exec(select(LineageItem.run_id, LineageItem.role).where(LineageItem.pmid == pmid)):
        roles_by_run[run_id].add(role)
    result = PaperLineage(pmid=pmid)
    if not roles_by_run:
        return result
    versions, children = _version_graph(session)
    version_of_run = {v.run_id: vid for vid, v in versions.items()}
    direct: dict[int, list[str]] = {}
    evaluated: list[int] = []
    for run_id, roles in roles_by_run.items():
        if run_id not in version_of_run:
            continue  # a run that made no version (failed, or still training)
        if roles & set(TRAINED):
            direct[version_of_run[run_id]] = sorted(roles & set(TRAINED))
        else:
            evaluated.append(version_of_run[run_id])
    # Descendants inherit: walk down from each direct version, remembering the nearest trainer.
    inherited: dict[int, int] = {}
    stack = [(child, vid) for vid in direct for child in children.get(vid, [])]
    while stack:
        vid, source = stack.pop()
        if vid in direct or vid in inherited:
            continue
        inherited[vid] = source
        stack.extend((child, source) for child in children.get(vid, []))
    affected = sorted(set(direct) | set(inherited))
    champions = set(session.exec(select(Alias.version_id).where(Alias.name == "champion")).all())
    promoted = set(session.exec(select(AuditEvent.to_version_id).distinct()).all())  # every champion ever
    cited = dict(session.exec(select(CitationLog.version_id, func.count()).where(CitationLog.pmid == pmid)
                              .group_by(col(CitationLog.version_id))).all())
    for vid in affected:
        v = versions[vid]
        result.versions.append(VersionUse(
            version=vid, run=v.run_id, model_line=v.model_line, status=v.status, how=direct.get(vid, []),
            inherited_from=inherited.get(vid), champion=vid in champions, was_champion=vid in promoted,
            cited=int(cited.get(vid, 0))))
    result.evaluated_by = sorted(evaluated)
    result.cited_total = int(sum(cited.values()))
    return result


def version_ancestry(session: Session, version_id: int) -> list[dict[str, Any]]:
    """A version's complete training ancestry, itself first: each version's run and what it added."""
    chain: list[dict[str, Any]] = []
    seen: set[int] = set()
    current = session.get(ModelVersion, version_id)
    while current is not None and current.id not in seen:
        seen.add(current.id)  # type: ignore[arg-type]
        counts = dict(session.exec(select(LineageItem.role, func.count()).where(
            LineageItem.run_id == current.run_id).group_by(col(LineageItem.role))).all())
        chain.append({"version": current.id, "run": current.run_id, "status": current.status.value,
                      "parent": current.parent_version_id, "items": {r: int(counts.get(r, 0)) for r in ROLES.values()}})
        current = session.get(ModelVersion, current.parent_version_id) if current.parent_version_id else None
    return chain


def trained_pmids(session: Session, version_id: int) -> set[int]:
    """Every PMID in a version's weights: its own run's and its ancestors' trained items."""
    runs = [step["run"] for step in version_ancestry(session, version_id)]
    if not runs:
        return set()
    pmids = session.exec(select(LineageItem.pmid).where(
        col(LineageItem.run_id).in_(runs), col(LineageItem.role).in_(TRAINED))).all()
    return {p for p in pmids if p is not None}


def seen_in_training(session: Session, version_id: int, item_ids: list[str]) -> dict[str, list[str]]:
    """Which of `item_ids` (suite item ids) a version's weights have seen, ancestors included: "items",
    trained as general-medical replay under the same id; "papers", whose paper ("pmid:"/"pubmedqa:"
    ids) was trained as an abstract or a mined QA item, its conclusion (a PubMedQA long answer) with it.
    A score on such items measures memory, not answering."""
    runs = [step["run"] for step in version_ancestry(session, version_id)]
    if not runs or not item_ids:
        return {"items": [], "papers": []}
    wanted = list(dict.fromkeys(item_ids))
    # The lineage's replayed ids, intersected here: a whole hub set asked about (200k ids) would overflow
    # SQLite's bound-parameter limit as an IN list.
    replayed = set(session.exec(select(LineageItem.ref).where(
        col(LineageItem.run_id).in_(runs), LineageItem.role == ROLES["replay_general"])).all())
    pmids = trained_pmids(session, version_id)
    papers = [i for i in wanted if i not in replayed and _pmid_of(i) in pmids]
    return {"items": [i for i in wanted if i in replayed], "papers": papers}


def _pmid_of(item_id: str) -> int | None:
    prefix, _, rest = item_id.partition(":")
    return int(rest) if prefix in PMID_ITEMS and rest.isascii() and rest.isdigit() and len(rest) <= 9 else None


def version_card(session: Session, version_id: int) -> dict[str, Any]:
    """What a version learned, for `medqa report` and GET /v1/versions/{id}: its own run's items and
    everything in its weights (ancestors included) by role, source and publication year; the retracted
    and deleted papers among them; and its rebuild status."""
    runs = [step["run"] for step in version_ancestry(session, version_id)]
    own = runs[:1]
    by_role = dict(session.exec(select(LineageItem.role, func.count()).where(col(LineageItem.run_id).in_(own))
                                .group_by(col(LineageItem.role))).all()) if own else {}
    trained = (select(LineageItem.pmid).where(col(LineageItem.run_id).in_(runs), col(LineageItem.role).in_(TRAINED))
               .distinct().subquery())
    papers = session.exec(select(Abstract.source, Abstract.pub_date, Abstract.retracted, Abstract.deleted,  # type: ignore[call-overload]
                                 Abstract.pmid).where(col(Abstract.pmid).in_(select(trained.c.pmid)))).all()
    by_source: dict[str, int] = defaultdict(int)
    by_year: dict[str, int] = defaultdict(int)
    for source, pub_date, _, _, _ in papers:
        by_source[source.split(":", 1)[0]] += 1  # "file:<name>" -> file, "entrez"
        by_year[str(pub_date.year) if pub_date else "unknown"] += 1
    version = session.get(ModelVersion, version_id)
    replaced_by = session.exec(select(ModelVersion.id).where(ModelVersion.replaces_version_id == version_id)).all()
    pending = session.exec(select(TrainingRun.id).where(TrainingRun.replaces_version_id == version_id,
                                                        col(TrainingRun.status).in_(("queued", "running")))).all()
    return {
        "own_run_items": {role: int(by_role.get(role, 0)) for role in (*ROLES.values(), EVALUATED)},
        "papers_in_weights": len(papers),
        "by_source": dict(sorted(by_source.items())),
        "by_year": dict(sorted(by_year.items())),
        "retracted_in_lineage": sorted(p for _, _, retracted, _, p in papers if retracted),
        "deleted_in_lineage": sorted(p for _, _, _, deleted, p in papers if deleted),
        "rebuild": {"replaces": version.replaces_version_id if version else None,
                    "replaced_by": sorted(i for i in replaced_by if i is not None),
                    "in_progress_runs": sorted(i for i in pending if i is not None)},
    }

"""Full-text search over the stored abstracts (shared/search.py) on SQLite FTS5 and PostgreSQL, and
reciprocal-rank fusion. The index is kept by the store itself: every write below goes through plain
ORM inserts, updates and deletes, never through the search module."""

from __future__ import annotations

from sqlmodel import insert

from shared.db import session_scope
from shared.search import fuse, lexical_search, query_terms
from shared.tables import Abstract

ROWS = [
    (1, "Metformin and cancer risk in type 2 diabetes", "Metformin use reduced the incidence of cancer."),
    (2, "Empagliflozin and kidney stones", "Empagliflozin reduces the rate of kidney stones in adults."),
    (3, "Dosing of metformin in older adults", "We studied the doses given in primary care."),
    (4, "Aspirin after stroke", "Aspirin lowered recurrent stroke without more bleeding."),
]


def _store_rows() -> None:
    with session_scope() as s:
        s.exec(insert(Abstract), params=[dict(pmid=p, title=t, text=x, content_hash=f"h{p}", source="test",
                                              mesh_terms=[]) for p, t, x in ROWS])


def _search(question: str, k: int = 5) -> list[int]:
    with session_scope() as s:
        return [pmid for pmid, _ in lexical_search(s, question, k)]


def test_lexical_search_ranks_stems_and_skips_what_is_not_live(store_env):
    _store_rows()
    found = _search("Does metformin reduce the risk of cancer in patients with type 2 diabetes?")
    assert found[0] == 1 and 3 in found and 4 not in found
    assert _search("dosing") == [3] == _search("doses")  # stemmed: "doses" and "dosing" are one word
    assert _search("What is the capital of France?") == []
    assert _search("the and of what is") == []  # only stopwords: no query at all
    assert _search('"stroke" OR NEAR(x) title: * ^ & | ! <-> :*') == [4]  # operators are plain text
    assert len(_search("metformin", k=1)) == 1 and set(_search("metformin")) == {1, 3}
    with session_scope() as s:
        s.get(Abstract, 1).retracted = True  # type: ignore[union-attr]
        s.get(Abstract, 4).deleted = True  # type: ignore[union-attr]
    assert 1 not in _search("metformin cancer") and _search("aspirin stroke") == []


def test_the_index_follows_revised_and_removed_rows(store_env):
    _store_rows()
    with session_scope() as s:
        row = s.get(Abstract, 3)
        assert row is not None
        row.title, row.text = "Pancreatic cancer screening", "Screening found early pancreatic tumours."
    assert _search("pancreatic") == [3] and 3 not in _search("doses")
    with session_scope() as s:
        s.delete(s.get(Abstract, 2))
    assert _search("empagliflozin kidney") == []


def test_query_terms_keep_content_words_once():
    assert query_terms("Does metformin reduce the RISK of cancer? Metformin!") == ["metformin", "reduce", "risk",
                                                                                  "cancer"]
    assert len(query_terms(" ".join(f"word{i}" for i in range(100)))) == 32


def test_reciprocal_rank_fusion_rewards_agreement():
    fused = fuse([[1, 2, 3], [3, 1, 4]])
    assert [p for p, _ in fused] == [1, 3, 2, 4]  # 1 and 3 are high in both; 2 and 4 in one each
    assert fused[0][1] == 1 / 61 + 1 / 62
    assert fuse([]) == []


def test_over_floor_keeps_the_first_k_over_the_floor_within_the_margin():
    from shared.search import over_floor

    cosines = {1: 0.80, 2: 0.30, 3: 0.75, 4: 0.60, 5: 0.55}
    ranking = [2, 1, 3, 4, 5]
    assert over_floor(ranking, cosines.get, 0.5, 3) == [(1, 0.80), (3, 0.75), (4, 0.60)]
    assert over_floor(ranking, cosines.get, 0.5, 3, margin=0.1) == [(1, 0.80), (3, 0.75)]
    assert over_floor(ranking, lambda p: None if p == 1 else cosines[p], 0.5, 2) == [(3, 0.75), (4, 0.60)]
    assert over_floor(ranking, cosines.get, 0.9, 3, margin=0.1) == []
    assert over_floor(ranking, cosines.get, None, 2) == [(2, 0.30), (1, 0.80)]

"""Property test over the QA API's own OpenAPI spec: whatever a client sends (random JSON, huge ints,
wrong types, missing or extra fields, broken bodies, random paths and methods, with or without the
token) the answer is never a 5xx. Operator requests with the right token do run, so promote and
rollback are exercised against a registry with blessed, rejected and champion versions."""

from __future__ import annotations

import string

import pytest
from apikit import API_ENV, AUTH, ingest_synth, make_version
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.api.app import create_app
from shared.tables import VersionStatus

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
           | st.text(max_size=1200) | st.sampled_from(["v1", "v2", "3", "v", "", " ", "²", "1e3", "-1", "v0"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=6)
HEADERS = st.sampled_from([{}, AUTH, AUTH, {"Authorization": "Bearer nope"},
                           {**AUTH, "X-Actor": ("fuzz\x7f\u00e9" * 30).encode("latin-1")}])
VERSIONISH = ["v1", "v2", "v3", "1", "2", "3", "v9", "V2", " v1 "]
PATH_CHARS = string.ascii_letters + string.digits + "-._~/%:@!$&'()*+,;="
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def api(medqa_env, tmp_path):  # type: ignore[no-untyped-def]
    # Short answers keep the generated ones cheap; the limits still come from the spec.
    medqa_env(**{**API_ENV, "api_max_new_tokens": "8", "api_reviewer_tokens": "fuzz=fuzz-reviewer-token"})
    ingest_synth(tmp_path / "corpus", files=1, per_file=12, seed=5)
    make_version(tmp_path, seed=1)
    make_version(tmp_path, seed=2, champion=True)
    make_version(tmp_path, seed=3, status=VersionStatus.rejected)
    with TestClient(create_app()) as client:
        client.app.state.runtime.index.refresh()  # type: ignore[attr-defined]
        client.spec = client.get("/openapi.json").json()  # type: ignore[attr-defined]
        yield client


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _typed(spec: dict, schema: dict) -> st.SearchStrategy:
    """Values near what the schema allows (both sides of each bound), so valid requests happen too."""
    schema = _resolve(spec, schema)
    if "anyOf" in schema:
        return st.one_of([_typed(spec, s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "string":
        low, high = schema.get("minLength", 0), min(schema.get("maxLength", 60), 1100)
        return st.text(min_size=max(0, low - 1), max_size=high + 2) | st.sampled_from(VERSIONISH)
    if kind == "integer":
        low, high = int(schema.get("minimum", -1000)), int(min(schema.get("maximum", 1000), 1000))
        return st.integers(low - 2, high + 2)
    return {"boolean": st.booleans(), "null": st.none()}.get(kind, JSON)


def _post_bodies(spec: dict) -> dict[str, st.SearchStrategy]:
    """Per POST path: bodies shaped by its schema (each field typed or any JSON, some missing, extra
    keys), plus arbitrary JSON and raw bytes."""
    out = {}
    for path, ops in spec["paths"].items():
        op = ops.get("post")
        if op is None:
            continue
        content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        props = _resolve(spec, content.get("schema", {})).get("properties", {})
        fields = {name: _typed(spec, p) | JSON for name, p in props.items()}
        shaped = st.builds(lambda d, extra: {**extra, **d}, st.fixed_dictionaries({}, optional=fields),
                           st.dictionaries(st.text(max_size=6), JSON, max_size=2))
        out[path] = st.one_of(shaped.map(lambda b: ("json", b)), shaped.map(lambda b: ("json", b)),
                              JSON.map(lambda b: ("json", b)), st.binary(max_size=80).map(lambda b: ("raw", b)))
    return out


@settings(FUZZ, max_examples=160)
@given(data=st.data(), headers=HEADERS)
def test_every_post_endpoint_survives_random_bodies(api, data, headers):
    bodies = _post_bodies(api.spec)
    assert set(bodies) == {"/v1/answer", "/v1/promote", "/v1/rollback", "/v1/refresh", "/v1/feedback"}
    path = data.draw(st.sampled_from(sorted(bodies)), label="path")
    kind, value = data.draw(bodies[path], label="body")
    if kind == "json":
        r = api.post(path, json=value, headers=headers)
    else:
        r = api.post(path, content=value, headers={**headers, "content-type": "application/json"})
    assert r.status_code < 500, (path, value, r.status_code, r.text)


@FUZZ
@given(method=st.sampled_from(METHODS),
       path=st.sampled_from(["/v1/answer", "/v1/versions", "/v1/champion", "/healthz", "/metrics", "/openapi.json",
                             "/v1/promote", "/v1/rollback", "/v1/refresh", "/docs", "/v1/feedback", "/review",
                             "/review/login", "/review/1"])
       | st.text(alphabet=PATH_CHARS, max_size=30).map(lambda p: "/" + p),
       body=st.binary(max_size=40), headers=HEADERS)
def test_random_paths_and_methods_never_fail(api, method, path, body, headers):
    r = api.request(method, path, content=body or None, headers=headers)
    assert r.status_code < 500, (method, path, r.status_code, r.text)

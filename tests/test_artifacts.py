"""shared/artifacts.py: adapters and checkpoints on object storage (moto's S3 server over HTTP, as
MinIO would be) and on a local path (today's behaviour, files in place)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3kit import ACCESS_KEY, SECRET_KEY, moto_server, s3_settings, s3_storage_options, s3fs_client

from shared.artifacts import (
    MARKER,
    STAGING,
    ArtifactCorrupted,
    ArtifactNotFound,
    FsspecArtifactStore,
    LocalArtifactStore,
    artifact_store,
    check_key,
)
from shared.checksums import sha256_file, sha256_folder
from shared.settings import SECRET_SETTINGS, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str):  # type: ignore[no-untyped-def]
    """A fresh bucket per test; returns (plain s3fs client, bucket name)."""
    fs = s3fs_client(endpoint)
    name = f"medqa-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, name


def _store(endpoint: str, name: str) -> FsspecArtifactStore:
    return FsspecArtifactStore(f"s3://{name}/artifacts", **s3_storage_options(endpoint))


def _adapter(folder: Path, mb: float = 1.0, files: int = 1) -> Path:
    """An adapter-like flat folder: config, weights (random bytes), a README."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "peft_type": "LORA"}')
    for i in range(files):
        name = "adapter_model.safetensors" if files == 1 else f"shard-{i:03d}.safetensors"
        (folder / name).write_bytes(os.urandom(int(mb * 2**20 / files)))
    (folder / "README.md").write_text("a LoRA adapter\n")
    return folder


def _under(fs, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(fs.find(prefix)) if fs.exists(prefix) else []


# -- object storage


def test_round_trip_of_an_adapter_folder_and_a_checkpoint_verified_by_sha256(endpoint, bucket, tmp_path):
    fs, name = bucket
    store = artifact_store(load_settings(data_dir=tmp_path, **s3_settings(endpoint, f"s3://{name}/artifacts")))
    assert isinstance(store, FsspecArtifactStore)
    local = _adapter(tmp_path / "trained" / "run-1")

    sha = store.put_folder(local, "adapters/run-1")
    assert sha == sha256_folder(local)
    assert store.exists("adapters/run-1") and not store.exists("adapters/run-2")
    assert store.uri("adapters/run-1") == f"s3://{name}/artifacts/adapters/run-1"
    assert store.key_of(store.uri("adapters/run-1")) == "adapters/run-1"
    final = f"{name}/artifacts/adapters/run-1"
    assert [p.rsplit("/", 1)[1] for p in _under(fs, final)] == sorted(
        [MARKER, "README.md", "adapter_config.json", "adapter_model.safetensors"])
    assert _under(fs, f"{name}/artifacts/{STAGING}") == []  # the temporary upload is gone

    got = store.get_folder("adapters/run-1", sha, tmp_path / "cache")
    assert got == tmp_path / "cache" / sha and sha256_folder(got) == sha
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in local.iterdir())  # no marker
    assert (got / "adapter_model.safetensors").read_bytes() == (local / "adapter_model.safetensors").read_bytes()
    assert store.get_folder("adapters/run-1", sha, tmp_path / "cache") == got  # the verified cached copy

    ckpt = tmp_path / "work" / "checkpoint.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(os.urandom(300_000))
    ck_sha = store.put_file(ckpt, "runs/1/checkpoint.pt")
    assert ck_sha == sha256_file(ckpt) and store.exists("runs/1/checkpoint.pt")
    fetched = store.get_file("runs/1/checkpoint.pt", ck_sha, tmp_path / "cache")
    assert fetched.read_bytes() == ckpt.read_bytes()
    ckpt.write_bytes(os.urandom(300_000))  # the next checkpoint replaces it under the same key
    assert store.get_file("runs/1/checkpoint.pt", store.put_file(ckpt, "runs/1/checkpoint.pt"),
                          tmp_path / "cache2").read_bytes() == ckpt.read_bytes()

    assert store.delete("adapters/run-1") and store.delete("runs/1/checkpoint.pt")
    assert not store.exists("adapters/run-1") and _under(fs, final) == []
    assert not store.delete("adapters/run-1")
    with pytest.raises(ArtifactNotFound, match="adapters/run-1"):
        store.get_folder("adapters/run-1", sha, tmp_path / "cache3")


def test_credentials_are_never_printed(endpoint, tmp_path):
    settings = load_settings(data_dir=tmp_path, **s3_settings(endpoint, "s3://medqa/artifacts"))
    store = artifact_store(settings)
    for text in (repr(store), str(store), repr(settings), str(settings)):
        assert SECRET_KEY not in text
    assert ACCESS_KEY not in repr(store) and "credentials=<redacted>" in repr(store)
    assert "s3_secret_access_key" in SECRET_SETTINGS
    with pytest.raises(SettingsError) as err:  # a bad S3 setting is named; the secret beside it is not echoed
        load_settings(s3_secret_access_key=SECRET_KEY, s3_endpoint_url="minio:9000")
    assert SECRET_KEY not in str(err.value) and "MEDQA_S3_ENDPOINT_URL='minio:9000'" in str(err.value)


def test_a_corrupted_object_is_refused_naming_its_key(endpoint, bucket, tmp_path):
    fs, name = bucket
    store = _store(endpoint, name)
    local = _adapter(tmp_path / "run-2")
    sha = store.put_folder(local, "adapters/run-2")
    weights = f"{name}/artifacts/adapters/run-2/adapter_model.safetensors"
    fs.pipe_file(weights, os.urandom(fs.size(weights)))  # same size: only the sha256 can tell

    with pytest.raises(ArtifactCorrupted, match=r"s3://.*/adapters/run-2 is corrupted.*refused"):
        store.get_folder("adapters/run-2", sha, tmp_path / "cache")
    assert not (tmp_path / "cache" / sha).exists() and list((tmp_path / "cache").iterdir()) == []

    fs.pipe_file(weights, b"short")  # another size: refused from the listing, before any download
    with pytest.raises(ArtifactCorrupted, match="adapters/run-2"):
        store.get_folder("adapters/run-2", sha, tmp_path / "cache")
    with pytest.raises(ArtifactCorrupted, match="not the expected"):  # another artifact than the row says
        store.get_folder("adapters/run-2", "0" * 64, tmp_path / "cache")

    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(os.urandom(50_000))
    ck_sha = store.put_file(ckpt, "runs/2/checkpoint.pt")
    fs.pipe_file(f"{name}/artifacts/runs/2/checkpoint.pt", os.urandom(50_000))
    with pytest.raises(ArtifactCorrupted, match="runs/2/checkpoint.pt is corrupted"):
        store.get_file("runs/2/checkpoint.pt", ck_sha, tmp_path / "cache")

    # A damaged local cached copy is fetched again, never returned.
    good = store.put_folder(local, "adapters/run-2")
    cached = store.get_folder("adapters/run-2", good, tmp_path / "cache")
    (cached / "README.md").write_text("damaged on disk\n")
    again = store.get_folder("adapters/run-2", good, tmp_path / "cache")
    assert again == cached and sha256_folder(again) == good


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from shared.artifacts import FsspecArtifactStore
    from s3kit import s3_storage_options

    endpoint, url, folder, key, phase = sys.argv[1:6]
    store = FsspecArtifactStore(url, **s3_storage_options(endpoint))
    real = getattr(store._fs, phase)

    def slow(*args, **kwargs):  # each object, then a pause: the parent kills us between two
        real(*args, **kwargs)
        print(phase, flush=True)
        time.sleep(0.5)

    setattr(store._fs, phase, slow)
    store.put_folder(Path(folder), key)
    print("done", flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "objects_before_kill"), [("put_file", 3), ("copy", 1)])
def test_a_writer_killed_mid_upload_leaves_no_artifact_and_a_retry_succeeds(
        endpoint, bucket, tmp_path, phase, objects_before_kill):
    """SIGKILL while uploading (several MB, 12 objects) leaves nothing under the final key; killed in
    the copy step, objects without the completion marker, which read as absent. A retry succeeds."""
    fs, name = bucket
    local = _adapter(tmp_path / "run-3", mb=6, files=10)
    url, key = f"s3://{name}/artifacts", "adapters/run-3"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, endpoint, url, str(local), key, phase],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])})
    try:
        assert writer.stdout is not None
        for _ in range(objects_before_kill):
            line = writer.stdout.readline().strip()
            assert line == phase, f"writer ended early: {line!r}"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    store = _store(endpoint, name)
    final = f"{name}/artifacts/{key}"
    assert not store.exists(key)
    if phase == "put_file":
        assert _under(fs, final) == []  # nothing at all under the final key
        assert len(_under(fs, f"{name}/artifacts/{STAGING}")) == objects_before_kill  # killed mid-upload
    else:
        under = _under(fs, final)
        assert under and not any(p.endswith(MARKER) for p in under)
    with pytest.raises(ArtifactNotFound, match=key):
        store.get_folder(key, sha256_folder(local), tmp_path / "cache")

    sha = store.put_folder(local, key)  # the retry
    assert sha == sha256_folder(local) and store.exists(key)
    assert len(_under(fs, final)) == 13  # 12 files and the marker, nothing left from the killed try
    assert _under(fs, f"{name}/artifacts/{STAGING}") == []
    assert sha256_folder(store.get_folder(key, sha, tmp_path / "cache")) == sha


def test_a_folder_that_changes_during_the_upload_is_not_published(endpoint, bucket, tmp_path):
    fs, name = bucket
    store = _store(endpoint, name)
    local = _adapter(tmp_path / "run-4")
    real = store._fs.put_file

    def put_then_change(src, dst, **kw):  # type: ignore[no-untyped-def]
        real(src, dst, **kw)
        (local / "README.md").write_text("rewritten while uploading\n")

    store._fs.put_file = put_then_change
    with pytest.raises(ArtifactCorrupted, match="did not verify"):
        store.put_folder(local, "adapters/run-4")
    assert not store.exists("adapters/run-4") and _under(fs, f"{name}/artifacts") == []


# -- the local implementation (the embedded default)


def test_the_local_store_keeps_files_in_place(tmp_path):
    settings = load_settings(data_dir=tmp_path / "medqa")
    store = artifact_store(settings)
    assert isinstance(store, LocalArtifactStore) and store.root == settings.artifacts
    # The trainer writes its adapter at <artifacts>/adapters/run-N, the path versions record today.
    out = _adapter(settings.artifacts / "adapters" / "run-1")
    inodes = {p.name: p.stat().st_ino for p in out.iterdir()}
    sha = store.put_folder(out, "adapters/run-1")
    assert sha == sha256_folder(out) and {p.name: p.stat().st_ino for p in out.iterdir()} == inodes  # no copy
    assert store.uri("adapters/run-1") == str(settings.artifacts / "adapters" / "run-1")
    assert store.key_of(settings.artifacts / "adapters" / "run-1") == "adapters/run-1"
    assert store.key_of(tmp_path / "elsewhere") is None

    cache = tmp_path / "cache"
    assert store.get_folder("adapters/run-1", sha, cache) == out and not cache.exists()  # read in place
    (out / "README.md").write_text("tampered\n")
    with pytest.raises(ArtifactCorrupted, match="adapters/run-1"):
        store.get_folder("adapters/run-1", sha, cache)
    with pytest.raises(ValueError):  # the serving path's check raised ValueError too
        store.get_folder("adapters/run-1", sha, cache)
    with pytest.raises(ArtifactNotFound):
        store.get_folder("adapters/run-9", sha, cache)

    # A folder from elsewhere is copied beside the key and renamed into place, replacing the old one.
    other = _adapter(tmp_path / "elsewhere" / "run-2")
    sha2 = store.put_folder(other, "adapters/run-1")
    assert sha256_folder(out) == sha2 and sorted(p.name for p in out.parent.iterdir()) == ["run-1"]

    ckpt = settings.artifacts / "runs" / "1" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(os.urandom(10_000))
    ck_sha = store.put_file(ckpt, "runs/1/checkpoint.pt")
    assert store.get_file("runs/1/checkpoint.pt", ck_sha, cache) == ckpt and store.exists("runs/1/checkpoint.pt")
    assert store.delete("runs/1") and not store.exists("runs/1/checkpoint.pt") and not store.delete("runs/1")


@pytest.mark.parametrize("key", ["", "/abs/path", "a/../b", "a//b", "./a", f"{STAGING}/x", f"a/{MARKER}", "a\\b"])
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError, match="bad artifact key"):
        check_key(key)


def test_a_folder_with_sub_folders_is_refused(tmp_path):
    store = LocalArtifactStore(tmp_path / "artifacts")
    folder = _adapter(tmp_path / "nested")
    (folder / "sub").mkdir()
    with pytest.raises(RuntimeError, match="sub-folders"):
        store.put_folder(folder, "adapters/nested")


def test_artifact_url_setting(tmp_path):
    assert load_settings(data_dir=tmp_path).artifact_url is None
    assert load_settings(artifact_url="s3://medqa/artifacts/").artifact_url == "s3://medqa/artifacts"
    assert isinstance(artifact_store(load_settings(artifact_url=f"file://{tmp_path}/a")), LocalArtifactStore)
    local = artifact_store(load_settings(artifact_url=str(tmp_path / "b")))
    assert isinstance(local, LocalArtifactStore) and local.root == tmp_path / "b"
    for bad, why in (("nosuch://x/y", "unknown storage protocol"), ("s3://", "needs a bucket")):
        with pytest.raises(SettingsError, match=f"MEDQA_ARTIFACT_URL='{bad}': .*{why}"):
            load_settings(artifact_url=bad)


_FORKER = textwrap.dedent("""
    import os, sys
    from shared.artifacts import FsspecArtifactStore
    from s3kit import s3_storage_options

    endpoint, url, key = sys.argv[1:4]
    store = FsspecArtifactStore(url, **s3_storage_options(endpoint))
    assert store.exists(key)  # the parent's filesystem is in use before the fork, as in a Celery parent
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if store.exists(key) else 3)
        except BaseException as exc:
            print(type(exc).__name__, exc, flush=True)
            os._exit(4)
    print("child exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
""")


@pytest.mark.slow
def test_a_store_made_before_a_fork_works_in_the_child(endpoint, bucket, tmp_path):
    """Celery's prefork pool forks after the app is built: s3fs refuses an instance from the parent."""
    _, name = bucket
    store = _store(endpoint, name)
    store.put_folder(_adapter(tmp_path / "run-5", mb=0.01), "adapters/run-5")
    done = subprocess.run([sys.executable, "-c", _FORKER, endpoint, store.url, "adapters/run-5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])})
    assert done.stdout.strip().endswith("child exit 0"), done.stdout + done.stderr

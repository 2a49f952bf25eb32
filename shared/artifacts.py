"""Artifacts (adapters, checkpoints) on a local path or any fsspec URL (s3://bucket/prefix on MinIO or S3).

An artifact is a flat folder (an adapter: its identity is shared/checksums.sha256_folder) or one file
(a checkpoint: sha256_file) under a key such as `adapters/run-3` or `runs/3/checkpoint.pt`. The
caller keeps the sha256 that `put_*` returns (the version row keeps an adapter's) and hands it to
`get_*`, which returns local files only once they hash to it.

Two implementations behind one interface (`artifact_store(settings)` picks one from MEDQA_ARTIFACT_URL):

- `LocalArtifactStore`: today's behaviour. Files stay in place under MEDQA_ARTIFACT_DIR: `get_*`
  verifies and returns the path in the store, `put_*` of a path already at its key only hashes it,
  anything else is copied beside the key and renamed into place.
- `FsspecArtifactStore`: object storage. `put_folder` uploads under a staging key
  (`<root>/.staging/<key>/<uuid>/`), lists and downloads it back to check its sha256 against the
  local folder's, copies it to the key (server-side on S3) and writes a completion marker
  (`<key>/.medqa-complete.json`, one PUT) last; only then does the key exist for `exists` and
  `get_folder`. A writer killed while uploading leaves nothing under the key (its staging
  leftovers go on the next put of that key, or with `purge_staging`); one killed in the short copy
  step leaves objects without the marker, which readers treat as absent and the next put replaces.
  A file needs no marker: a single object (multipart included) appears whole or not at all.
  `get_*` downloads into `<local_cache_dir>/<sha256>` through a temporary name, verifies, renames;
  a cached copy is verified again before it is returned.

One writer per key at a time (a run's adapter and checkpoints are written by the worker that claimed
the run), and keys never nest (`runs/3` and `runs/3/checkpoint.pt` are not both keys). Credentials
are never printed: a store's repr says only whether it has any.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from shared.checksums import sha256_file, sha256_folder
from shared.settings import Settings, get_settings

STAGING = ".staging"  # top-level prefix of uploads in progress; never a key
MARKER = ".medqa-complete.json"  # written last into a complete folder on object storage
_BLOCK = 8 << 20  # bytes per read when hashing an object


class ArtifactError(RuntimeError):
    """An artifact could not be written or read; the message names its key."""


class ArtifactNotFound(ArtifactError, FileNotFoundError):
    """Nothing complete under the key."""


class ArtifactCorrupted(ArtifactError, ValueError):
    """The files under the key do not hash to the sha256 asked for: refused."""


def check_key(key: str) -> str:
    """A key is a relative POSIX path (`adapters/run-3`); no `..`, no staging prefix, no marker name."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"bad artifact key {key!r}: expected a relative path such as adapters/run-3")
    if parts[0] == STAGING or parts[-1] == MARKER:
        raise ValueError(f"bad artifact key {key!r}: {STAGING} and {MARKER} are the store's own names")
    return key


def _flat_files(folder: Path) -> list[Path]:
    """The folder's files in sha256_folder's order; refuses sub-folders (the digest would not cover them)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}")
    entries = sorted(folder.iterdir())
    nested = [e.name for e in entries if not e.is_file()]
    if nested:
        raise ArtifactError(f"{folder} holds sub-folders ({', '.join(nested[:3])}): an artifact folder is flat, "
                            "as sha256_folder covers its top-level files only")
    if any(e.name == MARKER for e in entries):
        raise ArtifactError(f"{folder} holds a file named {MARKER}, the store's completion marker")
    return entries


class ArtifactStore(ABC):
    """Adapters and checkpoints by key; see the module's docstring for what is atomic and verified."""

    url: str

    def uri(self, key: str) -> str:
        """Where the key lives, as a path or URL (what a version row can record)."""
        return f"{self.url}/{check_key(key)}"

    @abstractmethod
    def key_of(self, location: str | Path) -> str | None:
        """The key of a location inside this store (an older row's adapter path), else None."""

    @abstractmethod
    def put_folder(self, local_dir: Path, key: str) -> str:
        """Store a flat folder under `key`, atomically; returns its sha256_folder."""

    @abstractmethod
    def get_folder(self, key: str, sha256: str, local_cache_dir: Path) -> Path:
        """A local folder holding the artifact, verified against `sha256`."""

    @abstractmethod
    def put_file(self, local_path: Path, key: str) -> str:
        """Store one file under `key`, atomically; returns its sha256."""

    @abstractmethod
    def get_file(self, key: str, sha256: str, local_cache_dir: Path) -> Path:
        """A local file holding the artifact, verified against `sha256`."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a complete artifact is under the key."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the artifact under the key (folder or file); False if there was none."""


class LocalArtifactStore(ArtifactStore):
    """A folder on this host: artifacts stay in place, as before object storage."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()
        self.url = str(self.root)

    def __repr__(self) -> str:
        return f"LocalArtifactStore({self.url!r})"

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def key_of(self, location: str | Path) -> str | None:
        try:
            rel = Path(location).expanduser().resolve().relative_to(self.root.resolve())
        except ValueError:
            return None
        return rel.as_posix() if rel.parts else None

    def put_folder(self, local_dir: Path, key: str) -> str:
        dest = self.path(key)
        files = _flat_files(Path(local_dir))
        if _same(local_dir, dest):  # written in place (the trainer's adapter today): nothing to copy
            return sha256_folder(dest)
        sha = sha256_folder(Path(local_dir))
        tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex}")
        try:
            tmp.mkdir(parents=True)
            for f in files:
                shutil.copyfile(f, tmp / f.name)
            if sha256_folder(tmp) != sha:
                raise ArtifactCorrupted(f"copy of {local_dir} to {dest} did not verify (the source changed?)")
            _replace_dir(tmp, dest)
        except OSError as exc:
            raise ArtifactError(f"could not put {local_dir} at {dest}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return sha

    def get_folder(self, key: str, sha256: str, local_cache_dir: Path | None = None) -> Path:
        path = self.path(key)
        if not path.is_dir():
            raise ArtifactNotFound(f"no artifact folder at {path}")
        got = sha256_folder(path)
        if got != sha256:
            raise ArtifactCorrupted(f"artifact {path} does not match its sha256 (expected {sha256}, files hash to "
                                    f"{got}): refused")
        return path

    def put_file(self, local_path: Path, key: str) -> str:
        dest = self.path(key)
        if _same(local_path, dest):
            return sha256_file(dest)
        sha = sha256_file(Path(local_path))
        tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex}")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local_path, tmp)
            if sha256_file(tmp) != sha:
                raise ArtifactCorrupted(f"copy of {local_path} to {dest} did not verify (the source changed?)")
            os.replace(tmp, dest)
        except OSError as exc:
            raise ArtifactError(f"could not put {local_path} at {dest}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return sha

    def get_file(self, key: str, sha256: str, local_cache_dir: Path | None = None) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise ArtifactNotFound(f"no artifact file at {path}")
        got = sha256_file(path)
        if got != sha256:
            raise ArtifactCorrupted(f"artifact {path} does not match its sha256 (expected {sha256}, got {got}): "
                                    "refused")
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> bool:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path)
            return True
        if path.exists():
            path.unlink()
            return True
        return False


def _same(a: Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _replace_dir(new: Path, dest: Path) -> None:
    """Rename `new` to `dest`; an older `dest` is renamed away first, so `dest` is never half-written."""
    old = dest.with_name(f"{dest.name}.old-{uuid.uuid4().hex}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


class FsspecArtifactStore(ArtifactStore):
    """Object storage (or any fsspec filesystem) under a URL such as s3://medqa/artifacts."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self._has_credentials = any(storage_options.get(k) for k in ("key", "secret", "token", "password"))
        self._endpoint = storage_options.get("endpoint_url")
        self._options = storage_options
        fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True, **storage_options)
        self._fs_of: tuple[int, Any] = (os.getpid(), fs)
        self._root = root.rstrip("/")

    @property
    def _fs(self) -> Any:
        """The filesystem of this process: s3fs refuses to run in a fork (a Celery prefork child) an
        instance made before it, so a forked child makes its own."""
        if self._fs_of[0] != os.getpid():
            import fsspec

            fs = fsspec.core.url_to_fs(self.url, skip_instance_cache=True, **self._options)[0]
            self._fs_of = (os.getpid(), fs)
        return self._fs_of[1]

    def __repr__(self) -> str:
        creds = "<redacted>" if self._has_credentials else "default chain"
        endpoint = f", endpoint={self._endpoint!r}" if self._endpoint else ""
        return f"FsspecArtifactStore({self.url!r}{endpoint}, credentials={creds})"

    def _remote(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    def key_of(self, location: str | Path) -> str | None:
        text = str(location)
        return text[len(self.url) + 1:] if text.startswith(self.url + "/") else None

    # -- writing

    def put_folder(self, local_dir: Path, key: str) -> str:
        files = _flat_files(Path(local_dir))
        sha = sha256_folder(Path(local_dir))
        final, uri = self._remote(key), self.uri(key)
        stage = self._stage(key)
        try:
            self._rm_quietly(stage.rsplit("/", 1)[0])  # leftovers of earlier (killed) tries of this key
            for f in files:
                self._fs.put_file(str(f), f"{stage}/{f.name}")
            staged = self._listing(stage)
            expected = {f.name: f.stat().st_size for f in files}
            if staged != expected or self._remote_folder_sha256(stage, staged) != sha:
                raise ArtifactCorrupted(f"upload of {local_dir} to {uri} did not verify against its sha256 {sha} "
                                        "(the source changed during the upload, or the store altered it)")
            self._unpublish(final)  # the marker goes first: from here the key reads as absent
            for name in staged:
                self._fs.copy(f"{stage}/{name}", f"{final}/{name}")
            if self._listing(final) != expected:
                raise ArtifactError(f"copy of the verified upload into {uri} is incomplete")
            self._fs.pipe_file(f"{final}/{MARKER}", json.dumps({"sha256": sha, "files": expected}).encode())
        except OSError as exc:
            raise ArtifactError(f"could not put {local_dir} at {uri}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):  # best effort: never hide why the put failed
                self._rm_quietly(stage)
        return sha

    def put_file(self, local_path: Path, key: str) -> str:
        sha, size = sha256_file(Path(local_path)), Path(local_path).stat().st_size
        final, uri = self._remote(key), self.uri(key)
        stage = self._stage(key)
        staged = f"{stage}/{Path(final).name}"
        try:
            self._rm_quietly(stage.rsplit("/", 1)[0])  # leftovers of earlier (killed) tries of this key
            self._fs.put_file(str(local_path), staged)
            if self._fs.size(staged) != size or self._remote_sha256(staged) != sha:
                raise ArtifactCorrupted(f"upload of {local_path} to {uri} did not verify against its sha256 {sha}")
            self._fs.copy(staged, final)  # one object: it appears whole or not at all
            if self._fs.size(final) != size:
                raise ArtifactError(f"copy of the verified upload into {uri} is incomplete")
        except OSError as exc:
            raise ArtifactError(f"could not put {local_path} at {uri}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):  # best effort: never hide why the put failed
                self._rm_quietly(stage)
        return sha

    def _stage(self, key: str) -> str:
        """A fresh staging prefix for one put of the key."""
        return f"{self._root}/{STAGING}/{check_key(key)}/{uuid.uuid4().hex}"

    def _unpublish(self, final: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(f"{final}/{MARKER}")
        self._rm_quietly(final)

    def _rm_quietly(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self._fs.exists(path):
                self._fs.rm(path, recursive=True)

    def purge_staging(self) -> None:
        """Remove every upload in progress or left by a killed writer (housekeeping while none runs)."""
        self._rm_quietly(f"{self._root}/{STAGING}")

    # -- reading

    def get_folder(self, key: str, sha256: str, local_cache_dir: Path) -> Path:
        dest = Path(local_cache_dir) / sha256
        if dest.is_dir():
            if sha256_folder(dest) == sha256:
                return dest
            shutil.rmtree(dest)  # a damaged cached copy: fetched again
        final, uri = self._remote(key), self.uri(key)
        marker = self._marker(final)
        if marker is None:
            partial = " (objects without the completion marker: an interrupted upload; put it again)" \
                if self._listing(final) else ""
            raise ArtifactNotFound(f"no complete artifact at {uri}{partial}")
        if marker.get("sha256") != sha256:
            raise ArtifactCorrupted(f"artifact {uri} holds sha256 {marker.get('sha256')}, not the expected {sha256}: "
                                    "refused")
        listing = self._listing(final)
        listing.pop(MARKER, None)
        if listing != marker.get("files"):
            raise ArtifactCorrupted(f"artifact {uri} is corrupted: its files differ from those it was stored with; "
                                    "refused")
        tmp = Path(local_cache_dir) / f".{sha256}.partial-{uuid.uuid4().hex}"
        try:
            tmp.mkdir(parents=True)
            for name in listing:
                self._fs.get_file(f"{final}/{name}", str(tmp / name))
            got = sha256_folder(tmp)
            if got != sha256:
                raise ArtifactCorrupted(f"artifact {uri} is corrupted: its files hash to {got}, not the expected "
                                        f"{sha256}; refused")
            _settle(tmp, dest)
        except OSError as exc:
            raise ArtifactError(f"could not get {uri}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def get_file(self, key: str, sha256: str, local_cache_dir: Path) -> Path:
        final, uri = self._remote(key), self.uri(key)
        dest = Path(local_cache_dir) / sha256 / Path(final).name
        if dest.is_file():
            if sha256_file(dest) == sha256:
                return dest
            dest.unlink()
        if not self._fs.isfile(final):
            raise ArtifactNotFound(f"no artifact file at {uri}")
        tmp = dest.with_name(f".{dest.name}.partial-{uuid.uuid4().hex}")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._fs.get_file(final, str(tmp))
            got = sha256_file(tmp)
            if got != sha256:
                raise ArtifactCorrupted(f"artifact {uri} is corrupted: it hashes to {got}, not the expected {sha256}; "
                                        "refused")
            os.replace(tmp, dest)
        except OSError as exc:
            raise ArtifactError(f"could not get {uri}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def exists(self, key: str) -> bool:
        final = self._remote(key)
        return self._marker(final) is not None or self._fs.isfile(final)

    def delete(self, key: str) -> bool:
        final = self._remote(key)
        if self._fs.isfile(final):
            self._fs.rm_file(final)
            return True
        found = self._fs.exists(final)
        self._unpublish(final)
        return bool(found)

    def _marker(self, final: str) -> dict[str, Any] | None:
        try:
            doc = json.loads(self._fs.cat_file(f"{final}/{MARKER}"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return doc if isinstance(doc, dict) else None

    def _listing(self, prefix: str) -> dict[str, int]:
        """name -> size of the files directly under the prefix ({} when there is none)."""
        try:
            entries = self._fs.ls(prefix, detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e["size"]) for e in entries if e["type"] == "file"}

    def _remote_sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        self._hash_into(digest, path)
        return digest.hexdigest()

    def _remote_folder_sha256(self, prefix: str, names: dict[str, int]) -> str:
        """sha256_folder of the objects under the prefix, streamed (never written to disk)."""
        digest = hashlib.sha256()
        for name in sorted(names):
            digest.update(name.encode())
            self._hash_into(digest, f"{prefix}/{name}")
        return digest.hexdigest()

    def _hash_into(self, digest: Any, path: str) -> None:
        with self._fs.open(path, "rb", block_size=_BLOCK, cache_type="none") as fh:
            while block := fh.read(_BLOCK):  # one ranged GET per block
                digest.update(block)


def _settle(tmp: Path, dest: Path) -> None:
    """Rename a verified download into the cache; another process that got there first wins."""
    try:
        os.replace(tmp, dest)
    except OSError:
        if not (dest.is_dir() and sha256_folder(dest) == sha256_folder(tmp)):
            raise


def open_store(url: str | Path, **storage_options: Any) -> ArtifactStore:
    """A store for a local path (or file:// URL) or any other fsspec URL."""
    text = str(url)
    protocol, sep, rest = text.partition("://")
    if not sep:
        return LocalArtifactStore(Path(text))
    if protocol == "file":
        return LocalArtifactStore(Path(rest))
    return FsspecArtifactStore(text, **storage_options)


def s3_options(settings: Settings) -> dict[str, Any]:
    """s3fs options from the MEDQA_S3_* settings; unset credentials leave s3fs its default chain."""
    opts: dict[str, Any] = {"use_listings_cache": False}  # another host's writes must show at once
    if settings.s3_endpoint_url:
        opts["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_region:
        opts["client_kwargs"] = {"region_name": settings.s3_region}
    if settings.s3_access_key_id:
        opts["key"] = settings.s3_access_key_id
    if settings.s3_secret_access_key is not None:
        opts["secret"] = settings.s3_secret_access_key.get_secret_value()
    return opts


def artifact_store(settings: Settings | None = None) -> ArtifactStore:
    """The store MEDQA_ARTIFACT_URL names; unset, MEDQA_ARTIFACT_DIR with files in place (the embedded default)."""
    s = settings or get_settings()
    url = s.artifact_url or str(s.artifacts)
    return open_store(url, **(s3_options(s) if url.startswith(("s3://", "s3a://")) else {}))


def cache_dir(settings: Settings | None = None) -> Path:
    """Where a host keeps the artifacts it fetched, by sha256 (never shared between hosts)."""
    return (settings or get_settings()).data_dir / "artifact-cache"


def local_folder(location: str, sha256: str, settings: Settings | None = None, *, what: str = "artifact",
                 required: str | None = None) -> Path:
    """A folder artifact (an adapter, a retrieval index version) as local files that hash to its sha256:
    fetched from the artifact store into this host's cache (object storage), or verified in place (a
    local store, or a row written before the store, whose absolute path is outside it). Refused, naming
    it, if the files differ; `required` names a file whose absence means there is nothing there."""
    store = artifact_store(settings)
    key = store.key_of(location)
    if key is None:
        path = Path(location)
        if not path.is_dir() or (required is not None and not (path / required).is_file()):
            raise ArtifactNotFound(f"no {what} at {path}")
        if sha256_folder(path) != sha256:
            raise ArtifactCorrupted(f"{what} files at {path} do not match the version's sha256; refused")
        return path
    return store.get_folder(key, sha256, cache_dir(settings))


def local_adapter(location: str, sha256: str, settings: Settings | None = None) -> Path:
    """A version's adapter as local files that hash to its sha256 (`local_folder`)."""
    return local_folder(location, sha256, settings, what="adapter", required="adapter_config.json")

"""A loopback Hugging Face Hub for the test suite.

No test machine reaches the Hub, so `push` and `load_dataset(repo, revision=tag)` run against
this in-memory stand-in. It speaks the subset of the Hub's HTTP API that huggingface_hub and
datasets use (see shared/reference/hub-http-api.md): repos, refs, commits (ndjson), the legacy
LFS upload path (Xet must be disabled in the client), tree listings and `resolve` downloads with
ranges. The server is standard library only, apart from PyYAML (a project dependency) for card
validation. ``patch_clients`` / ``client_env`` point huggingface_hub and datasets at a server.

Tokens: ``BAD_TOKEN`` gets 401 everywhere, ``READONLY_TOKEN`` gets 403 on writes, any other
token may read and write. Tests inject faults with ``fail_next(op, status)`` and hooks with
``before_next(op, fn)``; op names are the keys of ``OPS``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

if TYPE_CHECKING:
    import pytest

WRITE_TOKEN = "hf_test_write"
READONLY_TOKEN = "hf_test_readonly"
BAD_TOKEN = "hf_test_bad"
USER = "tester"

# Upload-mode rule (the Hub decides from .gitattributes; this is close enough for tests).
LFS_SUFFIXES = (".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".bin", ".safetensors", ".zip")
LFS_MIN_SIZE = 1_000_000

OPS = (
    "whoami",
    "create_repo",
    "delete_repo",
    "repo_info",
    "create_tag",
    "delete_tag",
    "create_branch",
    "delete_branch",
    "refs",
    "validate_yaml",
    "preupload",
    "lfs_batch",
    "lfs_upload",
    "lfs_verify",
    "commit",
    "tree",
    "paths_info",
    "commits",
    "resolve",
)

GITATTRIBUTES = (
    b"*.arrow filter=lfs diff=lfs merge=lfs -text\n"
    b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
    b"*.png filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_oid(data: bytes) -> str:
    """Git's object id of a blob: what the Hub reports as ``oid`` for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer text stored in git in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def card_metadata(text: str) -> dict[str, Any] | None:
    """Parse a README's YAML header; None when there is none. Raises yaml.YAMLError."""
    match = re.match(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", text, re.DOTALL)
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise yaml.YAMLError("the YAML header must be a mapping")
    return data


@dataclass(frozen=True)
class FileEntry:
    """One file in a commit. For LFS files ``oid`` is the pointer's git oid."""

    oid: str
    size: int
    lfs_sha256: str | None = None
    pointer_size: int = 0


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, FileEntry]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: dict[int, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    n_commits: int = 0  # commits made after creation (API or direct), for assertions


@dataclass
class _Fault:
    status: int
    message: str
    error_code: str | None


class HttpError(Exception):
    """An HTTP error answer: status, message and optional X-Error-Code."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.extra = dict(extra or {})  # more fields for the JSON body


class HubState:
    """All repos plus the blob and LFS stores; every access holds ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # git oid -> content (regular files)
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self._salt = hashlib.sha1(str(time.time_ns()).encode()).hexdigest()
        self._counter = 0

    # -- repos and revisions -------------------------------------------------------------------

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HttpError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        if (repo_type, repo_id) in self.repos:
            raise HttpError(409, "You already created this repo")
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
        self.repos[(repo_type, repo_id)] = repo
        # Like the Hub: a fresh repo has one commit holding .gitattributes.
        entry = self.store_regular(GITATTRIBUTES)
        sha = self._new_sha(None, {".gitattributes": entry}, "initial commit")
        repo.commits[sha] = Commit(
            sha, None, {".gitattributes": entry}, "initial commit", "", _now()
        )
        repo.branches["main"] = sha
        return repo

    def resolve(self, repo: Repo, rev: str) -> str:
        """Revision -> commit sha: branch, then tag, then PR ref, then full sha."""
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.tags:
            return repo.tags[rev]
        pr = re.fullmatch(r"refs/pr/(\d+)", rev)
        if pr and int(pr.group(1)) in repo.prs:
            return repo.prs[int(pr.group(1))]
        if rev in repo.commits:
            return rev
        raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # -- content -------------------------------------------------------------------------------

    def store_regular(self, data: bytes) -> FileEntry:
        oid = git_blob_oid(data)
        self.blobs[oid] = data
        return FileEntry(oid=oid, size=len(data))

    def lfs_entry(self, sha256: str, size: int) -> FileEntry:
        pointer = lfs_pointer(sha256, size)
        return FileEntry(
            oid=git_blob_oid(pointer), size=size, lfs_sha256=sha256, pointer_size=len(pointer)
        )

    def content(self, entry: FileEntry) -> bytes:
        return self.lfs[entry.lfs_sha256] if entry.lfs_sha256 else self.blobs[entry.oid]

    def add_commit(
        self, repo: Repo, parent: str | None, files: dict[str, FileEntry], title: str, message: str
    ) -> str:
        sha = self._new_sha(parent, files, title)
        repo.commits[sha] = Commit(sha, parent, files, title, message, _now())
        repo.n_commits += 1
        return sha

    def _new_sha(self, parent: str | None, files: Mapping[str, FileEntry], title: str) -> str:
        # Salted per server so that caches keyed by commit sha never mix two test servers.
        self._counter += 1
        h = hashlib.sha1(f"{self._salt}:{self._counter}:{parent}:{title}".encode())
        for path in sorted(files):
            h.update(f"{path}:{files[path].oid}".encode())
        return h.hexdigest()

    def last_commit(self, repo: Repo, sha: str, path: str) -> Commit:
        """The newest commit at or before ``sha`` that changed ``path`` (a file or a folder)."""

        def view(commit: Commit) -> dict[str, str]:
            prefix = path.rstrip("/") + "/"
            return {p: e.oid for p, e in commit.files.items() if p == path or p.startswith(prefix)}

        commit = repo.commits[sha]
        while commit.parent is not None:
            parent = repo.commits[commit.parent]
            if view(parent) != view(commit):
                return commit
            commit = parent
        return commit


def _tree_entry(
    state: HubState, repo: Repo, sha: str, path: str, expand: bool, is_dir: bool
) -> dict[str, Any]:
    files = repo.commits[sha].files
    if is_dir:
        prefix = path + "/"
        listing = "".join(
            f"{p}:{e.oid}\n" for p, e in sorted(files.items()) if p.startswith(prefix)
        )
        out: dict[str, Any] = {
            "type": "directory",
            "oid": hashlib.sha1(listing.encode()).hexdigest(),
            "size": 0,
            "path": path,
        }
    else:
        entry = files[path]
        out = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
        if entry.lfs_sha256:
            out["lfs"] = {
                "oid": entry.lfs_sha256,
                "size": entry.size,
                "pointerSize": entry.pointer_size,
            }
    if expand:
        last = state.last_commit(repo, sha, path)
        out["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
    return out


def _dirs_of(files: Mapping[str, FileEntry]) -> set[str]:
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return dirs


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; the server object carries ``hub`` (the HubServer)."""

    protocol_version = "HTTP/1.1"  # keep-alive: the clients reuse connections
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet test output; see HubServer.requests instead

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # -- plumbing --------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer never carries a body, errors included
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, err: HttpError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.error_code:
            headers["X-Error-Code"] = err.error_code
        if self.command == "HEAD":
            self._send(err.status, headers=headers, length=0)
        else:
            self._json({**err.extra, "error": err.message}, err.status, headers)

    def _handle(self) -> None:
        hub = self.server.hub
        body = self._read_body()  # always drain, so keep-alive stays in sync
        split = urlsplit(self.path)
        hub.requests.append((self.command, split.path))
        try:
            self._route(split.path, parse_qs(split.query), body)
        except HttpError as err:
            self._error(err)
        except Exception:  # a stub bug: report it as a 500 and keep it for the test to see
            hub.errors.append(traceback.format_exc())
            self._error(HttpError(500, "internal stub error"))

    # -- auth and faults ---------------------------------------------------------------------------

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _check(self, op: str, *, write: bool) -> str | None:
        """Apply token rules, then any injected hook or fault for ``op``; returns the token."""
        hub = self.server.hub
        token = self._token()
        if token in hub.bad_tokens:
            raise HttpError(401, "Invalid credentials in Authorization header")
        if write and token is None:
            raise HttpError(401, "You must be authenticated to do this")
        if write and token in hub.readonly_tokens:
            raise HttpError(403, "You don't have the rights to write to this repo")
        hook = hub._pop_hook(op)
        if hook is not None:
            hook()
        fault = hub._pop_fault(op)
        if fault is not None:
            raise HttpError(fault.status, fault.message, fault.error_code)
        return token

    def _readable_repo(self, repo_type: str, repo_id: str, token: str | None) -> Repo:
        repo = self.server.hub.state.get_repo(repo_type, repo_id)
        if repo.private and token is None:
            raise HttpError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    # -- routing -----------------------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, list[str]], body: bytes) -> None:
        # Split before unquoting: revisions and tree paths arrive with "/" quoted as %2F.
        segs = [s for s in path.split("/") if s != ""]
        method = self.command
        if segs[:2] == ["api", "whoami-v2"] and method == "GET":
            return self._whoami()
        if segs[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if segs[:3] == ["api", "repos", "delete"] and method == "DELETE":
            return self._delete_repo(json.loads(body or b"{}"))
        if segs[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if len(segs) >= 4 and segs[0] == "api" and segs[1] in ("models", "datasets", "spaces"):
            repo_type = segs[1][:-1]
            repo_id = f"{unquote(segs[2])}/{unquote(segs[3])}"
            return self._api_repo(repo_type, repo_id, segs[4:], query, body)
        if len(segs) == 2 and segs[0] == "lfs-upload" and method == "PUT":
            return self._lfs_put(segs[1], query, body)
        # Git and resolve URLs: [datasets/|spaces/]ns/name(.git/...|/resolve/...)
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces"):
            repo_type, segs = segs[0][:-1], segs[1:]
        if len(segs) >= 2 and segs[1].endswith(".git") and segs[2:5] == ["info", "lfs", "objects"]:
            repo_id = f"{unquote(segs[0])}/{unquote(segs[1][:-4])}"
            if segs[5:] == ["batch"] and method == "POST":
                return self._lfs_batch(repo_type, repo_id, json.loads(body or b"{}"))
            if segs[5:] == ["verify"] and method == "POST":
                return self._lfs_verify(repo_type, repo_id, json.loads(body or b"{}"))
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
            filename = unquote("/".join(segs[4:]))
            return self._resolve(repo_type, repo_id, unquote(segs[3]), filename)
        raise HttpError(404, f"no route for {method} {path}")

    def _api_repo(
        self,
        repo_type: str,
        repo_id: str,
        rest: list[str],
        query: dict[str, list[str]],
        body: bytes,
    ) -> None:
        method = self.command
        head = rest[0] if rest else ""
        arg = unquote(rest[1]) if len(rest) > 1 else "main"
        if not rest and method == "GET":
            return self._repo_info(repo_type, repo_id, "main")
        if head == "revision" and method == "GET":
            return self._repo_info(repo_type, repo_id, arg)
        if head == "tag" and method == "POST":
            return self._create_tag(repo_type, repo_id, arg, json.loads(body or b"{}"))
        if head == "tag" and method == "DELETE":
            return self._delete_tag(repo_type, repo_id, arg)
        if head == "branch" and method == "POST":
            return self._create_branch(repo_type, repo_id, arg, json.loads(body or b"{}"))
        if head == "branch" and method == "DELETE":
            return self._delete_branch(repo_type, repo_id, arg)
        if head == "refs" and method == "GET":
            return self._refs(repo_type, repo_id, bool(query.get("include_prs")))
        if head == "preupload" and method == "POST":
            return self._preupload(repo_type, repo_id, arg, json.loads(body or b"{}"))
        if head == "commit" and method == "POST":
            create_pr = query.get("create_pr", ["0"])[0] in ("1", "true")
            return self._commit(repo_type, repo_id, arg, body, create_pr)
        if head == "tree" and method == "GET":
            sub = "/".join(unquote(s) for s in rest[2:]).strip("/")
            flags = {k: v[0].lower() in ("1", "true") for k, v in query.items()}
            return self._tree(
                repo_type,
                repo_id,
                arg,
                sub,
                flags.get("recursive", False),
                flags.get("expand", False),
            )
        if head == "paths-info" and method == "POST":
            form = parse_qs(body.decode())
            expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
            return self._paths_info(repo_type, repo_id, arg, form.get("paths", []), expand)
        if head == "commits" and method == "GET":
            return self._commits(repo_type, repo_id, arg)
        if head in ("xet-write-token", "xet-read-token"):
            raise HttpError(501, "this stub has no Xet storage: set HF_HUB_DISABLE_XET=1")
        raise HttpError(404, f"no route for {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    # -- endpoints -------------------------------------------------------------------------------

    def _whoami(self) -> None:
        hub = self.server.hub
        token = self._check("whoami", write=False)
        if token is None:
            raise HttpError(401, "Invalid credentials in Authorization header")
        role = "read" if token in hub.readonly_tokens else "write"
        self._json(
            {
                "type": "user",
                "name": hub.user,
                "fullname": hub.user,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "test", "role": role},
                },
            }
        )

    def _create_repo(self, payload: dict[str, Any]) -> None:
        hub = self.server.hub
        self._check("create_repo", write=True)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or hub.user}/{payload['name']}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{hub.url}/{prefix}{repo_id}"
        with hub.state.lock:
            if (repo_type, repo_id) in hub.state.repos:
                # The client reads "url" from the 409 body too (create_repo(exist_ok=True)).
                raise HttpError(409, "You already created this repo", extra={"url": url})
            hub.state.create_repo(repo_type, repo_id, private)
        self._json({"url": url, "name": repo_id})

    def _delete_repo(self, payload: dict[str, Any]) -> None:
        hub = self.server.hub
        self._check("delete_repo", write=True)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or hub.user}/{payload['name']}"
        with hub.state.lock:
            hub.state.get_repo(repo_type, repo_id)
            del hub.state.repos[(repo_type, repo_id)]
        self._json({})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        self._check("validate_yaml", write=False)
        try:
            card_metadata(payload.get("content", ""))
        except yaml.YAMLError as err:
            self._json({"errors": [{"message": f"Invalid YAML in README.md: {err}"}]}, 400)
            return
        self._json({"warnings": []})

    def _repo_info(self, repo_type: str, repo_id: str, rev: str) -> None:
        state = self.server.hub.state
        token = self._check("repo_info", write=False)
        with state.lock:
            repo = self._readable_repo(repo_type, repo_id, token)
            sha = state.resolve(repo, rev)
            commit = repo.commits[sha]
            siblings = []
            for path, entry in sorted(commit.files.items()):
                sib: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.oid}
                if entry.lfs_sha256:
                    sib["lfs"] = {
                        "sha256": entry.lfs_sha256,
                        "size": entry.size,
                        "pointerSize": entry.pointer_size,
                    }
                siblings.append(sib)
            card: dict[str, Any] | None = None
            if "README.md" in commit.files:
                try:
                    card = card_metadata(state.content(commit.files["README.md"]).decode())
                except (yaml.YAMLError, UnicodeDecodeError):
                    card = None
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": sha,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": repo.created_at,
            "lastModified": commit.date,
            "siblings": siblings,
            "cardData": card,
        }
        self._json(info)

    def _create_tag(self, repo_type: str, repo_id: str, rev: str, payload: dict[str, Any]) -> None:
        state = self.server.hub.state
        self._check("create_tag", write=True)
        tag = payload.get("tag")
        if not tag:
            raise HttpError(400, "missing tag name")
        with state.lock:
            repo = state.get_repo(repo_type, repo_id)
            sha = state.resolve(repo, rev)
            if tag in repo.tags:
                raise HttpError(409, f"Tag {tag} already exists")
            repo.tags[tag] = sha
        self._json({})

    def _delete_tag(self, repo_type: str, repo_id: str, tag: str) -> None:
        state = self.server.hub.state
        self._check("delete_tag", write=True)
        with state.lock:
            repo = state.get_repo(repo_type, repo_id)
            if tag not in repo.tags:
                raise HttpError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
            del repo.tags[tag]
        self._json({})

    def _create_branch(
        self, repo_type: str, repo_id: str, branch: str, payload: dict[str, Any]
    ) -> None:
        state = self.server.hub.state
        self._check("create_branch", write=True)
        with state.lock:
            repo = state.get_repo(repo_type, repo_id)
            if branch in repo.branches:
                raise HttpError(409, f"Branch {branch} already exists")
            repo.branches[branch] = state.resolve(repo, payload.get("startingPoint") or "main")
        self._json({})

    def _delete_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        state = self.server.hub.state
        self._check("delete_branch", write=True)
        with state.lock:
            repo = state.get_repo(repo_type, repo_id)
            if branch not in repo.branches or branch == "main":
                raise HttpError(404 if branch != "main" else 403, f"cannot delete branch {branch}")
            del repo.branches[branch]
        self._json({})

    def _refs(self, repo_type: str, repo_id: str, include_prs: bool) -> None:
        state = self.server.hub.state
        token = self._check("refs", write=False)
        with state.lock:
            repo = self._readable_repo(repo_type, repo_id, token)

            def refs(items: Mapping[str, str], kind: str) -> list[dict[str, str]]:
                return [
                    {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s}
                    for n, s in sorted(items.items())
                ]

            out: dict[str, Any] = {
                "branches": refs(repo.branches, "heads"),
                "tags": refs(repo.tags, "tags"),
                "converts": [],
            }
            if include_prs:
                out["pullRequests"] = [
                    {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": s}
                    for n, s in sorted(repo.prs.items())
                ]
        self._json(out)

    def _preupload(self, repo_type: str, repo_id: str, rev: str, payload: dict[str, Any]) -> None:
        state = self.server.hub.state
        self._check("preupload", write=True)
        with state.lock:
            repo = state.get_repo(repo_type, repo_id)
            try:
                files = repo.commits[state.resolve(repo, rev)].files
            except HttpError:
                files = {}  # committing to a branch that does not exist yet
        out = []
        for item in payload.get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample", ""))
            lfs = (
                path.lower().endswith(LFS_SUFFIXES)
                or int(item.get("size", 0)) >= LFS_MIN_SIZE
                or b"\0" in sample
            )
            existing = files.get(path)
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if lfs else existing.oid
            out.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._json({"files": out})

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict[str, Any]) -> None:
        hub = self.server.hub
        self._check("lfs_batch", write=payload.get("operation") == "upload")
        with hub.state.lock:
            hub.state.get_repo(repo_type, repo_id)
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            objects = []
            for obj in payload.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                if oid in hub.state.lfs:
                    objects.append({"oid": oid, "size": size})  # no actions: already stored
                    continue
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "upload": {"href": f"{hub.url}/lfs-upload/{oid}?size={size}"},
                            "verify": {
                                "href": f"{hub.url}/{prefix}{repo_id}.git/info/lfs/objects/verify",
                                "header": {},
                            },
                        },
                    }
                )
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self._send(200, body, content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str, query: dict[str, list[str]], body: bytes) -> None:
        state = self.server.hub.state
        self._check("lfs_upload", write=False)  # pre-signed URL: no token, like S3
        if hashlib.sha256(body).hexdigest() != oid:
            raise HttpError(400, "sha256 of the uploaded content does not match the oid")
        if "size" in query and int(query["size"][0]) != len(body):
            raise HttpError(400, "size of the uploaded content does not match")
        with state.lock:
            state.lfs[oid] = body
        self._send(200, b"", headers={"ETag": f'"{oid}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str, payload: dict[str, Any]) -> None:
        state = self.server.hub.state
        self._check("lfs_verify", write=True)
        with state.lock:
            data = state.lfs.get(payload.get("oid", ""))
        if data is None or len(data) != int(payload.get("size", -1)):
            raise HttpError(404, "LFS object not found")
        self._json({})

    def _commit(self, repo_type: str, repo_id: str, rev: str, body: bytes, create_pr: bool) -> None:
        hub = self.server.hub
        state = hub.state
        self._check("commit", write=True)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "the first ndjson line must be the header")
        header = lines[0]["value"]
        with state.lock:
            repo = state.get_repo(repo_type, repo_id)
            pr = re.fullmatch(r"refs/pr/(\d+)", rev)
            if rev in repo.branches:
                head = repo.branches[rev]
            elif pr and int(pr.group(1)) in repo.prs:
                head = repo.prs[int(pr.group(1))]
            else:
                raise HttpError(400, f"Invalid rev id: {rev} is not a branch", "RevisionNotFound")
            parent_commit = header.get("parentCommit")
            if parent_commit and parent_commit != head:
                raise HttpError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head].files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if key == "file":
                    files[path] = state.store_regular(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    data = state.lfs.get(value["oid"])
                    if data is None:
                        raise HttpError(
                            422, f"{path}: LFS pointer to an object that was never uploaded"
                        )
                    files[path] = state.lfs_entry(value["oid"], len(data))
                elif key == "deletedFile":
                    if path not in files:
                        raise HttpError(
                            404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                        )
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                else:
                    raise HttpError(400, f"unknown commit operation {key!r}")
            if "README.md" in files:
                try:
                    card_metadata(state.content(files["README.md"]).decode())
                except (yaml.YAMLError, UnicodeDecodeError) as err:
                    raise HttpError(400, f"Invalid metadata in README.md: {err}") from err
            sha = state.add_commit(
                repo, head, files, header.get("summary", ""), header.get("description", "")
            )
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            pr_url = None
            if create_pr and not pr:
                number = max([0, *repo.prs]) + 1
                repo.prs[number] = sha
                pr_url = f"{hub.url}/{prefix}{repo_id}/discussions/{number}"
            elif pr:
                repo.prs[int(pr.group(1))] = sha
            else:
                repo.branches[rev] = sha
        self._json(
            {
                "commitOid": sha,
                "commitUrl": f"{hub.url}/{prefix}{repo_id}/commit/{sha}",
                "pullRequestUrl": pr_url,
            }
        )

    def _tree(
        self, repo_type: str, repo_id: str, rev: str, sub: str, recursive: bool, expand: bool
    ) -> None:
        state = self.server.hub.state
        token = self._check("tree", write=False)
        with state.lock:
            repo = self._readable_repo(repo_type, repo_id, token)
            sha = state.resolve(repo, rev)
            files = repo.commits[sha].files
            dirs = _dirs_of(files)
            if sub and sub not in dirs:
                raise HttpError(404, f"{sub} does not exist on {rev}", "EntryNotFound")
            prefix = f"{sub}/" if sub else ""
            out = []
            for path in sorted(dirs | set(files)):
                if not path.startswith(prefix):
                    continue
                if not recursive and "/" in path[len(prefix) :]:
                    continue
                out.append(_tree_entry(state, repo, sha, path, expand, path in dirs))
        # Folders first, like the Hub.
        out.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        self._json(out)

    def _paths_info(
        self, repo_type: str, repo_id: str, rev: str, paths: list[str], expand: bool
    ) -> None:
        state = self.server.hub.state
        token = self._check("paths_info", write=False)
        with state.lock:
            repo = self._readable_repo(repo_type, repo_id, token)
            sha = state.resolve(repo, rev)
            files = repo.commits[sha].files
            dirs = _dirs_of(files)
            out = [
                _tree_entry(state, repo, sha, p.strip("/"), expand, p.strip("/") in dirs)
                for p in paths
                if p.strip("/") in files or p.strip("/") in dirs
            ]
        self._json(out)

    def _commits(self, repo_type: str, repo_id: str, rev: str) -> None:
        hub = self.server.hub
        token = self._check("commits", write=False)
        with hub.state.lock:
            repo = self._readable_repo(repo_type, repo_id, token)
            sha: str | None = hub.state.resolve(repo, rev)
            out = []
            while sha is not None:
                commit = repo.commits[sha]
                out.append(
                    {
                        "id": commit.sha,
                        "title": commit.title,
                        "message": commit.message,
                        "authors": [{"user": hub.user, "avatar": None}],
                        "date": commit.date,
                    }
                )
                sha = commit.parent
        self._json(out)

    def _resolve(self, repo_type: str, repo_id: str, rev: str, filename: str) -> None:
        state = self.server.hub.state
        token = self._check("resolve", write=False)
        with state.lock:
            repo = self._readable_repo(repo_type, repo_id, token)
            sha = state.resolve(repo, rev)
            entry = repo.commits[sha].files.get(filename)
            if entry is None:
                raise HttpError(404, f"Entry not found: {filename}", "EntryNotFound")
            data = state.content(entry)
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{entry.lfs_sha256 or entry.oid}"',
            "Accept-Ranges": "bytes",
        }
        content_type = "application/octet-stream"
        byte_range = self.headers.get("Range")
        if byte_range:
            match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", byte_range)
            if match is None or (not match.group(1) and not match.group(2)):
                raise HttpError(416, "malformed Range header")
            if match.group(1):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
            else:  # suffix range: the last N bytes
                start, end = max(0, len(data) - int(match.group(2))), len(data) - 1
            end = min(end, len(data) - 1)
            if start >= len(data) or start > end:
                headers["Content-Range"] = f"bytes */{len(data)}"
                raise HttpError(416, "Range Not Satisfiable")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._send(206, data[start : end + 1], content_type=content_type, headers=headers)
            return
        self._send(200, data, content_type=content_type, headers=headers)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class HubServer:
    """The loopback Hub: ``with HubServer() as hub: ... hub.url ...``."""

    def __init__(
        self,
        *,
        readonly_tokens: tuple[str, ...] = (READONLY_TOKEN,),
        bad_tokens: tuple[str, ...] = (BAD_TOKEN,),
        user: str = USER,
    ) -> None:
        self.readonly_tokens = frozenset(readonly_tokens)
        self.bad_tokens = frozenset(bad_tokens)
        self.user = user
        self.state = HubState()
        self.requests: list[tuple[str, str]] = []  # (method, path), for assertions and debugging
        self.errors: list[str] = []  # tracebacks of stub bugs (answered as 500)
        self._faults: dict[str, list[_Fault]] = {}
        self._hooks: dict[str, list[Callable[[], None]]] = {}
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> HubServer:
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.hub = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="hubserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- fault injection ---------------------------------------------------------------------------

    def fail_next(
        self,
        op: str,
        status: int = 500,
        *,
        times: int = 1,
        message: str | None = None,
        error_code: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests of ``op`` with ``status``, changing nothing."""
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
        fault = _Fault(status, message or f"injected failure ({status})", error_code)
        with self.state.lock:
            self._faults.setdefault(op, []).extend([fault] * times)

    def before_next(self, op: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` once, just before the next ``op`` is handled (e.g. a concurrent commit)."""
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
        with self.state.lock:
            self._hooks.setdefault(op, []).append(fn)

    def _pop_fault(self, op: str) -> _Fault | None:
        with self.state.lock:
            queue = self._faults.get(op)
            return queue.pop(0) if queue else None

    def _pop_hook(self, op: str) -> Callable[[], None] | None:
        with self.state.lock:
            queue = self._hooks.get(op)
            return queue.pop(0) if queue else None

    # -- direct state access for tests -------------------------------------------------------------

    def commit_count(self, repo_id: str, repo_type: str = "dataset") -> int:
        """Commits made in ``repo_id`` since it was created (all branches and PRs)."""
        with self.state.lock:
            repo = self.state.repos.get((repo_type, repo_id))
            return 0 if repo is None else repo.n_commits

    def has_repo(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self.state.lock:
            return (repo_type, repo_id) in self.state.repos

    def tags(self, repo_id: str, repo_type: str = "dataset") -> dict[str, str]:
        with self.state.lock:
            return dict(self.state.get_repo(repo_type, repo_id).tags)

    def branches(self, repo_id: str, repo_type: str = "dataset") -> dict[str, str]:
        with self.state.lock:
            return dict(self.state.get_repo(repo_type, repo_id).branches)

    def pull_requests(self, repo_id: str, repo_type: str = "dataset") -> dict[int, str]:
        with self.state.lock:
            return dict(self.state.get_repo(repo_type, repo_id).prs)

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "dataset") -> str:
        with self.state.lock:
            return self.state.get_repo(repo_type, repo_id).branches[branch]

    def list_files(
        self, repo_id: str, revision: str = "main", repo_type: str = "dataset"
    ) -> list[str]:
        with self.state.lock:
            repo = self.state.get_repo(repo_type, repo_id)
            return sorted(repo.commits[self.state.resolve(repo, revision)].files)

    def read_file(
        self, repo_id: str, path: str, revision: str = "main", repo_type: str = "dataset"
    ) -> bytes:
        with self.state.lock:
            repo = self.state.get_repo(repo_type, repo_id)
            files = repo.commits[self.state.resolve(repo, revision)].files
            return self.state.content(files[path])

    def commit_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes | None],
        *,
        branch: str = "main",
        message: str = "edit on the Hub",
        repo_type: str = "dataset",
    ) -> str:
        """Commit directly (as a web edit would): ``None`` deletes a path. Returns the sha."""
        with self.state.lock:
            repo = self.state.get_repo(repo_type, repo_id)
            head = repo.branches[branch]
            tree = dict(repo.commits[head].files)
            for path, data in files.items():
                if data is None:
                    tree.pop(path, None)
                elif path.endswith(LFS_SUFFIXES):
                    sha256 = hashlib.sha256(data).hexdigest()
                    self.state.lfs[sha256] = data
                    tree[path] = self.state.lfs_entry(sha256, len(data))
                else:
                    tree[path] = self.state.store_regular(data)
            sha = self.state.add_commit(repo, head, tree, message, "")
            repo.branches[branch] = sha
            return sha


# -- pointing the clients at a server ------------------------------------------------------------


def client_env(endpoint: str, home: Path, token: str | None = WRITE_TOKEN) -> dict[str, str]:
    """Env vars for a subprocess whose huggingface_hub / datasets must use ``endpoint``.

    Xet must be off: with it, uploads take the Xet path, which this stub does not serve.
    """
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
    }
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def patch_clients(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path, token: str | None = WRITE_TOKEN
) -> None:
    """Point this process's huggingface_hub and datasets at ``endpoint`` (undone by monkeypatch).

    Both libraries copy env vars into module constants at import, and other test files may have
    imported them already, so the constants are patched as well as the env.
    """
    import datasets.config
    import datasets.utils.tqdm
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.hf_api
    import huggingface_hub.utils.tqdm

    for key, value in client_env(endpoint, home, token).items():
        monkeypatch.setenv(key, value)  # for subprocesses and for code that reads env per call
    for key in ("HF_TOKEN_PATH", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(key, raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)

    hub_cache = str(home / "hub")
    hf_patches: dict[str, object] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_TOKEN_PATH": str(home / "token"),  # no stored login unless a test writes one
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for name, value in hf_patches.items():
        monkeypatch.setattr(hf_constants, name, value, raising=False)
    # Module-level helpers (huggingface_hub.create_repo, ...) are bound to this instance.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)

    datasets_cache = home / "datasets"
    ds_patches: dict[str, object] = {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_UPDATE_DOWNLOAD_COUNTS": False,
        "HF_CACHE_HOME": str(home),
        "HF_DATASETS_CACHE": datasets_cache,
        "DOWNLOADED_DATASETS_PATH": datasets_cache / "downloads",
        "EXTRACTED_DATASETS_PATH": datasets_cache / "downloads" / "extracted",
    }
    for name, value in ds_patches.items():
        monkeypatch.setattr(datasets.config, name, value, raising=False)

    # Progress bars also read their switch at import; quiet them so failures read well.
    monkeypatch.setattr(
        huggingface_hub.utils.tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True, raising=False
    )
    monkeypatch.setattr(
        datasets.utils.tqdm, "_hf_datasets_progress_bars_disabled", True, raising=False
    )

"""Publish a dataset folder to a Hub dataset repo, as one commit tagged ``v<version>``.

Promises (DESIGN.md, "Publishable"): the whole folder lands in one commit; the tag is created
only after that commit exists, so a failure never leaves a tag on partial content and re-running
simply works; pushing the same content again is a no-op; a tag is never moved to different
content. Card edits made on the Hub survive: the README on the Hub is merged with the local one
by ``synth_disco.dataset.readme.merge_readme``, the same merge the card is rendered with (only
the part between the synth-disco markers and the YAML keys synth-disco writes are replaced).
Nothing that ``synth_disco.dataset.portable.LeakScan`` finds (the token, local paths) is uploaded.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from synth_disco.dataset.portable import LeakScan
from synth_disco.dataset.readme import merge_readme
from synth_disco.errors import SynthDiscoError

README = "README.md"
# Folders synth-disco owns in the repo: files there that the local folder lacks are deleted.
# Everything else on the Hub (.gitattributes, files users added) is left alone.
MANAGED_DIRS = ("data/", "synth_disco/", "figures/")
NO_TOKEN_MESSAGE = "no Hugging Face token: set HF_TOKEN or run `hf auth login`"

_MAX_ATTEMPTS = 4  # commits retried after a concurrent change (412) or a commit in progress (409)
_BACKOFF_S = 0.5
_CHUNK = 1 << 20

PushStatus = Literal["pushed", "unchanged", "pr_opened"]


class HubError(SynthDiscoError):
    """A publishing failure with a message meant for the user (no traceback needed)."""


@dataclass(frozen=True)
class PushResult:
    """What ``push_folder`` did. ``tag`` is None when no tag was created (pull requests)."""

    repo_id: str
    tag: str | None
    commit_sha: str
    url: str
    status: PushStatus
    pr_url: str | None = None
    message: str = ""


@dataclass(frozen=True)
class _LocalFile:
    """One file to publish; ``data`` is set when the content differs from the file on disk."""

    path: str
    source: Path
    size: int
    sha1: str  # git blob oid: what the Hub reports for regular files
    sha256: str  # what the Hub reports for LFS files
    data: bytes | None = None

    def operation(self) -> CommitOperationAdd:
        content: bytes | str = self.data if self.data is not None else str(self.source)
        return CommitOperationAdd(path_in_repo=self.path, path_or_fileobj=content)

    def read(self) -> bytes:
        return self.data if self.data is not None else self.source.read_bytes()


# -- local and remote files ----------------------------------------------------------------------


def _hash_file(source: Path, rel: str, scan: LeakScan) -> _LocalFile:
    """git blob sha1 + sha256 in one pass, scanning for things that must not be published."""
    size = source.stat().st_size
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    sha256 = hashlib.sha256()
    tail = b""
    with source.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha1.update(chunk)
            sha256.update(chunk)
            _check_clean(tail + chunk, rel, scan)
            tail = chunk[-scan.overlap :]
    return _LocalFile(rel, source, size, sha1.hexdigest(), sha256.hexdigest())


def _check_clean(data: bytes, rel: str, scan: LeakScan) -> None:
    what = scan.find(data)
    if what is not None:
        raise HubError(f"{rel}: contains {what}; refusing to upload it")


def _scan_folder(folder: Path, scan: LeakScan) -> dict[str, _LocalFile]:
    """Every file to publish, keyed by repo path. Hidden files and folders are skipped."""
    files: dict[str, _LocalFile] = {}
    for source in sorted(folder.rglob("*")):
        rel = source.relative_to(folder).as_posix()
        if not source.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        files[rel] = _hash_file(source, rel, scan)
    if not files:
        raise HubError(f"{folder.name}: the dataset folder is empty")
    return files


def _with_content(file: _LocalFile, data: bytes) -> _LocalFile:
    sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return _LocalFile(
        file.path, file.source, len(data), sha1, hashlib.sha256(data).hexdigest(), data
    )


def _remote_files(api: HfApi, repo_id: str, revision: str) -> dict[str, RepoFile]:
    # The tree listing carries `lfs` (with the sha256) without `expand`, which stays cheap.
    entries = api.list_repo_tree(repo_id, recursive=True, revision=revision, repo_type="dataset")
    return {e.path: e for e in entries if isinstance(e, RepoFile)}


def _read_remote(api: HfApi, repo_id: str, path: str, revision: str) -> str:
    url = f"{api.endpoint}/datasets/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"
    response = get_session().get(url, headers=build_hf_headers(token=api.token))
    hf_raise_for_status(response)
    return response.content.decode("utf-8", errors="replace")


def _same(local: _LocalFile, remote: RepoFile) -> bool:
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    return remote.blob_id == local.sha1


def _diff(
    local: Mapping[str, _LocalFile], remote: Mapping[str, RepoFile]
) -> tuple[list[_LocalFile], list[str]]:
    """Files to add or update, and stale files in managed folders to delete."""
    adds = [f for p, f in local.items() if p not in remote or not _same(f, remote[p])]
    deletes = [p for p in remote if p not in local and p.startswith(MANAGED_DIRS)]
    return adds, deletes


# -- errors --------------------------------------------------------------------------------------


def _is_network_error(err: BaseException) -> bool:
    if isinstance(err, HfHubHTTPError):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    # httpx / httpx2 transport failures (connection refused, DNS, timeouts), whichever is used.
    return any(cls.__name__ == "TransportError" for cls in type(err).__mro__)


def _cause(err: BaseException) -> BaseException:
    """The HTTP or network error behind wrappers such as "Error while uploading ..."."""
    seen = err
    while seen is not None:
        if isinstance(seen, HfHubHTTPError) or _is_network_error(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return err


@contextmanager
def _hub_errors(endpoint: str, repo_id: str) -> Iterator[None]:
    """Turn client exceptions into HubError messages that say what to do."""
    try:
        yield
    except HubError:
        raise
    except OfflineModeIsEnabled as err:
        raise HubError("HF_HUB_OFFLINE is set: unset it to push") from err
    except Exception as err:
        if isinstance(err, ValueError) and "README.md" in str(err):
            raise HubError(f"the Hub rejected README.md: {err}") from err
        cause = _cause(err)
        if isinstance(cause, HfHubHTTPError):
            status = cause.response.status_code if cause.response is not None else None
            if status == 401:
                raise HubError(
                    "token rejected (401): check HF_TOKEN or run `hf auth login`"
                ) from err
            if status == 403:
                raise HubError(f"token lacks write access to {repo_id} (403)") from err
            if status in (409, 412):
                raise HubError(
                    f"{repo_id} kept changing on the Hub while pushing ({status}); run push again"
                ) from err
            if status == 404:
                raise HubError(f"dataset repo {repo_id} not found on {endpoint} (404)") from err
            detail = cause.server_message or str(cause).strip().splitlines()[0]
            raise HubError(f"Hub request failed ({status}): {detail}") from err
        if _is_network_error(cause):
            raise HubError(f"cannot reach {endpoint} ({type(cause).__name__})") from err
        raise


# -- publishing ----------------------------------------------------------------------------------


class _Publisher:
    """One push: the folder's files, the client, and the repo being published to."""

    def __init__(
        self,
        api: HfApi,
        repo_id: str,
        tag: str,
        local: dict[str, _LocalFile],
        *,
        overwrite_card: bool,
        scan: LeakScan,
    ) -> None:
        self.api = api
        self.repo_id = repo_id
        self.tag = tag
        self.local = local
        self.overwrite_card = overwrite_card
        self.scan = scan  # what must never be uploaded (token, local paths)

    @property
    def url(self) -> str:
        return f"{self.api.endpoint}/datasets/{self.repo_id}"

    def files_against(self, remote: Mapping[str, RepoFile], revision: str) -> dict[str, _LocalFile]:
        """The local files with the local README.md merged into the README at ``revision``
        (unless ``overwrite_card``: then the local one replaces it)."""
        readme = self.local.get(README)
        if readme is None or README not in remote or self.overwrite_card:
            return dict(self.local)
        local_text = readme.read().decode("utf-8")
        remote_text = _read_remote(self.api, self.repo_id, README, revision)
        merged = merge_readme(remote_text, local_text, known_generated=self._tagged_cards())
        if merged == local_text:
            return dict(self.local)
        data = merged.encode("utf-8")
        _check_clean(data, README, self.scan)
        return {**self.local, README: _with_content(readme, data)}

    def _tagged_cards(self) -> Iterator[str]:
        """README.md at each version tag: cards synth-disco published earlier."""
        refs = self.api.list_repo_refs(self.repo_id, repo_type="dataset")
        for ref in refs.tags:
            if re.fullmatch(r"v\d.*", ref.name):
                try:
                    yield _read_remote(self.api, self.repo_id, README, ref.target_commit)
                except HfHubHTTPError:
                    continue

    def existing_tag(self) -> PushResult | None:
        """None when the tag is free; "unchanged" when it holds this content; else refuse."""
        refs = self.api.list_repo_refs(self.repo_id, repo_type="dataset")
        target = {ref.name: ref.target_commit for ref in refs.tags}.get(self.tag)
        if target is None:
            return None
        remote = _remote_files(self.api, self.repo_id, target)
        adds, deletes = _diff(self.files_against(remote, target), remote)
        if adds or deletes:
            example = adds[0].path if adds else deletes[0]
            raise HubError(
                f"tag {self.tag} already exists on {self.repo_id} with different content "
                f"({len(adds) + len(deletes)} file(s) differ, e.g. {example}); "
                "bump `version` in the recipe to publish a new version"
            )
        return PushResult(
            self.repo_id,
            self.tag,
            target,
            f"{self.url}/tree/{quote(self.tag, safe='')}",
            "unchanged",
            message=f"{self.repo_id} already has {self.tag} with this content; nothing to do",
        )

    def commit(self, message: str | None, create_pr: bool) -> tuple[str, str | None, int] | None:
        """Make the one commit (retrying concurrent changes). Returns (sha, pr_url, n_changed).

        Returns None when main already holds exactly these files and a pull request was asked.
        """
        for attempt in range(_MAX_ATTEMPTS):
            head = self.api.repo_info(self.repo_id, repo_type="dataset", revision="main").sha
            remote = _remote_files(self.api, self.repo_id, head)
            adds, deletes = _diff(self.files_against(remote, head), remote)
            if not adds and not deletes:
                return None if create_pr else (head, None, 0)
            operations: list[CommitOperationAdd | CommitOperationDelete] = [
                f.operation() for f in adds
            ]
            operations += [CommitOperationDelete(path_in_repo=p) for p in deletes]
            verb = "Propose" if create_pr else "Publish"
            description = "Generated by synth-disco."
            if create_pr:
                description += (
                    f" Once merged, tag the merge commit {self.tag} (running `synth-disco push`"
                    " again does it)."
                )
            try:
                info = self.api.create_commit(
                    self.repo_id,
                    operations,
                    commit_message=message or f"{verb} {self.tag} (synth-disco)",
                    commit_description=description,
                    repo_type="dataset",
                    revision="main",
                    create_pr=create_pr,
                    # A PR starts from main as it is when it is opened; a direct commit must not
                    # overwrite a change that landed since we read `head` (the Hub answers 412).
                    parent_commit=None if create_pr else head,
                )
            except HfHubHTTPError as err:
                status = err.response.status_code if err.response is not None else None
                if status in (409, 412) and attempt + 1 < _MAX_ATTEMPTS:
                    time.sleep(_BACKOFF_S * 2**attempt)
                    continue
                raise
            return info.oid, info.pr_url, len(adds) + len(deletes)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _version_tag(version: str) -> str:
    version = version.strip()
    if not version:
        raise HubError("version is empty: set `version` in the recipe")
    return version if version.startswith("v") else f"v{version}"


def push_folder(
    folder: Path,
    repo_id: str,
    version: str,
    *,
    token: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    message: str | None = None,
    overwrite_card: bool = False,
) -> PushResult:
    """Publish ``folder`` to the dataset repo ``repo_id`` in one commit tagged ``v<version>``.

    Idempotent: the same content again gives status "unchanged" and no commit; an existing tag
    with other content is refused. With ``create_pr`` the commit goes to a pull request and no
    tag is made (the maintainer tags after merging). Raises ``HubError`` with a user message.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder}: dataset folder not found")
    token = token or get_token()
    if not token:
        raise HubError(NO_TOKEN_MESSAGE)
    tag = _version_tag(version)
    scan = LeakScan.around(folder.resolve(), token=token)
    local = _scan_folder(folder.resolve(), scan)

    api = HfApi(token=token)
    with _hub_errors(api.endpoint, repo_id):
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        api.create_repo(repo_id, repo_type="dataset", private=private or None, exist_ok=True)
        publisher = _Publisher(api, repo_id, tag, local, overwrite_card=overwrite_card, scan=scan)
        if (done := publisher.existing_tag()) is not None:
            return done

        committed = publisher.commit(message, create_pr)
        if committed is None:
            head = api.repo_info(repo_id, repo_type="dataset", revision="main").sha
            return PushResult(
                repo_id,
                None,
                head,
                publisher.url,
                "unchanged",
                message=f"main of {repo_id} already has this content; no pull request opened",
            )
        sha, pr_url, n_changed = committed
        if create_pr:
            return PushResult(
                repo_id,
                None,
                sha,
                pr_url or publisher.url,
                "pr_opened",
                pr_url=pr_url,
                message=(
                    f"opened {pr_url}; {tag} is not created: after the pull request is merged, "
                    f"run push again (or tag the merge commit {tag})"
                ),
            )
        try:
            api.create_tag(
                repo_id,
                tag=tag,
                revision=sha,
                repo_type="dataset",
                tag_message=f"synth-disco dataset {tag}",
            )
        except HfHubHTTPError as err:
            if err.response is None or err.response.status_code != 409:
                raise
            # Tagged concurrently: fine if it holds this content, refused otherwise.
            done = publisher.existing_tag()
            if done is None:
                raise
            return done
        what = f"{n_changed} file(s) changed" if n_changed else "main already had this content"
        return PushResult(
            repo_id,
            tag,
            sha,
            f"{publisher.url}/tree/{quote(tag, safe='')}",
            "pushed",
            message=f"published {repo_id} at {tag} ({what})",
        )

"""Publish a dataset folder to a Hub dataset repo, as one commit tagged ``v<version>``.

Promises (DESIGN.md, "Publishable"): the whole folder lands in one commit; the tag is created
only after that commit exists, so a failure never leaves a tag on partial content and re-running
simply works; pushing the same content again is a no-op; a tag is never moved to different
content. Card edits made on the Hub survive: only the part of README.md between the synth-disco
markers (and the YAML keys synth-disco writes) is replaced.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import yaml
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from synth_disco.errors import SynthDiscoError

CARD_BEGIN = "<!-- synth-disco:begin -->"
CARD_END = "<!-- synth-disco:end -->"
README = "README.md"
# Folders synth-disco owns in the repo: files there that the local folder lacks are deleted.
# Everything else on the Hub (.gitattributes, files users added) is left alone.
MANAGED_DIRS = ("data/", "synth_disco/", "figures/")
NO_TOKEN_MESSAGE = "no Hugging Face token: set HF_TOKEN or run `hf auth login`"

_MAX_ATTEMPTS = 4  # commits retried after a concurrent change (412) or a commit in progress (409)
_BACKOFF_S = 0.5
_CHUNK = 1 << 20
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?\r?\n)?---[ \t]*(?:\r?\n|\Z)", re.DOTALL)

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


# -- the card ------------------------------------------------------------------------------------


def _split_card(text: str) -> tuple[str | None, str]:
    """(YAML header text or None, body)."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return None, text
    return match.group(1) or "", text[match.end() :]


def _load_meta(yaml_text: str | None, where: str) -> dict[str, Any]:
    if not yaml_text:
        return {}
    try:
        data = yaml.safe_load(yaml_text)
    except yaml.YAMLError as err:
        raise HubError(f"{where}: invalid YAML header: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HubError(f"{where}: the YAML header must be a mapping")
    return data


def _is_scalar(value: object) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _merge_meta(local: Mapping[str, Any], remote: Mapping[str, Any]) -> dict[str, Any]:
    """Local keys win; remote-only keys stay; lists of scalars (tags, languages) are unioned.

    Structured values (configs, dataset_info) are synth-disco's own and are taken from local
    as a whole, so a stale config entry from an older version cannot survive.
    """
    merged = dict(local)
    for key, remote_value in remote.items():
        if key not in merged:
            merged[key] = remote_value
            continue
        local_value = merged[key]
        if (
            isinstance(local_value, list)
            and isinstance(remote_value, list)
            and all(_is_scalar(v) for v in [*local_value, *remote_value])
        ):
            merged[key] = local_value + [v for v in remote_value if v not in local_value]
    return merged


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def merge_card(remote: str, local: str, *, known_generated: Iterable[str] = ()) -> str:
    """Combine the README on the Hub with the freshly generated one.

    Keeps the local YAML header (plus remote-only keys and list entries) and the local block
    between ``CARD_BEGIN`` and ``CARD_END``; keeps the remote text before and after its markers.
    A remote card without markers is replaced only when it is one synth-disco generated
    (equal to ``local`` or to one of ``known_generated``); otherwise this raises ``HubError``.
    """
    if not remote.strip():
        return local
    remote_yaml, remote_body = _split_card(remote)
    local_yaml, local_body = _split_card(local)
    if CARD_BEGIN not in remote_body or CARD_END not in remote_body:
        generated = {_normalise(t) for t in known_generated} | {_normalise(local)}
        if _normalise(remote) in generated:
            return local
        raise HubError(
            "README.md on the Hub was edited and has no synth-disco markers: put "
            f"'{CARD_BEGIN}' and '{CARD_END}' around the generated part on the Hub "
            "(text outside them is kept), or pass --overwrite-card to replace it"
        )
    if CARD_BEGIN in local_body and CARD_END in local_body:
        start = local_body.index(CARD_BEGIN)
        block = local_body[start : local_body.index(CARD_END, start) + len(CARD_END)]
    else:  # a card without markers: all of its body is generated
        block = f"{CARD_BEGIN}\n{local_body.strip()}\n{CARD_END}"
    r_start = remote_body.index(CARD_BEGIN)
    r_end = remote_body.index(CARD_END, r_start) + len(CARD_END)
    body = remote_body[:r_start] + block + remote_body[r_end:]

    local_meta = _load_meta(local_yaml, "local README.md")
    try:
        remote_meta = _load_meta(remote_yaml, "README.md on the Hub")
    except HubError:
        remote_meta = {}  # the Hub validates YAML, so this is rare; the local header wins
    merged = _merge_meta(local_meta, remote_meta)
    if merged == local_meta:
        if local_yaml is None:
            return body
        header = local_yaml  # verbatim: merging an unchanged card gives the same bytes
    else:
        header = yaml.safe_dump(merged, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n{body}"


# -- local and remote files ----------------------------------------------------------------------


def _forbidden_patterns(folder: Path, token: str) -> list[tuple[bytes, str]]:
    patterns = [(token.encode(), "the Hugging Face token")]
    for path in (folder, folder.parent):
        if len(path.parts) > 2:  # skip "/" and "/tmp": too short to mean a leaked path
            patterns.append((str(path).encode(), f"the absolute local path {path}"))
    return patterns


def _check_clean(data: bytes, path: str, patterns: list[tuple[bytes, str]]) -> None:
    for pattern, what in patterns:
        if pattern in data:
            raise HubError(f"{path}: contains {what}; refusing to upload it")


def _hash_file(source: Path, rel: str, patterns: list[tuple[bytes, str]]) -> _LocalFile:
    """git blob sha1 + sha256 in one pass, scanning for things that must not be published."""
    size = source.stat().st_size
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    sha256 = hashlib.sha256()
    overlap = max(len(p) for p, _ in patterns) - 1
    tail = b""
    with source.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha1.update(chunk)
            sha256.update(chunk)
            _check_clean(tail + chunk, rel, patterns)
            tail = chunk[-overlap:] if overlap > 0 else b""
    return _LocalFile(rel, source, size, sha1.hexdigest(), sha256.hexdigest())


def _scan_folder(folder: Path, patterns: list[tuple[bytes, str]]) -> dict[str, _LocalFile]:
    """Every file to publish, keyed by repo path. Hidden files and folders are skipped."""
    files: dict[str, _LocalFile] = {}
    for source in sorted(folder.rglob("*")):
        rel = source.relative_to(folder).as_posix()
        if not source.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        files[rel] = _hash_file(source, rel, patterns)
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
        patterns: list[tuple[bytes, str]],
    ) -> None:
        self.api = api
        self.repo_id = repo_id
        self.tag = tag
        self.local = local
        self.overwrite_card = overwrite_card
        self.patterns = patterns  # what must never be uploaded (token, local paths)

    @property
    def url(self) -> str:
        return f"{self.api.endpoint}/datasets/{self.repo_id}"

    def files_against(
        self, remote: Mapping[str, RepoFile], revision: str, *, strict: bool
    ) -> dict[str, _LocalFile]:
        """The local files with README.md merged into the card at ``revision``.

        ``strict`` refuses a remote card that cannot be merged safely; otherwise such a card
        is simply compared against the local one.
        """
        readme = self.local.get(README)
        if readme is None or README not in remote or self.overwrite_card:
            return dict(self.local)
        local_text = readme.read().decode("utf-8")
        remote_text = _read_remote(self.api, self.repo_id, README, revision)
        try:
            merged = merge_card(remote_text, local_text, known_generated=self._tagged_cards())
        except HubError:
            if strict:
                raise
            merged = local_text
        if merged == local_text:
            return dict(self.local)
        data = merged.encode("utf-8")
        _check_clean(data, README, self.patterns)
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
        adds, deletes = _diff(self.files_against(remote, target, strict=False), remote)
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
            adds, deletes = _diff(self.files_against(remote, head, strict=True), remote)
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
    patterns = _forbidden_patterns(folder.resolve(), token)
    local = _scan_folder(folder.resolve(), patterns)

    api = HfApi(token=token)
    with _hub_errors(api.endpoint, repo_id):
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        api.create_repo(repo_id, repo_type="dataset", private=private or None, exist_ok=True)
        publisher = _Publisher(
            api, repo_id, tag, local, overwrite_card=overwrite_card, patterns=patterns
        )
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

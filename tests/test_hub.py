"""Publishing to the Hub: push, version tags, idempotence, card merging and clear errors.

Runs against the loopback Hub (`hub_server` fixture), with the real huggingface_hub and
datasets clients: what is pushed is read back with `load_dataset(repo, config, revision=tag)`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import struct
import zlib
from pathlib import Path

import datasets
import pytest

from hubserver import BAD_TOKEN, READONLY_TOKEN, WRITE_TOKEN, HubServer, patch_clients
from synth_disco.dataset.readme import CARD_BEGIN, CARD_END, merge_readme
from synth_disco.hub.push import NO_TOKEN_MESSAGE, HubError, push_folder

# The LFS upload in huggingface_hub passes a file object as `data=`, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "tester/disco"

CARD = """---
license: cc-by-4.0
tags:
- synthetic
configs:
- config_name: discussions
  data_files:
  - split: train
    path: data/discussions/train-*
- config_name: comments
  data_files:
  - split: train
    path: data/comments/train-*
---

<!-- synth-disco:begin -->
# Disco

{n} discussions, {m} comments.
<!-- synth-disco:end -->
"""


def _png() -> bytes:
    """A valid 1x1 grey PNG (stands in for the card's figure)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0\x80"))
        + chunk(b"IEND", b"")
    )


def rows(n_disc: int, per_disc: int = 3) -> tuple[list[dict], list[dict]]:
    discussions = [{"discussion_id": f"d{i}", "n_comments": per_disc} for i in range(n_disc)]
    comments = [
        {
            "discussion_id": f"d{i}",
            "comment_id": f"d{i}-c{j}",
            "index": j,
            "text": f"comment {i}.{j}",
        }
        for i in range(n_disc)
        for j in range(per_disc)
    ]
    return discussions, comments


def make_folder(root: Path, n_disc: int, comment_shards: int = 2, manifest_extra: str = "") -> Path:
    """A Hub-layout dataset folder like synth-disco assembles, with two configs."""
    folder = root / f"dataset-{n_disc}-{comment_shards}"
    discussions, comments = rows(n_disc)
    (folder / "data" / "discussions").mkdir(parents=True)
    (folder / "data" / "comments").mkdir(parents=True)
    datasets.Dataset.from_list(discussions).to_parquet(
        folder / "data" / "discussions" / "train-00000-of-00001.parquet"
    )
    table = datasets.Dataset.from_list(comments)
    for i in range(comment_shards):
        name = f"train-{i:05d}-of-{comment_shards:05d}.parquet"
        table.shard(comment_shards, i, contiguous=True).to_parquet(
            folder / "data" / "comments" / name
        )
    (folder / "README.md").write_text(CARD.format(n=n_disc, m=len(comments)))
    (folder / "synth_disco").mkdir()
    (folder / "synth_disco" / "recipe.yaml").write_text(
        f"name: disco\nversion: 1.0.0\nn: {n_disc}\n"
    )
    manifest = {"discussions": n_disc, "comments": len(comments), "note": manifest_extra}
    (folder / "synth_disco" / "manifest.json").write_text(json.dumps(manifest))
    (folder / "synth_disco" / "overview.png").write_bytes(_png())
    return folder


def load(config: str, revision: str) -> list[dict]:
    return datasets.load_dataset(REPO, config, revision=revision, split="train").to_list()


# -- publishing and reading back -----------------------------------------------------------------


def test_push_then_load_at_tag(hub_server: HubServer, tmp_path: Path) -> None:
    folder = make_folder(tmp_path, 4)
    result = push_folder(folder, REPO, "1.0.0")

    assert result.status == "pushed"
    assert result.tag == "v1.0.0"
    assert hub_server.tags(REPO) == {"v1.0.0": result.commit_sha}
    assert hub_server.commit_count(REPO) == 1  # one commit for the whole folder
    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert hub_server.list_files(REPO, "v1.0.0") == sorted([".gitattributes", *local])
    discussions, comments = rows(4)
    assert load("discussions", "v1.0.0") == discussions
    assert load("comments", "v1.0.0") == comments


def test_new_version_keeps_old_tag_loadable(hub_server: HubServer, tmp_path: Path) -> None:
    push_folder(make_folder(tmp_path, 2, comment_shards=2), REPO, "1.0.0")
    result = push_folder(make_folder(tmp_path, 5, comment_shards=3), REPO, "1.1.0")

    assert result.status == "pushed"
    assert set(hub_server.tags(REPO)) == {"v1.0.0", "v1.1.0"}
    assert load("comments", "v1.0.0") == rows(2)[1]
    assert load("comments", "v1.1.0") == rows(5)[1]
    # Shards of the old layout are gone from main, and still there at the old tag.
    assert not [p for p in hub_server.list_files(REPO) if p.endswith("-of-00002.parquet")]
    assert "data/comments/train-00001-of-00002.parquet" in hub_server.list_files(REPO, "v1.0.0")


def test_repush_identical_content_is_a_noop(hub_server: HubServer, tmp_path: Path) -> None:
    folder = make_folder(tmp_path, 3)
    first = push_folder(folder, REPO, "1.0.0")
    commits = hub_server.commit_count(REPO)

    again = push_folder(folder, REPO, "1.0.0")

    assert again.status == "unchanged"
    assert again.commit_sha == first.commit_sha
    assert hub_server.commit_count(REPO) == commits
    assert hub_server.tags(REPO) == {"v1.0.0": first.commit_sha}


def test_same_tag_with_different_content_is_refused(hub_server: HubServer, tmp_path: Path) -> None:
    first = push_folder(make_folder(tmp_path, 3), REPO, "1.0.0")
    commits = hub_server.commit_count(REPO)

    with pytest.raises(HubError, match=r"v1\.0\.0 already exists .*bump `version`"):
        push_folder(make_folder(tmp_path, 4), REPO, "1.0.0")

    assert hub_server.commit_count(REPO) == commits
    assert hub_server.tags(REPO) == {"v1.0.0": first.commit_sha}


def test_content_already_on_main_is_tagged_without_a_commit(
    hub_server: HubServer, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path, 3)
    push_folder(folder, REPO, "1.0.0")
    commits = hub_server.commit_count(REPO)

    result = push_folder(folder, REPO, "1.0.1")

    assert result.status == "pushed"
    assert hub_server.commit_count(REPO) == commits
    assert hub_server.tags(REPO)["v1.0.1"] == hub_server.head(REPO)


def test_failed_commit_leaves_no_tag_and_rerun_works(hub_server: HubServer, tmp_path: Path) -> None:
    folder = make_folder(tmp_path, 3)
    hub_server.fail_next("commit", status=500)

    with pytest.raises(HubError, match=r"\(500\)"):
        push_folder(folder, REPO, "1.0.0")
    assert hub_server.tags(REPO) == {}
    assert hub_server.commit_count(REPO) == 0

    result = push_folder(folder, REPO, "1.0.0")
    assert result.status == "pushed"
    assert load("discussions", "v1.0.0") == rows(3)[0]


def test_failed_tag_leaves_no_tag_and_rerun_tags(hub_server: HubServer, tmp_path: Path) -> None:
    folder = make_folder(tmp_path, 3)
    hub_server.fail_next("create_tag", status=503)

    with pytest.raises(HubError, match=r"\(503\)"):
        push_folder(folder, REPO, "1.0.0")
    assert hub_server.tags(REPO) == {}

    result = push_folder(folder, REPO, "1.0.0")
    assert result.status == "pushed"
    assert hub_server.commit_count(REPO) == 1  # the rerun tagged the existing commit
    assert hub_server.tags(REPO) == {"v1.0.0": hub_server.head(REPO)}


def test_private_repo_in_own_namespace(hub_server: HubServer, tmp_path: Path) -> None:
    result = push_folder(make_folder(tmp_path, 2), "disco", "1.0.0", private=True)

    assert result.repo_id == REPO  # the token's user namespace
    assert hub_server.state.get_repo("dataset", REPO).private


def test_invalid_card_yaml_is_rejected_before_anything_lands(
    hub_server: HubServer, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path, 2)
    (folder / "README.md").write_text("---\nconfigs: [\n---\nbody\n")

    with pytest.raises(HubError, match="rejected README.md"):
        push_folder(folder, REPO, "1.0.0")
    assert hub_server.commit_count(REPO) == 0 and hub_server.tags(REPO) == {}


# -- the card ------------------------------------------------------------------------------------


def _edit_card(text: str) -> str:
    """What a user does on the Hub: a tag, a new key, and a paragraph after the markers."""
    text = text.replace("- synthetic\n", "- synthetic\n- moderation\n", 1)
    text = text.replace("---\n", "---\npretty_name: Disco\n", 1)
    return text + "\n## Citation\n\nPlease cite our paper.\n"


def test_card_edits_on_the_hub_survive_a_new_version(hub_server: HubServer, tmp_path: Path) -> None:
    push_folder(make_folder(tmp_path, 2), REPO, "1.0.0")
    edited = _edit_card(hub_server.read_file(REPO, "README.md").decode())
    hub_server.commit_files(REPO, {"README.md": edited.encode()})

    push_folder(make_folder(tmp_path, 5), REPO, "1.1.0")

    card = hub_server.read_file(REPO, "README.md", "v1.1.0").decode()
    assert "Please cite our paper." in card
    assert "5 discussions, 15 comments." in card and "2 discussions" not in card
    assert "pretty_name: Disco" in card
    assert "- moderation" in card and "- synthetic" in card
    assert load("discussions", "v1.1.0") == rows(5)[0]  # the merged YAML still configures it


def test_concurrent_card_edit_is_retried_and_kept(hub_server: HubServer, tmp_path: Path) -> None:
    push_folder(make_folder(tmp_path, 2), REPO, "1.0.0")
    edited = _edit_card(hub_server.read_file(REPO, "README.md").decode())
    # The edit lands between our read of main and our commit: the Hub answers 412.
    hub_server.before_next(
        "commit", lambda: hub_server.commit_files(REPO, {"README.md": edited.encode()})
    )

    result = push_folder(make_folder(tmp_path, 5), REPO, "1.1.0")

    assert result.status == "pushed"
    assert hub_server.commit_count(REPO) == 3  # v1.0.0, the edit, v1.1.0 on top of the edit
    card = hub_server.read_file(REPO, "README.md", "v1.1.0").decode()
    assert "Please cite our paper." in card and "5 discussions" in card


def test_card_without_markers_on_the_hub_is_kept_after_the_generated_block(
    hub_server: HubServer, tmp_path: Path
) -> None:
    # Issue 12, defect 7: the push merge used to refuse a README without markers, while the
    # card's merge kept it; both now keep it, after the generated block.
    push_folder(make_folder(tmp_path, 2), REPO, "1.0.0")
    hub_server.commit_files(REPO, {"README.md": b"# My own card\n\nHand written.\n"})
    folder = make_folder(tmp_path, 5)

    result = push_folder(folder, REPO, "1.1.0")

    assert result.status == "pushed"
    card = hub_server.read_file(REPO, "README.md", "v1.1.0").decode()
    assert card.count(CARD_BEGIN) == 1 and "5 discussions, 15 comments." in card
    assert card.index(CARD_END) < card.index("# My own card\n\nHand written.")
    assert load("discussions", "v1.1.0") == rows(5)[0]  # the local header configures it
    assert push_folder(folder, REPO, "1.1.0").status == "unchanged"


def test_overwrite_card_replaces_the_card_on_the_hub(hub_server: HubServer, tmp_path: Path) -> None:
    push_folder(make_folder(tmp_path, 2), REPO, "1.0.0")
    hub_server.commit_files(REPO, {"README.md": b"# My own card\n\nHand written.\n"})
    folder = make_folder(tmp_path, 5)

    push_folder(folder, REPO, "1.1.0", overwrite_card=True)

    assert hub_server.read_file(REPO, "README.md", "v1.1.0") == (folder / "README.md").read_bytes()


def test_crlf_card_on_the_hub_is_merged(hub_server: HubServer, tmp_path: Path) -> None:
    # Issue 12, defect 7: a README saved with CRLF line endings (a Windows editor) is merged
    # like any other, and the result has one kind of line ending.
    push_folder(make_folder(tmp_path, 2), REPO, "1.0.0")
    edited = _edit_card(hub_server.read_file(REPO, "README.md").decode())
    hub_server.commit_files(REPO, {"README.md": edited.replace("\n", "\r\n").encode()})
    folder = make_folder(tmp_path, 5)

    push_folder(folder, REPO, "1.1.0")

    card = hub_server.read_file(REPO, "README.md", "v1.1.0").decode()
    assert "\r" not in card
    assert "Please cite our paper." in card and "pretty_name: Disco" in card
    assert "5 discussions, 15 comments." in card and "2 discussions" not in card
    assert card.count(CARD_BEGIN) == 1 and "- moderation" in card
    assert push_folder(folder, REPO, "1.1.0").status == "unchanged"


def test_merge_keeps_remote_text_and_keys() -> None:
    local = CARD.format(n=5, m=15)
    remote = "intro\n" + _edit_card(CARD.format(n=2, m=6)).split("---\n", 2)[2]
    remote = "---\nlicense: mit\ntags:\n- moderation\n---\nBefore.\n" + remote

    merged = merge_readme(remote, local)

    assert merged.startswith("---\nlicense: cc-by-4.0\n")  # local keys win
    assert "Before." in merged and "Please cite our paper." in merged
    assert "5 discussions" in merged and "2 discussions" not in merged
    assert merged.count(CARD_BEGIN) == 1 and merged.count(CARD_END) == 1
    assert "- moderation" in merged
    assert merge_readme(merged, local) == merged  # merging again changes nothing
    assert merge_readme(local, local) == local


def test_merge_without_markers() -> None:
    local = CARD.format(n=5, m=15)
    old = CARD.format(n=2, m=6).replace(CARD_BEGIN + "\n", "").replace(CARD_END + "\n", "")
    # A card synth-disco published earlier is replaced; any other is kept after the block.
    assert merge_readme(old, local, known_generated=[old]) == local
    kept = merge_readme(old, local)
    assert kept.startswith(local.rstrip("\n"))
    assert kept.endswith(f"{CARD_END}\n\n# Disco\n\n2 discussions, 6 comments.\n")


# -- pull requests -------------------------------------------------------------------------------


def test_create_pr_opens_a_pr_and_leaves_main_alone(hub_server: HubServer, tmp_path: Path) -> None:
    push_folder(make_folder(tmp_path, 2), REPO, "1.0.0")
    main_before = hub_server.head(REPO)

    result = push_folder(make_folder(tmp_path, 5), REPO, "1.1.0", create_pr=True)

    assert result.status == "pr_opened"
    assert result.tag is None and result.pr_url and result.pr_url.endswith("/discussions/1")
    assert "v1.1.0" in result.message
    assert hub_server.pull_requests(REPO) == {1: result.commit_sha}
    assert hub_server.head(REPO) == main_before
    assert set(hub_server.tags(REPO)) == {"v1.0.0"}
    assert load("discussions", "refs/pr/1") == rows(5)[0]


# -- errors --------------------------------------------------------------------------------------


def test_bad_token_is_reported(hub_server: HubServer, tmp_path: Path) -> None:
    with pytest.raises(HubError, match=r"token rejected \(401\)"):
        push_folder(make_folder(tmp_path, 2), REPO, "1.0.0", token=BAD_TOKEN)


def test_read_only_token_is_reported(hub_server: HubServer, tmp_path: Path) -> None:
    folder = make_folder(tmp_path, 2)
    message = rf"token lacks write access to {REPO} \(403\)"
    with pytest.raises(HubError, match=message):  # the repo does not exist yet
        push_folder(folder, REPO, "1.0.0", token=READONLY_TOKEN)
    push_folder(folder, REPO, "0.9.0", token=WRITE_TOKEN)
    with pytest.raises(HubError, match=message):  # the repo exists
        push_folder(folder, REPO, "1.0.0", token=READONLY_TOKEN)
    assert set(hub_server.tags(REPO)) == {"v0.9.0"}


def test_missing_token_is_reported(
    hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_clients(monkeypatch, hub_server.url, tmp_path / "home", token=None)
    with pytest.raises(HubError) as err:
        push_folder(make_folder(tmp_path, 2), REPO, "1.0.0")
    assert str(err.value) == NO_TOKEN_MESSAGE
    assert not hub_server.has_repo(REPO)


def test_unreachable_hub_is_reported(
    hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    patch_clients(monkeypatch, endpoint, tmp_path / "home", WRITE_TOKEN)
    with pytest.raises(HubError, match=f"cannot reach {endpoint}"):
        push_folder(make_folder(tmp_path, 2), REPO, "1.0.0")


def test_token_and_local_paths_are_never_uploaded(hub_server: HubServer, tmp_path: Path) -> None:
    with pytest.raises(HubError, match="manifest.json: contains the Hugging Face token"):
        push_folder(make_folder(tmp_path, 2, manifest_extra=WRITE_TOKEN), REPO, "1.0.0")
    folder = make_folder(tmp_path, 3)
    (folder / "synth_disco" / "recipe.yaml").write_text(f"posts: {folder.resolve()}/posts.jsonl\n")
    with pytest.raises(HubError, match="recipe.yaml: contains the absolute local path"):
        push_folder(folder, REPO, "1.0.0")
    # The same leak scan as assembly: a token that is not the user's is refused too.
    (folder / "synth_disco" / "recipe.yaml").write_text("note: hf_" + "x" * 34 + "\n")
    with pytest.raises(HubError, match="recipe.yaml: contains what looks like a Hugging Face"):
        push_folder(folder, REPO, "1.0.0")
    assert not hub_server.has_repo(REPO)


# -- the stub itself -----------------------------------------------------------------------------


def test_stub_speaks_http_like_the_hub(hub_server: HubServer) -> None:
    """HEAD errors carry no body, ranges work, chunked uploads work, on one kept-alive socket."""
    hub_server.state.create_repo("dataset", REPO, private=False)
    hub_server.commit_files(REPO, {"notes.txt": b"0123456789"})
    host, port = hub_server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)

    def request(method: str, path: str, **kw: object) -> http.client.HTTPResponse:
        conn.request(method, path, **kw)  # type: ignore[arg-type]
        response = conn.getresponse()
        response.body = response.read()  # type: ignore[attr-defined]
        return response

    missing = request("HEAD", f"/datasets/{REPO}/resolve/main/nope.txt")
    assert (missing.status, missing.getheader("X-Error-Code")) == (404, "EntryNotFound")
    assert missing.body == b""  # type: ignore[attr-defined]
    head = request("HEAD", f"/datasets/{REPO}/resolve/main/notes.txt")
    assert head.getheader("X-Repo-Commit") == hub_server.head(REPO)
    assert head.getheader("Content-Length") == "10" and head.getheader("ETag")
    part = request(
        "GET", f"/datasets/{REPO}/resolve/main/notes.txt", headers={"Range": "bytes=2-4"}
    )
    assert (part.status, part.body) == (206, b"234")  # type: ignore[attr-defined]
    assert part.getheader("Content-Range") == "bytes 2-4/10"

    blob = b"x" * 5000
    oid = hashlib.sha256(blob).hexdigest()
    put = request(
        "PUT", f"/lfs-upload/{oid}", body=iter([blob[:1234], blob[1234:]]), encode_chunked=True
    )
    assert put.status == 200 and hub_server.state.lfs[oid] == blob
    bad_rev = request("GET", f"/api/datasets/{REPO}/revision/v9")
    assert (bad_rev.status, bad_rev.getheader("X-Error-Code")) == (404, "RevisionNotFound")
    conn.close()

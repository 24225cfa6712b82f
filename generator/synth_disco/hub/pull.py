"""Downloading a published dataset at a tag (for ``rebuild``): every file of the folder.

The whole folder is needed, not only the data files: the recipe and the files it read live
under ``synth_disco/``. ``snapshot_download`` verifies each file it downloads; what comes back
is checked again, like any downloaded folder, by ``rebuild`` (confined recipe, fingerprint).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from synth_disco.hub.push import HubError


def pull_folder(repo_id: str, revision: str | None, dest: Path) -> Path:
    """Download the dataset repo ``repo_id`` at ``revision`` (a tag such as ``v1.0.0``, a
    branch or a commit; default: the main branch) into ``dest``; returns ``dest``."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise HubError(f"{dest.as_posix()} is not empty: download into an empty folder")
    try:
        snapshot_download(repo_id, repo_type="dataset", revision=revision, local_dir=dest)
    except OfflineModeIsEnabled as err:
        raise HubError("HF_HUB_OFFLINE is set: unset it to download") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        at = f" at {revision}" if revision else ""
        raise HubError(f"cannot download dataset {repo_id}{at} ({status})") from err
    # The client keeps its own bookkeeping next to the files; it is not part of the dataset.
    shutil.rmtree(dest / ".cache", ignore_errors=True)
    return dest

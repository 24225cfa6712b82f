"""Assembly of a run's finished shards into a Hub-layout dataset folder (see ``manifest.py``
for the layout).

Assembly streams: shard files are read record batch by record batch and written through
``pyarrow.parquet.ParquetWriter`` with a bounded buffer, and the statistics the card needs are
folded into aggregates as the rows pass (``stats.py``), so peak memory does not grow with the
number of discussions. The folder, card included, is built next to its destination, checked for
leaks and swapped in at the end, so an interruption never leaves half a dataset and a refused
folder never replaces a good one. The same shards give byte-identical files (no timestamps,
deterministic row groups).

Modules, bottom to top:

- ``configs``: each config's arrow schema, and the writer that streams a config's rows into its
  parquet files
- ``batches``: shard files read back batch by batch, conformed and free of local paths
- ``shards``: the finished shards' files, checked against their checksums, and the design
  columns of their discussions
- ``swap``: the temp folder made durable and swapped in
- ``writers``: the configs written from the shards, table by table
- ``build``: ``assemble``, the entry point

The names below are the public surface; code in synth-disco imports from the modules.
"""

from synth_disco.dataset.assembly.build import assemble
from synth_disco.dataset.assembly.configs import config_schemas

__all__ = ["assemble", "config_schemas"]

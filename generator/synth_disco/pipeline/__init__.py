"""The executor: which stage runs, in which process, on which shards, and how a run resumes.

``build`` runs plan -> discuss -> annotate -> assemble; ``world`` says which worker this
process is. The stages themselves live with what they compute (``discussion/stage.py``,
``annotation/stage.py``) and follow the shard protocol of ``store/shards.py``.
"""

"""How one discussion unfolds: who speaks (``policies``), when the moderator does
(``moderation``), what each speaker is shown (``prompts`` and ``templates/``), how a reply is
cleaned (``cleaning``), which comments are broken and how (``quality``), and the state machine that runs it (``state``). Deliberation
structures: what each agent is shown (``structures``), their prompts (``structure_prompts``)
and state machine (``structure_state``); ``machine`` is the interface both give the discuss
stage (``stage``)."""

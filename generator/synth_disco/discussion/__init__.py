"""How one discussion unfolds: who speaks, what they see, how their reply is cleaned."""

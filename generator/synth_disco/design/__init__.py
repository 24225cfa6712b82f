"""The experiment design: which discussions a recipe asks for, and the work they take.

``cells`` (the conditions, with stable ids), ``plan`` (cells x replicates -> discussion specs,
matched draws, plan.parquet) and ``estimate`` (LLM calls and tokens, counted by the discussion
code's own rules). Code inside the package imports from those modules; this surface is for
users.
"""

from synth_disco.design.estimate import PlanSummary
from synth_disco.design.plan import Plan, plan, write_plan

__all__ = ["Plan", "PlanSummary", "plan", "write_plan"]

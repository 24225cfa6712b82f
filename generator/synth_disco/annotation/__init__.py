"""Annotation: LLM annotators label every comment, batched through the engine and resumable.

- :mod:`.tasks`: which (comment x annotator x dimension) tasks exist, in a fixed order
- :mod:`.prompts`: the sandboxed Jinja prompt (instructions, context, marked target, labels)
- :mod:`.parse`: parsing a generated answer into one label, or refusing it
- :mod:`.stage`: the resumable stage runner over shards
- :mod:`.agreement`, :mod:`.aggregate`: Krippendorff's alpha and per-comment aggregates
- :mod:`.syndisco_import`, :mod:`.existing`: annotating existing runs, datasets, SynDisco files
"""

from synth_disco.annotation.aggregate import aggregate, read_agreement, write_aggregates
from synth_disco.annotation.agreement import alpha_from_matrix, krippendorff_alpha
from synth_disco.annotation.existing import AnnotationStopped, annotate_existing, detect_source
from synth_disco.annotation.parse import ParsedAnswer, parse_answer
from synth_disco.annotation.prompts import PromptBuilder
from synth_disco.annotation.stage import default_generate_params, run_annotation_stage
from synth_disco.annotation.syndisco_import import read_syndisco_dir
from synth_disco.annotation.tasks import AnnotationError, Task, build_tasks

__all__ = [
    "AnnotationError",
    "AnnotationStopped",
    "ParsedAnswer",
    "PromptBuilder",
    "Task",
    "aggregate",
    "alpha_from_matrix",
    "annotate_existing",
    "build_tasks",
    "default_generate_params",
    "detect_source",
    "krippendorff_alpha",
    "parse_answer",
    "read_agreement",
    "read_syndisco_dir",
    "run_annotation_stage",
    "write_aggregates",
]

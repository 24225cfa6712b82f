"""The recipe schema: every key a recipe may hold, its type, default and meaning.

Loading (YAML with line numbers, ``--set`` overrides, file references, error reports) lives in
``load.py``; this module only says what a valid recipe is. Every model forbids unknown
keys so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from synth_disco.recipe.quality import FLAG_NAMES, QualityConfig, threshold_names

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class FileRef(Strict):
    """``{file: path}``: text read from a file relative to the recipe."""

    file: str


# Text fields are a string or {file: ...}; the loader replaces file references by their text.
Text = str | FileRef


class ModelConfig(Strict):
    """A named model: which engine runs it and how it decodes."""

    engine: Literal["transformers", "tiny"] = "transformers"
    model: str = Field("tiny", description="Hub id, local path, or 'tiny' / 'tiny:<seed>'")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = None  # "cpu", "cuda", "cuda:1"; default: cuda if available
    device_map: str | None = None  # e.g. "auto" to spread a large model over GPUs
    trust_remote_code: bool = False
    max_new_tokens: int = Field(128, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=5.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # 0 = off
    repetition_penalty: float = Field(1.0, gt=0.0)
    stop: list[str] = Field(default_factory=list)
    chat_template: Text | None = None
    max_batch_size: int = Field(64, ge=1)
    max_batch_tokens: int | None = Field(None, ge=1)


class SourceSpec(Strict):
    """Where personas or posts come from. Exactly one of inline/file/dir/hub.

    ``columns`` maps record fields to source columns (e.g. ``{text: body, name: username}``);
    ``filter`` is a simple expression ``column == value`` / ``column != value`` /
    ``column in [a, b]``; ``sample`` draws n records (weighted by ``weight_column`` if set)
    with the recipe seed.
    """

    inline: list[Any] | None = None
    file: str | None = None
    dir: str | None = None
    hub: str | None = None
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    format: Literal["auto", "json", "jsonl", "csv", "yaml", "txt"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)
    filter: str | None = None
    sample: int | None = Field(None, ge=1)
    weight_column: str | None = None
    license: str | None = None  # recorded in the dataset card

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        given = [k for k in ("inline", "file", "dir", "hub") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of inline, file, dir, hub"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class Range(Strict):
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class TurnTaking(Strict):
    """Who speaks next. See ``discussion/policies.py`` for the exact semantics."""

    policy: Literal["round_robin", "random", "random_weighted", "reply_tree"] = "round_robin"
    p_respond: float = Field(0.4, ge=0.0, le=1.0)  # random_weighted: reply-back probability
    random_first: bool = False  # round_robin: draw the first speaker at random
    reply_to_op: float = Field(0.2, ge=0.0, le=1.0)  # reply_tree: weight of the OP as parent


# The variant name of participants who drew no variant (so no variant may be called this).
DEFAULT_VARIANT = "default"


class Variant(Strict):
    """An instruction variant given to a share of participants (e.g. 30% trolls)."""

    share: float = Field(ge=0.0, le=1.0)
    instructions: Text


class ModeratorConfig(Strict):
    name: str = "Moderator"
    model: str | None = None  # defaults to the discussion model
    persona: str | dict[str, Any] = ""
    instructions: Text = ""
    policy: Literal["every_k", "after_each", "as_participant", "on_demand"] = "every_k"
    k: int = Field(3, ge=1)


class Templates(Strict):
    """Jinja templates overriding the built-in prompts (inline or {file: ...}).

    ``system`` and ``turn`` are the system and user messages of every turn; the moderator's
    system message is ``moderator_system``, and when that is not set, the ``system`` in use
    (``discussion/prompts.py`` says which text each prompt is rendered from).
    """

    system: Text | None = None
    turn: Text | None = None
    moderator_system: Text | None = None
    annotation: Text | None = None


class DiscussionConfig(Strict):
    model: str | None = None  # a key of `models`; default: the first model
    persona_pool: str = "users"  # a key of `personas`
    participants: int | Range = 4
    turns: int = Field(8, ge=1)
    turn_taking: TurnTaking = Field(default_factory=TurnTaking)
    context_window: int = Field(5, ge=0)
    context: Text = ""
    instructions: Text = ""
    variants: dict[str, Variant] = Field(default_factory=dict)
    moderator: ModeratorConfig | None = None
    templates: Templates = Field(default_factory=Templates)
    max_empty_retries: int = Field(2, ge=0)

    @field_validator("participants")
    @classmethod
    def _positive(cls, v: int | Range) -> int | Range:
        if isinstance(v, int) and v < 1:
            raise ValueError("participants must be at least 1")
        return v

    @model_validator(mode="after")
    def _shares(self) -> DiscussionConfig:
        total = sum(v.share for v in self.variants.values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"variant shares add up to {total:g}, more than 1")
        return self


class DesignConfig(Strict):
    """Full factorial by default; ``random`` keeps a seeded subset of ``cells`` cells."""

    mode: Literal["full", "random"] = "full"
    cells: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _cells(self) -> DesignConfig:
        if self.mode == "random" and self.cells is None:
            raise ValueError("design mode 'random' needs `cells`")
        return self


class Dimension(Strict):
    """One annotation dimension: an ordinal ``scale`` or nominal ``categories``."""

    scale: list[int | str] | None = None
    categories: list[str] | None = None
    descriptions: dict[str, str] = Field(default_factory=dict)
    instructions: Text = ""

    @model_validator(mode="after")
    def _labels(self) -> Dimension:
        if (self.scale is None) == (self.categories is None):
            raise ValueError("give exactly one of scale or categories")
        labels = [str(x) for x in (self.scale or self.categories or [])]
        if len(labels) < 2:
            raise ValueError("a dimension needs at least 2 labels")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        return self

    @property
    def labels(self) -> list[str]:
        return [str(x) for x in (self.scale or self.categories or [])]

    @property
    def level(self) -> Literal["ordinal", "nominal"]:
        return "ordinal" if self.scale is not None else "nominal"


class AnnotatorsConfig(Strict):
    pool: str = "annotators"
    per_comment: int | Literal["all"] = 1


class AnnotationConfig(Strict):
    model: str | None = None
    annotators: AnnotatorsConfig = Field(default_factory=AnnotatorsConfig)
    # window: each label has its own prompt with the OP and the last context_window comments.
    # thread: the annotator reads the discussion from the start and labels each comment with
    # everything before it in view; the engine then runs each discussion once for all its
    # labels (see annotation/prompts.py), several times faster than window.
    layout: Literal["window", "thread"] = "window"
    context_window: int = Field(3, ge=0)
    method: Literal["score", "generate"] = "score"
    rationale: bool = False
    include_moderator: bool = True
    include_seed: bool = False
    max_retries: int = Field(2, ge=0)
    instructions: Text = ""
    dimensions: dict[str, Dimension]

    @field_validator("dimensions")
    @classmethod
    def _non_empty(cls, v: dict[str, Dimension]) -> dict[str, Dimension]:
        if not v:
            raise ValueError("at least one dimension is needed")
        return v

    @model_validator(mode="after")
    def _layout(self) -> AnnotationConfig:
        if self.layout == "thread" and "context_window" in self.model_fields_set:
            raise ValueError(
                "context_window applies to layout: window only (with layout: thread every "
                "earlier comment is in view); remove one of the two"
            )
        return self


class QualitySettings(Strict):
    """Quality flags on every generated comment, and what a run does about flagged ones.

    ``flags``: the flags computed and stored per comment (default: all; each rule is in
    ``discussion/quality.py``). ``thresholds``: their thresholds, by ``QualityConfig`` field
    name (e.g. ``{repetition_max_ratio: 0.4}``). ``regenerate: N`` asks a turn again, with a
    seed derived from the attempt, up to N times while its reply raises one of
    ``regenerate_on`` (default: every computed flag); the last attempt is kept, with its
    flags. Each discarded reply is published as a ``regenerated`` event. ``stop_strings``
    ends a reply where the model starts writing another speaker's turn (stop strings derived
    from the turn template's comment headers; see ``discussion/quality.py``).
    """

    flags: list[str] = Field(default_factory=lambda: list(FLAG_NAMES))
    thresholds: dict[str, bool | int | float] = Field(default_factory=dict)
    regenerate: int = Field(0, ge=0, le=20)
    regenerate_on: list[str] | None = None
    stop_strings: bool = True

    @field_validator("flags")
    @classmethod
    def _known_flags(cls, v: list[str]) -> list[str]:
        QualityConfig(flags=tuple(v))  # raises ValueError naming an unknown or repeated flag
        return v

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, v: dict[str, bool | int | float]) -> dict[str, bool | int | float]:
        defaults = QualityConfig()
        for name, value in v.items():
            if name not in threshold_names():
                raise ValueError(
                    f"unknown threshold {name!r}; known: {', '.join(threshold_names())}"
                )
            want = type(getattr(defaults, name))
            if want is bool and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
            if want is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            if want is float and isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> QualitySettings:
        self.config()  # thresholds in range (QualityConfig says which)
        unknown = [f for f in self.regenerate_on or [] if f not in self.flags]
        if unknown:
            raise ValueError(
                f"regenerate_on names flag(s) that are not computed: {', '.join(unknown)} "
                "(add them to `flags`)"
            )
        return self

    def config(self) -> QualityConfig:
        """The ``QualityConfig`` the flags are computed with."""
        values = {
            k: float(v) if isinstance(getattr(QualityConfig, k), float) else v
            for k, v in self.thresholds.items()
        }
        return QualityConfig(flags=tuple(self.flags), **values)

    @property
    def regenerate_flags(self) -> tuple[str, ...]:
        """The flags that make a turn be asked again (when ``regenerate`` > 0)."""
        return tuple(self.regenerate_on if self.regenerate_on is not None else self.flags)


class HubOutput(Strict):
    repo: str | None = None
    private: bool = False


class OutputConfig(Strict):
    shard_size: int = Field(64, ge=1)  # discussions per shard
    max_rows_per_file: int = Field(100_000, ge=1)  # parquet file size in the dataset folder
    max_failed_fraction: float = Field(0.1, ge=0.0, le=1.0)
    language: list[str] = Field(default_factory=lambda: ["en"])
    tags: list[str] = Field(default_factory=list)
    pretty_name: str | None = None
    authors: list[str] = Field(default_factory=list)  # the card's BibTeX author list
    citation: str | None = None  # BibTeX replacing the generated one
    hub: HubOutput = Field(default_factory=HubOutput)


class RunConfig(Strict):
    max_concurrent: int = Field(64, ge=1)  # discussions in flight at once


FactorLevels = dict[str, dict[str, Any]]


class Recipe(Strict):
    name: str
    version: str = "0.1.0"
    description: str = ""
    license: str = "cc-by-4.0"
    seed: int = 0
    models: dict[str, ModelConfig]
    personas: dict[str, SourceSpec]  # a pool may be written as a bare list; the loader normalises
    posts: SourceSpec
    discussion: DiscussionConfig = Field(default_factory=DiscussionConfig)
    factors: dict[str, FactorLevels] = Field(default_factory=dict)
    design: DesignConfig = Field(default_factory=DesignConfig)
    replicates: int = Field(1, ge=1)
    annotation: AnnotationConfig | None = None
    output: OutputConfig = Field(default_factory=OutputConfig)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    run: RunConfig = Field(default_factory=RunConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("use letters, digits, '.', '_' or '-' (it names files and repos)")
        return v

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not SEMVER.match(v):
            raise ValueError(f"{v!r} is not a semantic version like 1.0.0")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not v:
            raise ValueError("at least one model is needed")
        return v

    def model_for(self, name: str | None) -> ModelConfig:
        return self.models[name or next(iter(self.models))]

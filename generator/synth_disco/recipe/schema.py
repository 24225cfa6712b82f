"""The recipe schema: every key a recipe may hold, its type, default and meaning.

Loading (YAML with line numbers, ``--set`` overrides, file references, error reports) lives in
``load.py``; this module only says what a valid recipe is. Every model forbids unknown
keys so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from synth_disco.engines.registry import ENGINES
from synth_disco.engines.sampling import DECODING_FIELDS
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
    """A named model: which engine runs it, how that engine loads it, and how it decodes.

    Decoding keys (``max_new_tokens`` ... ``stop``) are read by every engine; each other key
    by the engines whose registry entry lists it (``engines/registry.py``). A key the chosen
    engine does not read is an error at its line; set to its default (or null) it is harmless,
    so a config that switches engines in a factor level needs no clean-up. ``None`` leaves a
    setting to the engine's own default.
    """

    engine: str = "transformers"  # a name in engines.registry.ENGINES
    model: str = Field(
        "tiny",
        description="Hub id, local path, a .gguf file, 'smollm2' (built in), 'tiny' / "
        "'tiny:<seed>', or the model an openai server serves",
    )
    # -- transformers (the tiny engine reads device, chat_template and the batch limits) --
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = None  # "cpu", "cuda", "cuda:1"; default: cuda if available
    device_map: str | None = None  # e.g. "auto" to spread a large model over GPUs
    trust_remote_code: bool = False
    chat_template: Text | None = None
    max_batch_size: int = Field(512, ge=1)
    max_batch_tokens: int | None = Field(None, ge=1)
    gguf_file: str | None = None  # a GGUF file in the directory or Hub repo `model` names
    # -- vllm --
    engine_args: dict[str, Any] | None = None  # keyword arguments for vllm.LLM
    # -- openai --
    base_url: str | list[str] | None = None  # the server's root, or a list of replicas
    api_key_env: str | None = None  # the environment variable that holds the API key
    max_in_flight: int | None = Field(None, ge=1)  # requests open at once (default 64)
    timeout_s: float | None = Field(None, gt=0)  # per attempt (default 600)
    connect_timeout_s: float | None = Field(None, gt=0)  # default 10
    max_retries: int | None = Field(None, ge=0)  # transient failures retried (default 6)
    backoff_initial_s: float | None = Field(None, ge=0)  # first retry's wait (default 1)
    backoff_max_s: float | None = Field(None, ge=0)  # longest wait (default 60)
    top_logprobs: int | None = Field(None, ge=1, le=20)  # candidates read to score (20)
    # -- decoding: every engine --
    max_new_tokens: int = Field(128, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=5.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # 0 = off
    repetition_penalty: float = Field(1.0, gt=0.0)
    stop: list[str] = Field(default_factory=list)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        entry = ENGINES.get(v)
        if entry is None:
            close = difflib.get_close_matches(v, list(ENGINES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown engine {v!r}{hint}: use one of {', '.join(ENGINES)}")
        missing = entry.missing()
        if missing:
            how = f": {entry.install}" if entry.install else ""
            raise ValueError(
                f"the {v} engine needs {', '.join(missing)}, which is not installed{how}"
            )
        return v

    @field_validator("*")
    @classmethod
    def _read_by_engine(cls, v: Any, info: ValidationInfo) -> Any:
        """A key the chosen engine does not read is an error at that key."""
        name = info.field_name or ""
        entry = ENGINES.get(info.data.get("engine", ""))
        if entry is None or name in DECODING_FIELDS or name in entry.accepts:
            return v
        if v is None or v == cls.model_fields[name].get_default(call_default_factory=True):
            return v
        readers = [e for e, en in ENGINES.items() if name in en.accepts]
        raise ValueError(
            f"the {info.data['engine']} engine does not read {name}"
            + (f" (it is read by engine: {', '.join(readers)})" if readers else "")
        )

    @field_validator("base_url")
    @classmethod
    def _urls(cls, v: str | list[str] | None) -> str | list[str] | None:
        from synth_disco.engines.openai.config import url_problem  # imports httpx: only here

        urls = [v] if isinstance(v, str) else (v or [])
        if v is not None and not urls:
            raise ValueError("give at least one server URL")
        problems = [p for u in urls if (p := url_problem(u)) is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        from synth_disco.engines.openai.config import env_name_problem

        if v is not None and (why := env_name_problem(v)) is not None:
            raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _needed(self) -> ModelConfig:
        needs = ENGINES[self.engine].needs
        unset = sorted(k for k in needs if k not in self.model_fields_set or not getattr(self, k))
        if unset:
            raise ValueError(f"the {self.engine} engine needs {', '.join(unset)}")
        return self


class SourceSpec(Strict):
    """Where personas or posts come from. Exactly one of inline/file/dir/hub.

    ``columns`` maps record fields to source columns (e.g. ``{text: body, name: username}``);
    ``filter`` keeps the records an expression holds for: comparisons (``==``, ``!=``, ``<``,
    ``<=``, ``>``, ``>=``, ``in [a, b]``, ``not in [...]``) joined with ``and``, ``or``,
    ``not`` and parentheses, e.g. ``age >= 30 and state == "MO"`` (``recipe/filters.py``);
    ``sample`` draws n records (weighted by ``weight_column`` if set) with the recipe seed. The
    weight column is never part of a persona's description (what the model is shown).
    ``persona_template`` (persona pools) renders each record into the persona description: a
    template with the record's columns as variables (and ``row``, all of them by name).
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
    persona_template: Text | None = None
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


# How the agents of a discussion deliberate (``discussion/structures.py`` states each one):
# `forum` is the turn-based thread; the others are deliberation structures.
Structure = Literal["forum", "ensemble", "chain", "debate", "graph"]
STRUCTURES: tuple[str, ...] = get_args(Structure)
# `moderator.instructions: auto`: the model writes the combiner's instructions from its task.
AUTO_INSTRUCTIONS = "auto"


class ModeratorConfig(Strict):
    """A forum moderator (``role: forum``: speaks in the thread as ``policy`` says) or, in a
    deliberation structure, the combiner (``role: combiner``: writes the final response from
    the last cycle's responses; ``policy`` and ``k`` do not apply)."""

    name: str = "Moderator"
    model: str | None = None  # defaults to the discussion model
    persona: str | dict[str, Any] = ""
    instructions: Text = ""  # combiner: "auto" has the model write them from the task first
    policy: Literal["every_k", "after_each", "as_participant", "on_demand"] = "every_k"
    k: int = Field(3, ge=1)
    role: Literal["forum", "combiner"] = "forum"
    task: Text | None = None  # combiner: its own task (template); default: the agents' task
    combination: Text | None = None  # combiner: a preset name or a template (see below)


class GraphConfig(Strict):
    """The agents of ``structure: graph`` as a directed acyclic graph.

    ``nodes`` optionally names the participant slots, in order (as many names as
    participants); ``edges`` are ``[from, to]`` pairs of slots, each by 0-based index or by
    name: ``to`` is shown the responses of ``from``.
    """

    nodes: list[str] = Field(default_factory=list)
    edges: list[tuple[int | str, int | str]] = Field(default_factory=list)


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
    # Deliberation structures (``discussion/structure_prompts.py``): the agents' system and
    # user messages, the combiner's, and the prompt that writes `auto` instructions.
    agent_system: Text | None = None
    agent_turn: Text | None = None
    combiner_system: Text | None = None
    combiner_turn: Text | None = None
    auto_instructions: Text | None = None


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
    # Deliberation structures (``structure`` other than `forum`; the keys above that are about
    # turns, turn taking and the context window apply to `forum` only, and these to the
    # structures only): see ``discussion/structures.py``.
    structure: Structure = "forum"
    task: Text | None = None  # a template of the post; default: the post's title and text
    cycles: int = Field(1, ge=1)  # how many times the structure runs
    shuffle: bool = False  # agent order drawn per discussion and cycle (not for `graph`)
    last_n: int | None = Field(None, ge=1)  # previous responses an agent sees; None: all
    # How previous responses are shown: a preset name (discussion/templates/combination/) or
    # a template of your own; default: `debate` for a debate, else `default`.
    combination: Text | None = None
    graph: GraphConfig = Field(default_factory=GraphConfig)

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
    # thread (the default): the annotator reads the discussion from the start and labels each
    # comment with everything before it in view; the engine then runs each discussion once for
    # all its labels (see annotation/prompts.py), several times faster than window.
    # window: each label has its own prompt with the OP and the last context_window comments;
    # setting context_window without a layout asks for it (see _implied_layout).
    layout: Literal["window", "thread"] = "thread"
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

    @model_validator(mode="before")
    @classmethod
    def _implied_layout(cls, data: Any) -> Any:
        # context_window only means something for the window layout, so a recipe that sets it
        # without a layout (every recipe written when window was the default) keeps window.
        if isinstance(data, dict) and "layout" not in data and "context_window" in data:
            return {**data, "layout": "window"}
        return data

    @model_validator(mode="after")
    def _layout(self) -> AnnotationConfig:
        # A context_window that would be ignored is an error; the default value is not (a
        # whole recipe dumped with its defaults, as manifest.json keeps it, has both keys).
        default = type(self).model_fields["context_window"].default
        ignored = "context_window" in self.model_fields_set and self.context_window != default
        if self.layout == "thread" and ignored:
            raise ValueError(
                "context_window applies to layout: window only (with layout: thread every "
                "earlier comment is in view); remove one of the two"
            )
        return self


class QualitySettings(Strict):
    """Quality flags on every generated comment, and what a run does about flagged ones.

    ``flags``: the flags computed and stored per comment (default: all; each rule is in
    ``discussion/quality/``). ``thresholds``: their thresholds, by ``QualityConfig`` field
    name (e.g. ``{repetition_max_ratio: 0.4}``). ``regenerate: N`` asks a turn again, with a
    seed derived from the attempt, up to N times while its reply raises one of
    ``regenerate_on`` (default: every computed flag); the last attempt is kept, with its
    flags. Each discarded reply is published as a ``regenerated`` event. ``stop_strings``
    ends a reply where the model starts writing another speaker's turn (stop strings derived
    from the turn template's comment headers; see ``discussion/quality/headers.py``).
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

    @model_validator(mode="before")
    @classmethod
    def _window_for_own_template(cls, data: Any) -> Any:
        # ``discussion.templates.annotation`` replaces the window layout's user message, so a
        # recipe that gives one without choosing a layout asks for window, as it always did.
        if not isinstance(data, dict):
            return data
        ann, discussion = data.get("annotation"), data.get("discussion")
        templates = discussion.get("templates") if isinstance(discussion, dict) else None
        own = isinstance(templates, dict) and templates.get("annotation") is not None
        if own and isinstance(ann, dict) and "layout" not in ann:
            return {**data, "annotation": {**ann, "layout": "window"}}
        return data

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


def recipe_json_schema() -> dict[str, Any]:
    """The recipe's JSON Schema as users write recipes, for editors (``synth-disco schema``).

    It is the pydantic schema plus the shorthands the loader accepts before validation: a
    persona pool or the posts as a bare list of records or a path, an empty factor level
    (``none:``), a numeric version.
    """
    doc = Recipe.model_json_schema()
    source = {"$ref": "#/$defs/SourceSpec"}
    shorthand = [
        source,
        {"type": "array", "items": {"type": "object"}, "description": "records inline"},
        {"type": "string", "description": "a file or directory, relative to the recipe"},
    ]
    props = doc["properties"]
    props["personas"]["additionalProperties"] = {"anyOf": shorthand}
    props["posts"] = {"anyOf": shorthand, "title": "Posts"}
    props["factors"]["additionalProperties"]["additionalProperties"] = {
        "anyOf": [{"type": "object"}, {"type": "null"}]
    }
    props["version"] = {"anyOf": [{"type": "string"}, {"type": "number"}], "default": "0.1.0"}
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "synth-disco recipe"
    return doc

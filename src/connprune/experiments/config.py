"""Experiment configs: a YAML file validated by pydantic, expanded into a grid of runs.

A config names the models, the data set, the training recipe of the dense models, the pruning methods (with their
parameters), the sparsities, the seeds, the fine-tune recipe, the distribution shifts to evaluate and, optionally,
the paper's numbers to compare with::

    name: baselines-fmnist
    description: LeNet-5 on Fashion-MNIST, four baselines
    models: [lenet5]
    model-options: {lenet5: {}}      # optional: constructor options per model (as --model-param)
    data: fashion-mnist
    data_dir: null                    # --data-dir wins; else $CONNPRUNE_DATA or ./data when null
    train: {epochs: 40, batch_size: 100, lr: 0.1}       # keys of connprune.train.recipes.TrainConfig (not seed)
    methods:
      - random
      - name: magnitude
        params: {scope: global}      # the method's parameters (see `connprune methods`; not seed)
        label: magnitude-global      # optional: the name in reports (default: the method name)
        sparsities: [0.9]            # optional: this method's own sparsities
    sparsities: [0.5, 0.9]
    seeds: [0, 1, 2]
    fine-tune: {epochs: 5}           # fine-tuning after pruning a trained model (`fine_tune` works too)
    shift: gaussian_noise:3          # a --shift SPEC (or a list of them); none by default
    paper:
      source: Some et al. 2020, Table 1
      accuracy:                      # model -> method label -> sparsity -> top-1 accuracy (a fraction)
        lenet5: {magnitude-global: {0.9: 0.91}}

Unknown keys, wrong types and unknown names are :class:`UserError`\\ s that name the key and its line in the file.

**Grid.** :func:`expand` turns a config into runs: models × seeds × methods × sparsities (a method's own
``sparsities`` replace the global ones). A run's key is ``<model>-<label>-sp<sparsity>-s<seed>-<digest>`` where the
digest covers the :func:`config_hash`, the model, the method, its full parameters, the sparsity and the seed.

**Config hash.** :func:`config_hash` covers what changes a run's result besides its grid coordinates: the data set, the
resolved training recipe, the fine-tune recipe, the shift spec and the model options (when given). Adding a sparsity, a
seed or a method to a config keeps the hash (finished runs are reused); changing the recipe changes it (every run is
new).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connprune.errors import UserError

Sparsity = float | Literal["auto"]
FORMAT = 1

# -- the schema ----------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MethodEntry(_Strict):
    """One pruning method of the grid."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    sparsities: list[Sparsity] | None = Field(None, min_length=1)
    steps: int = Field(1, ge=1)
    """Prune in this many steps with training between them (``connprune prune --steps``)."""
    step_spacing: Literal["cubic", "linear"] = Field("cubic", alias="step-spacing")
    step_epochs: int = Field(1, ge=0, alias="step-epochs")

    @property
    def schedule(self) -> dict[str, Any]:
        """The PruneJob fields of an iterative schedule (empty for one step, so one-step keys stay as they were)."""
        if self.steps == 1:
            return {}
        return {"steps": self.steps, "step_spacing": self.step_spacing, "step_epochs": self.step_epochs}

    @property
    def display(self) -> str:
        return self.label or self.name


class FineTune(_Strict):
    """Fine-tuning after pruning a trained model (masks enforced, a tenth of the data set's learning rate)."""

    epochs: int = Field(0, ge=0)


class Paper(_Strict):
    """The paper's numbers, shown beside ours in reports."""

    source: str = ""
    accuracy: dict[str, dict[str, dict[Sparsity, float]]] = Field(default_factory=dict)
    """model -> method label -> sparsity -> top-1 accuracy (a fraction in [0, 1])."""


class ExperimentConfig(_Strict):
    """A whole experiment (see the module docstring for the YAML form)."""

    name: str = "experiment"
    description: str = ""
    models: list[str] = Field(min_length=1)
    model_options: dict[str, dict[str, Any]] = Field(default_factory=dict, alias="model-options")
    """Constructor options per model name (e.g. ``resnet18: {small_input: true}``), as ``--model-param``."""
    data: str = "digits"
    data_dir: str | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    methods: list[MethodEntry] = Field(min_length=1)
    sparsities: list[Sparsity] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    fine_tune: FineTune = Field(default_factory=FineTune, alias="fine-tune")
    shift: str = "none"
    paper: Paper | None = None

    def recipe(self, seed: int = 0) -> dict[str, Any]:
        """The full training recipe of the dense models (the data set's default with ``train`` applied)."""
        from connprune.train import default_recipe

        return default_recipe(self.data, **{**self.train, "seed": seed}).model_dump()

    def method_params(self, entry: MethodEntry) -> dict[str, Any]:
        """``entry``'s parameters with the method's defaults filled in (without ``seed``)."""
        from connprune import methods

        full = methods.get(entry.name).Params(**entry.params).model_dump(mode="json")
        full.pop("seed", None)
        return full

    def sparsities_of(self, entry: MethodEntry) -> list[Sparsity]:
        return list(entry.sparsities if entry.sparsities is not None else self.sparsities)


# -- YAML with line numbers ----------------------------------------------------------------------------------------


@dataclass
class _Where:
    """Where a YAML node sits: the line of its key (1-based) and of its value."""

    key_line: int
    value_line: int
    node: Any = None


def _index(node: yaml.Node, path: tuple = (), out: dict | None = None, file: str = "") -> dict[tuple, _Where]:
    """Map every path (keys and list indices) in the composed YAML ``node`` to its lines; duplicate keys are errors."""
    out = {} if out is None else out
    if path == ():
        out[()] = _Where(node.start_mark.line + 1, node.start_mark.line + 1, node)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise UserError(f"{file}, line {line}: key {key!r} appears twice in {_dotted(path) or 'the file'} "
                                f"(first on line {seen[key]}); keep one")
            seen[key] = line
            out[path + (key,)] = _Where(line, value_node.start_mark.line + 1, value_node)
            _index(value_node, path + (key,), out, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            line = item.start_mark.line + 1
            out[path + (i,)] = _Where(line, line, item)
            _index(item, path + (i,), out, file)
    return out


def _construct(node: yaml.Node) -> Any:
    """The Python value of a composed node, as ``yaml.safe_load`` would build it."""
    value = yaml.SafeLoader("").construct_object(node, deep=True)
    return tuple(value) if isinstance(value, list) else value


def _dotted(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Locator:
    """Turns a validation location (pydantic ``loc``) into 'file, line N' and the key it names."""

    def __init__(self, file: str, index: dict[tuple, _Where], data: Any) -> None:
        self.file, self.index, self.data = file, index, data

    def resolve(self, loc: tuple) -> tuple[tuple, int]:
        """The longest prefix of ``loc`` present in the YAML (skipping pydantic's union tags) and its line."""
        path: tuple = ()
        for part in loc:
            spellings = [part] + ([part.replace("-", "_"), part.replace("_", "-")] if isinstance(part, str) else [])
            found = next((p for p in spellings if path + (p,) in self.index), None)
            if found is not None:
                path = path + (found,)
            elif isinstance(part, str) and part.isdigit() and path + (int(part),) in self.index:
                path = path + (int(part),)
            else:
                matched = [k for k in self.index if len(k) == len(path) + 1 and k[:-1] == path
                           and str(k[-1]) == str(part)]
                if matched:
                    path = matched[0]
        where = self.index.get(path, self.index[()])
        return path, where.key_line

    def error(self, loc: tuple, message: str) -> str:
        path, line = self.resolve(loc)
        key = _dotted(path) or "the top level"
        return f"{self.file}, line {line}: {key}: {message}"


def _pydantic_message(err: dict[str, Any], allowed: list[str] | None = None) -> str:
    if err["type"] == "extra_forbidden":
        text = f"unknown key {err['loc'][-1]!r}"
        if allowed:
            text += f"; allowed keys here: {', '.join(allowed)}"
        return text
    if err["type"] == "missing":
        return f"missing required key {err['loc'][-1]!r}"
    value = err.get("input")
    if any(part in ("float", "literal['auto']") for part in err["loc"] if isinstance(part, str)):
        return f"a sparsity is a number in [0, 1) or 'auto' (got {value!r})"
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
    return f"{err['msg']}{shown}"


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _schema_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at ``loc`` (for listing allowed keys)."""
    if len(loc) == 1:
        return ExperimentConfig
    head = loc[0]
    if head == "methods" and len(loc) == 3:
        return MethodEntry
    if head in ("fine-tune", "fine_tune") and len(loc) == 2:
        return FineTune
    if head == "paper" and len(loc) == 2:
        return Paper
    return None


# -- loading -------------------------------------------------------------------------------------------------------


@dataclass
class LoadedConfig:
    """A validated config with where it came from."""

    config: ExperimentConfig
    path: Path | None
    text: str
    hash: str

    @property
    def name(self) -> str:
        return self.config.name


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept the short forms: a scalar where a list is expected, a bare method name, a list of shift specs."""
    raw = dict(raw)
    for key in ("models", "sparsities", "seeds"):
        if key in raw and not isinstance(raw[key], (list, dict)) and raw[key] is not None:
            raw[key] = [raw[key]]
    if isinstance(raw.get("methods"), list):
        raw["methods"] = [{"name": m} if isinstance(m, str) else m for m in raw["methods"]]
    elif isinstance(raw.get("methods"), str):
        raw["methods"] = [{"name": raw["methods"]}]
    if isinstance(raw.get("shift"), list) and all(isinstance(s, str) for s in raw["shift"]):
        raw["shift"] = ",".join(raw["shift"]) if raw["shift"] else "none"
    return raw


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate the YAML config at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass the path of a YAML config (see configs/ for examples)")
    return parse_config(path.read_text(), file=str(path), path=path)


def parse_config(text: str, file: str = "<config>", path: Path | None = None) -> LoadedConfig:
    """Validate config ``text``; errors name ``file``, the line and the key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{file}{where}: not valid YAML ({problem}); fix the syntax") from None
    if node is None or not isinstance(raw, dict):
        raise UserError(f"{file}: a config is a YAML mapping with at least `models:` and `methods:` "
                        "(see configs/ for examples)")
    index = _index(node, file=file)
    locate = _Locator(file, index, raw)
    normalised = _normalise(raw)
    try:
        config = ExperimentConfig.model_validate(normalised)
    except ValidationError as exc:
        problems: dict[tuple, list[str]] = {}
        for err in exc.errors():
            loc = tuple(err["loc"])
            schema = _schema_at(loc) if err["type"] == "extra_forbidden" else None
            allowed = _allowed_keys(schema) if schema is not None else None
            path, _ = locate.resolve(loc)
            message = _pydantic_message(err, allowed)
            if message not in problems.setdefault(path, []):
                problems[path].append(message)
        # one entry per key; a union (a number or 'auto') gives one message per alternative, joined with 'or'
        raise UserError("; ".join(locate.error(path, " or ".join(msgs)) for path, msgs in problems.items())) from None
    _check_semantics(config, locate)
    return LoadedConfig(config=config, path=path, text=text, hash=config_hash(config))


Fail = Callable[[tuple, str], None]
"""Records one problem at a location of the config (``(loc, message)``)."""


def _check_semantics(config: ExperimentConfig, locate: _Locator) -> None:
    """Names against the registries, the recipe against TrainConfig, method parameters, sparsities, shift, paper."""
    problems: list[str] = []

    def fail(loc: tuple, message: str) -> None:
        problems.append(locate.error(loc, message))

    _check_models(config, fail)
    _check_data_and_recipe(config, fail)
    labels = _check_methods(config, fail)
    if len(set(config.seeds)) != len(config.seeds):
        fail(("seeds",), "a seed is listed twice")
    _check_paper(config, labels, fail)
    if problems:
        raise UserError("; ".join(problems))


def _check_models(config: ExperimentConfig, fail: Fail) -> None:
    """Model names and their constructor options."""
    from connprune import models

    for i, name in enumerate(config.models):
        if name not in models.names() and not models.is_factory(name):
            fail(("models", i), f"unknown model {name!r}; choose one of: {', '.join(models.names())}, or "
                 "package.module:factory (your own, imported)")
    for name, options in config.model_options.items():
        if name not in config.models:
            fail(("model-options", name), f"model {name!r} is not in models: ({', '.join(config.models)})")
            continue
        fixed = sorted(set(options) & {"num_classes", "in_channels", "input_size"})
        if fixed:
            fail(("model-options", name), f"{', '.join(fixed)} come from the data set; remove them")
            continue
        try:
            models.resolve_config(name, **options)
        except UserError as exc:
            fail(("model-options", name), str(exc))


def _check_data_and_recipe(config: ExperimentConfig, fail: Fail) -> None:
    """The data set, the training recipe and the shift spec."""
    from connprune import data
    from connprune.data.shift import parse_shift
    from connprune.train.recipes import TrainConfig

    if config.data not in data.names():
        fail(("data",), f"unknown data set {config.data!r}; choose one of: {', '.join(data.names())}")
        return
    if data.info(config.data).shift_only:
        fail(("data",), f"{config.data!r} is a test-only shift set; train on its base set and name it under shift:")
        return
    if "seed" in config.train:
        fail(("train", "seed"), "the seed comes from `seeds:`; remove it from train:")
    else:
        try:
            TrainConfig(**config.train)
        except ValidationError as exc:
            for err in exc.errors():
                allowed = [k for k in TrainConfig.model_fields if k != "seed"]
                fail(("train", *err["loc"]), _pydantic_message(err, allowed))
    info = data.info(config.data)
    try:
        parse_shift(config.shift, channels=info.input_shape[0], base_dataset=info.name)
    except UserError as exc:
        fail(("shift",), str(exc))


def _check_methods(config: ExperimentConfig, fail: Fail) -> dict[str, int]:
    """Method names, parameters, labels, repeats and sparsities; returns label → entry index."""
    from connprune import methods

    labels: dict[str, int] = {}
    seen_runs: dict[str, int] = {}
    for i, entry in enumerate(config.methods):
        if entry.name not in methods.names():
            fail(("methods", i, "name"), f"unknown method {entry.name!r}; choose one of: "
                 f"{', '.join(methods.names())}")
            continue
        cls = methods.get(entry.name)
        if "seed" in entry.params:
            fail(("methods", i, "params", "seed"), "the seed comes from `seeds:`; remove it from params:")
            continue
        try:
            params = config.method_params(entry)
        except ValidationError as exc:
            for err in exc.errors():
                allowed = [k for k in cls.Params.model_fields if k != "seed"]
                fail(("methods", i, "params", *err["loc"]), _pydantic_message(err, allowed))
            continue
        if entry.display in labels:
            fail(("methods", i), f"method label {entry.display!r} is used twice (also entry {labels[entry.display]}); "
                 "give one of them a distinct `label:`")
        labels[entry.display] = i
        signature = json.dumps([entry.name, params, entry.schedule], sort_keys=True)
        if signature in seen_runs:
            fail(("methods", i), f"methods[{i}] repeats methods[{seen_runs[signature]}] (same method, steps and "
                 "parameters); remove one")
        seen_runs[signature] = i
        if not re.fullmatch(r"[A-Za-z0-9._+=-]+", entry.display):
            fail(("methods", i, "label"), f"label {entry.display!r} may only use letters, digits and . _ + = -")
        _check_sparsities(config, entry, i, cls(**entry.params), fail)
    return labels


def _check_sparsities(config: ExperimentConfig, entry: Any, i: int, method: Any, fail: Fail) -> None:
    sparsities = config.sparsities_of(entry)
    if not sparsities:
        fail(("methods", i), "no sparsities: give `sparsities:` at the top level or in this method")
    where = ("methods", i, "sparsities") if entry.sparsities is not None else ("sparsities",)
    for j, sparsity in enumerate(sparsities):
        try:
            method.check_sparsity(sparsity)
        except UserError as exc:
            fail(where + (j,), f"{entry.display}: {exc}")


def _check_paper(config: ExperimentConfig, labels: dict[str, int], fail: Fail) -> None:
    """The paper's numbers name models and method labels of this config, as fractions."""
    if config.paper is None:
        return
    for model, per_method in config.paper.accuracy.items():
        if model not in config.models:
            fail(("paper", "accuracy", model), f"model {model!r} is not in models: ({', '.join(config.models)})")
        for label, per_sparsity in per_method.items():
            if label not in labels:
                fail(("paper", "accuracy", model, label),
                     f"method {label!r} is not a method label of this config ({', '.join(labels)})")
            for sparsity, acc in per_sparsity.items():
                if not 0.0 <= acc <= 1.0:
                    fail(("paper", "accuracy", model, label, sparsity),
                         f"accuracy {acc} is not a fraction in [0, 1] (write 91.3% as 0.913)")


# -- hashing and the grid ------------------------------------------------------------------------------------------


def _digest(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:length]


def config_hash(config: ExperimentConfig) -> str:
    """The hash of what changes a run's result besides its grid coordinates (see the module docstring)."""
    setting = {"format": FORMAT, "data": config.data, "train": config.recipe(0),
               "fine_tune": config.fine_tune.model_dump(), "shift": config.shift}
    if config.model_options:  # only when given, so that configs without them keep their hash
        setting["model_options"] = config.model_options
    return _digest(setting)


def sparsity_text(sparsity: Sparsity) -> str:
    """The canonical text of a sparsity: ``"auto"`` or the shortest float repr (``0.5``, ``0.95``)."""
    return "auto" if sparsity == "auto" else repr(float(sparsity))


@dataclass(frozen=True)
class RunSpec:
    """One grid point."""

    key: str
    config_hash: str
    model: str
    method: str
    label: str
    params: dict[str, Any] = field(hash=False)
    params_json: str = ""
    sparsity: Sparsity = 0.0
    seed: int = 0
    needs_trained: bool = True
    schedule: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_key(config_hash_: str, model: str, method: str, label: str, params_json: str, sparsity: Sparsity,
            seed: int) -> str:
    digest = _digest([config_hash_, model, method, params_json, sparsity_text(sparsity), seed], 10)
    return f"{model}-{label}-sp{sparsity_text(sparsity)}-s{seed}-{digest}"


def expand(loaded: LoadedConfig) -> list[RunSpec]:
    """The grid of ``loaded``: models × seeds × methods × sparsities, in that nesting order."""
    from connprune import methods

    config = loaded.config
    runs = []
    for model in config.models:
        for seed in config.seeds:
            for entry in config.methods:
                params = config.method_params(entry)
                params_json = json.dumps(params, sort_keys=True, separators=(",", ":"))
                keyed = params_json + (json.dumps(entry.schedule, sort_keys=True) if entry.schedule else "")
                needs_trained = methods.get(entry.name).needs_trained
                for sparsity in config.sparsities_of(entry):
                    sparsity = "auto" if sparsity == "auto" else float(sparsity)
                    key = run_key(loaded.hash, model, entry.name, entry.display, keyed, sparsity, seed)
                    runs.append(RunSpec(key=key, config_hash=loaded.hash, model=model, method=entry.name,
                                        label=entry.display, params=params, params_json=params_json,
                                        sparsity=sparsity, seed=seed, needs_trained=needs_trained,
                                        schedule=entry.schedule))
    return runs


def paper_accuracy(config: ExperimentConfig, model: str, label: str, sparsity: Sparsity) -> float | None:
    """The paper's accuracy for (model, method label, sparsity), if the config names one."""
    if config.paper is None:
        return None
    table = config.paper.accuracy.get(model, {}).get(label, {})
    for key, value in table.items():
        if sparsity_text(key) == sparsity_text(sparsity):
            return float(value)
    return None

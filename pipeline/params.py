"""Typed, validated view of `params.yaml`: the only module that reads it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator
from ruamel.yaml import YAML, YAMLError

from pipeline.redact import has_password

# The package lives at <root>/pipeline/, so the repository root is one level up.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIDE = 28


class PipelineError(Exception):
    """A failure the user can fix; its message says what is wrong."""


class ParamsError(PipelineError):
    """`params.yaml` is malformed or holds a bad value; the message names the key."""


class _Section(BaseModel):
    # Strict: `seed: 4.5`, `latent_dim: true` and `epochs: "ten"` are refused, not coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Tracking(_Section):
    experiment: str = Field("fashion-mnist-vae", min_length=1)
    registered_model: str = Field("fashion-mnist-vae", min_length=1)
    system_metrics_interval: float = Field(2.0, gt=0)
    champion_sd: float = Field(0.89, gt=0)
    champion_level: float = Field(0.025, gt=0, lt=0.5)


class Base(_Section):
    seed: int = Field(42, ge=0)  # the validation split, and evaluation's and plotting's sampling
    backend: Literal["tensorflow", "jax"] = "tensorflow"  # Keras' backend for every stage and trial
    tracking: Tracking = Tracking()


class Data(_Section):
    source: str | None = None
    url: str = Field("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", min_length=1)
    val_size: int = Field(5000, ge=1, le=59_999)
    train_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _fits_in_training_set(self) -> Data:
        if self.train_size is not None and self.train_size + self.val_size > 60_000:
            raise ValueError(
                f"data.train_size ({self.train_size}) + data.val_size ({self.val_size}) "
                "exceeds the 60000 training images"
            )
        return self


class Model(_Section):
    latent_dim: int = Field(2, ge=1, le=512)
    encoder_filters: list[Annotated[int, Field(ge=1)]] = Field([32, 64], min_length=1, max_length=2)
    decoder_filters: list[Annotated[int, Field(ge=1)]] = Field([16, 8], min_length=1, max_length=2)
    decoder_channels: int = Field(32, ge=1)
    kernel_size: int = Field(3, ge=1, le=7)
    dense_units: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _shapes_fit(self) -> Model:
        # Each decoder layer doubles the side, so they must rebuild 28 from an integer side.
        if IMAGE_SIDE % 2 ** len(self.decoder_filters):
            raise ValueError("model.decoder_filters: at most 2 stride-2 layers fit a 28x28 image")
        return self

    @property
    def decoder_side(self) -> int:
        """Side of the decoder's first feature map: 7 for the default two layers."""
        return IMAGE_SIDE // 2 ** len(self.decoder_filters)


class Train(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(100, ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["nadam", "adam", "adamw", "rmsprop", "sgd"] = "nadam"
    steps_per_execution: int = Field(50, ge=1)
    seed: int = Field(42, ge=0)  # initial weights, shuffling, sampling noise: a replicate changes only this
    threads: int = Field(0, ge=0, le=256)  # TensorFlow's threads; 0 = its default, one per core
    # The two standard levers of time to quality, from Keras; the defaults leave both off.
    schedule: Literal["constant", "cosine", "plateau"] = "constant"
    warmup_epochs: float = Field(0, ge=0)  # constant, cosine: linear warm-up from 0 to learning_rate
    final_lr_fraction: float = Field(0, ge=0, le=1)  # cosine: the last step's rate, a fraction of the peak
    plateau_factor: float = Field(0.5, gt=0, lt=1)  # plateau: the rate is multiplied by this ...
    plateau_patience: int = Field(2, ge=1)  # ... after this many epochs without a better val_loss
    early_stopping: int = Field(0, ge=0)  # stop after this many epochs without a better val_loss; 0 = off
    # Against a collapsed latent space, and the KL's weight; all off here. Training's objective
    # changes, never the negative ELBO every stage reports.
    kl_warmup_epochs: float = Field(0, ge=0)  # the KL term's weight rises from 0 to kl_weight over these
    free_bits: float = Field(0, ge=0)  # nats: each latent unit's KL counts as at least this much
    kl_weight: float = Field(1, gt=0, le=100)  # the KL term's weight (beta); 1 = the negative ELBO itself

    @model_validator(mode="after")
    def _levers_fit(self) -> Train:
        if self.warmup_epochs and self.schedule == "plateau":
            raise ValueError("train.warmup_epochs: the plateau schedule does not warm up")
        if self.final_lr_fraction and self.schedule != "cosine":
            raise ValueError("train.final_lr_fraction: only the cosine schedule decays")
        for key in ("warmup_epochs", "kl_warmup_epochs"):
            if getattr(self, key) >= self.epochs:
                raise ValueError(
                    f"train.{key} ({getattr(self, key):g}) must be below train.epochs ({self.epochs})"
                )
        return self


class Evaluate(_Section):
    iw_samples: int = Field(50, ge=1, le=5000)
    knn_neighbors: int = Field(5, ge=1)
    active_threshold: float = Field(0.01, gt=0)
    batch_size: int = Field(500, ge=1)


class Plot(_Section):
    grid_size: int = Field(15, ge=2, le=50)
    quantile_low: float = Field(0.05, gt=0, lt=1)
    quantile_high: float = Field(0.95, gt=0, lt=1)
    n_reconstructions: int = Field(10, ge=1, le=50)
    prior_grid: int = Field(8, ge=1, le=30)
    scatter_points: int | None = Field(None, ge=1)
    dpi: int = Field(110, ge=30, le=600)
    epoch_images: int = Field(5, ge=0)  # train logs pictures to MLflow every this many epochs; 0 = off

    @model_validator(mode="after")
    def _ordered(self) -> Plot:
        if self.quantile_low >= self.quantile_high:
            raise ValueError("plot.quantile_low must be below plot.quantile_high")
        return self


class Dimension(_Section):
    """One searched key: a numeric range (`low`, `high`, optional `log` or `step`) or `choices`."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = Field(None, gt=0)
    choices: list[int | float | str | bool] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _well_formed(self) -> Dimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high, or choices")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self

    @property
    def is_int(self) -> bool:
        """An integer range: both ends are integers."""
        return isinstance(self.low, int) and isinstance(self.high, int)


def _auto_or(low: int, high: int) -> PlainValidator:
    """Accept the string "auto" or an integer from low to high, with one plain message."""

    def check(value: Any) -> int | str:
        if value == "auto" or (type(value) is int and low <= value <= high):
            return value
        raise ValueError(f"must be auto or an integer from {low} to {high}")

    return PlainValidator(check)


class Tune(_Section):
    study_name: str = Field("vae-search", min_length=1)
    storage: str | None = None  # None: a journal file under optuna/ at the repository root
    n_trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0)
    # "auto": one worker per core (as many as memory holds), each TensorFlow thread pool sized
    # so that workers x threads fit the cores; `threads: 0` leaves TensorFlow's own default.
    workers: Annotated[int | str, _auto_or(1, 64)] = "auto"
    threads: Annotated[int | str, _auto_or(0, 256)] = "auto"
    trials_per_gpu: int = Field(4, ge=1, le=64)  # where GPUs are, `auto` workers: this many per GPU
    # val_loss: one objective, the validation negative ELBO. rate_distortion: two, its parts (the
    # KL and the reconstruction term), and the study's answer is their Pareto front.
    objective: Literal["val_loss", "rate_distortion"] = "val_loss"
    sampler: Literal["tpe", "random", "qmc"] = "tpe"
    sampler_seed: int | None = Field(None, ge=0)  # None: base.seed; worker k draws with this + k
    pruner: Literal["hyperband", "median", "none"] = "hyperband"
    pruner_startup_trials: int = Field(5, ge=0)
    pruner_warmup_epochs: int = Field(1, ge=0)
    heartbeat_interval: int = Field(60, ge=1)
    grace_period: int = Field(180, ge=2)
    stop_timeout: float = Field(30, gt=0)  # seconds stopped workers get to close their trials
    confirm_top: int = Field(3, ge=0)  # the best trials re-trained on more seeds before naming the best
    confirm_seeds: int = Field(2, ge=0)  # more seeds for each of them
    overrides: dict[str, Any] = {}  # applied to every trial: the search's budget
    confirm_overrides: dict[str, Any] = {}  # then to the confirming trials: their budget, if another
    space: dict[str, Dimension] = Field(default_factory=dict)


class Params(_Section):
    base: Base = Base()
    data: Data = Data()
    model: Model = Model()
    train: Train = Train()
    evaluate: Evaluate = Evaluate()
    plot: Plot = Plot()
    tune: Tune = Tune()

    @model_validator(mode="after")
    def _searchable(self) -> Params:
        known = {k: v for k, v in flatten(self).items() if not k.startswith("tune.")}
        for section in ("space", "overrides", "confirm_overrides"):
            for key in getattr(self.tune, section):
                if key not in known:
                    raise ValueError(f"tune.{section}: {key!r} is not a params.yaml key outside tune")
                if key == "base.backend":  # a worker process runs one backend
                    raise ValueError(f"tune.{section}: base.backend is the sweep's, set it under base")
        for key in self.tune.confirm_overrides:
            if key in self.tune.space or key in ("train.seed", "base.seed"):
                raise ValueError(
                    f"tune.confirm_overrides: {key!r} is searched or a seed; a confirming trial keeps it"
                )
        for key, dimension in self.tune.space.items():
            current = known[key]
            if dimension.choices is None and (
                isinstance(current, bool) or not isinstance(current, int | float)
            ):
                raise ValueError(f"tune.space.{key}: a range needs a numeric key; use choices")
            if dimension.choices is None and isinstance(current, int) and not dimension.is_int:
                raise ValueError(f"tune.space.{key}: {key} is an integer, so low and high must be too")
        return self


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return f"{key}: {message}" if key else message


def read_yaml(path: Path) -> Any:
    """Parse YAML the way DVC does (YAML 1.2, so `1e-3` is a float)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return YAML(typ="safe", pure=True).load(handle)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise ParamsError naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ParamsError(f"{source}: {problems}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """`"train.epochs=5"` -> `("train.epochs", 5)`, the value read as YAML as `dvc exp run -S` does."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r}: expected key=value, e.g. train.epochs=5")
    try:
        return key.strip(), YAML(typ="safe", pure=True).load(value)
    except YAMLError:
        raise ParamsError(f"override {text!r}: the value is not valid YAML") from None


def with_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a raw params mapping with dotted keys set, e.g. `{"train.epochs": 5}`."""
    result = copy.deepcopy(raw)
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = result
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override {key}: {section} is not a section")
        node[leaf] = value
    return result


def refuse_passwords(raw: Any, source: str, prefix: str = "") -> None:
    """Stop at a URL with a password: params.yaml is committed, locked by DVC and logged."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            refuse_passwords(value, source, f"{prefix}{key}.")
    elif isinstance(raw, str) and has_password(raw):
        raise ParamsError(
            f"{source}: {prefix.rstrip('.')}: the URL holds a password, which would be committed and "
            "logged; leave it out and give it as PGPASSWORD or in ~/.pgpass (MLFLOW_TRACKING_PASSWORD "
            "for a tracking server)"
        )


def read_params(path: Path | str | None = None) -> Any:
    """The raw mapping in `params.yaml` (default: the one at the repository root)."""
    path = Path(path) if path is not None else PACKAGE_ROOT / "params.yaml"
    raw = read_yaml(path)
    refuse_passwords(raw, path.name)
    return raw


def load_params(path: Path | str | None = None) -> Params:
    """Read and validate `params.yaml` (default: the one at the repository root)."""
    return parse_params(read_params(path))


def flatten(params: Params) -> dict[str, Any]:
    """`{"train.learning_rate": 0.001, ...}`: the keys DVC and MLflow use."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    walk("", params.model_dump())
    return flat

"""What counts as one configuration: the settings that change a run's numbers, the training seed aside.

Runs of one configuration are replicates. `train`, `tune`, `compare` and the registry all group
runs by `config_id`, and nothing else decides it. The id is a digest of

- the data's digest (the prepared arrays, so not where the files lie), and
- every setting that changes a number and is not at its default, written canonically.

A key at its default is left out, so adding a key whose default keeps today's numbers keeps every
existing id. Left out as well: the training seed (what replicates differ in), settings that change
no number (steps per compiled call, tracking, plotting, the search's own settings, where the data
files lie), how the numbers are computed (the thread count and Keras' backend: they change the
rounding, and the backend the random streams, so a run's numbers but not what it trains), and
settings that another choice makes inert (the plateau keys under another schedule). Runs of one
configuration on two backends are replicates; `env.keras_backend` tells them apart.

The code that shapes the numbers is not in the id: `code_digest` gives it a tag of its own, and
`compare` says when one configuration's runs come from different code.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.params import Params, flatten, parse_params, with_overrides

# Settings that change no number a run gets, only how it is computed, or (the seed) tell
# replicates apart.
NO_EFFECT = (
    "train.seed",
    "train.threads",
    "base.backend",
    "train.steps_per_execution",  # batches per compiled call: the same updates
    "data.source",  # where the files lie: the data's digest says what they hold
    "data.url",
    "base.tracking.",
    "plot.",
    "tune.",
)
PLATEAU_ONLY = ("train.plateau_factor", "train.plateau_patience")
# The modules whose code shapes a run's numbers: the data's split, the model and its loss, the
# training loop and what `train` keeps of it, the evaluation and its measures.
CODE = ("data.py", "model.py", "training.py", "train.py", "evaluate.py", "measures.py")
DEFAULTS = flatten(Params())


def settings(params: Params) -> dict[str, Any]:
    """The settings that make this configuration differ from the defaults, by dotted key."""
    flat = flatten(params)
    inert = PLATEAU_ONLY if flat["train.schedule"] != "plateau" else ()
    return {
        key: value
        for key, value in flat.items()
        if not key.startswith(NO_EFFECT) and key not in inert and value != DEFAULTS[key]
    }


def config_id(params: Params, data_digest: str) -> str:
    """A 12-digit digest of the data and `settings(params)`: what replicates share."""
    canonical = json.dumps({"data": data_digest[:16], "settings": settings(params)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def protocol(params: Params, data_digest: str) -> str:
    """A 12-digit digest of how a model is evaluated: the data (its test set among them), the
    evaluation settings and the seed of evaluation's draws. Only versions evaluated alike compete."""
    evaluation = {k: v for k, v in flatten(params).items() if k.startswith("evaluate.")}
    canonical = json.dumps(
        {"data": data_digest[:16], "evaluate": evaluation, "seed": params.base.seed}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def code_digest() -> str:
    """A 12-digit digest of the modules in `CODE`, as this checkout has them."""
    sha = hashlib.sha256()
    for name in CODE:
        sha.update((Path(__file__).parent / name).read_bytes())
    return sha.hexdigest()[:12]


def from_logged(logged: dict[str, str]) -> Params:
    """The params of a run, from the strings MLflow logged; a key the run predates takes its
    default, and a key since removed is ignored."""
    values = {}
    for key, text in logged.items():
        if key in DEFAULTS and not key.startswith(NO_EFFECT):
            try:
                values[key] = ast.literal_eval(text)
            except (ValueError, SyntaxError):  # a bare string, such as `nadam`
                values[key] = text
    return parse_params(with_overrides({}, values), "the run's logged params")

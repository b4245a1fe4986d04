"""The search space of the progressive tuner: the tunable hyperparameters and their stages.

The tuner visits hyperparameters progressively, in `TUNING_ORDER`, highest expected impact first:

    1 learning_rate  2 dropout  3 hidden_size  4 batch_size  5 weight_decay  6 embed_dim
    7 optimizer      8 activation

A `Stage` varies one hyperparameter (or two, where the config pairs them; one or two at a time
keeps each stage's effect readable) over its candidates while every other one keeps the best value
found so far. Each hyperparameter lives at a dotted path of the training config (`HYPERPARAMETERS`);
``learning_rate``, ``dropout`` and ``weight_decay`` change no array shape, so the candidates of a
stage made only of them can train together in one vmapped program (``shares_shapes``).

``hidden_size`` 0 means a linear head (jaxnn.train.config).

Every check here runs before any training: an empty candidate list, an unknown name, a value out of
range, a pair that names a hyperparameter twice, a path missing from the training config.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ml_collections

from jaxnn.train.config import ACTIVATIONS, OPTIMIZERS

__all__ = [
    "HYPERPARAMETERS",
    "TUNING_ORDER",
    "Hyperparameter",
    "Stage",
    "apply_assignment",
    "build_stages",
    "check_config_paths",
    "check_value",
    "get_path",
    "read_assignment",
]

Value = float | int | str


@dataclass(frozen=True)
class Hyperparameter:
    """One tunable hyperparameter.

    Attributes:
      name: the hyperparameter's name, a key of the tuning config's candidates.
      path: dotted path in the training ConfigDict, e.g. "optim.learning_rate".
      kind: "float", "int" or "choice".
      low, high: bounds for float/int kinds; ``low_open`` / ``high_open`` exclude the bound.
      choices: the allowed values of a "choice" hyperparameter.
      shares_shapes: True when changing it changes no array shape (trials may be vmapped).
    """

    name: str
    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    shares_shapes: bool = False

    def allowed(self) -> str:
        """The valid range in words, for error messages."""
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open or self.high is None else "]"
        high = "inf" if self.high is None else f"{self.high:g}"
        kind = "an int" if self.kind == "int" else "a finite number"
        return f"{kind} in {lo}{self.low:g}, {high}{hi}"


TUNING_ORDER = (
    "learning_rate",
    "dropout",
    "hidden_size",
    "batch_size",
    "weight_decay",
    "embed_dim",
    "optimizer",
    "activation",
)
"""The order in which the progressive tuner visits hyperparameters, one stage each.

Highest expected impact first: the learning rate, since nothing else can be judged while training
diverges or stalls; then regularization, capacity and gradient noise (dropout, hidden size, batch
size, weight decay, embedding width); last the discrete choices (optimizer, activation), which
usually move the validation metric least once the rest is tuned. Each stage starts from the best
values found by the stages before it.
"""

HYPERPARAMETERS: dict[str, Hyperparameter] = {
    h.name: h
    for h in (
        Hyperparameter(
            "learning_rate",
            "optim.learning_rate",
            "float",
            0.0,
            None,
            low_open=True,
            shares_shapes=True,
        ),
        Hyperparameter(
            "dropout", "model.dropout", "float", 0.0, 1.0, high_open=True, shares_shapes=True
        ),
        Hyperparameter("hidden_size", "model.hidden_size", "int", 0, None),
        Hyperparameter("batch_size", "train.batch_size", "int", 1, None),
        Hyperparameter(
            "weight_decay", "optim.weight_decay", "float", 0.0, None, shares_shapes=True
        ),
        Hyperparameter("embed_dim", "model.embed_dim", "int", 1, None),
        Hyperparameter("optimizer", "optim.optimizer", "choice", choices=OPTIMIZERS),
        Hyperparameter("activation", "model.activation", "choice", choices=ACTIVATIONS),
    )
}
assert tuple(HYPERPARAMETERS) == TUNING_ORDER


def _unknown(name: object) -> ValueError:
    return ValueError(
        f"unknown hyperparameter {name!r}; allowed (in tuning order): "
        f"{list(TUNING_ORDER)}"
    )


def check_value(name: str, value: object) -> Value:
    """Return ``value`` as the hyperparameter's type, or raise ValueError naming name and range.

    Floats accept ints (3 -> 3.0); ints refuse floats and bools; NaN and inf are refused.
    """
    if name not in HYPERPARAMETERS:
        raise _unknown(name)
    h = HYPERPARAMETERS[name]
    bad = ValueError(f"candidate {name}={value!r} is out of range: allowed {h.allowed()}")
    if h.kind == "choice":
        if not isinstance(value, str) or value not in h.choices:
            raise bad
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    if h.kind == "int":
        if not isinstance(value, int):
            raise bad
        number: float | int = int(value)
    else:
        number = float(value)
        if not math.isfinite(number):
            raise bad
    if h.low is not None and (number < h.low or (h.low_open and number == h.low)):
        raise bad
    if h.high is not None and (number > h.high or (h.high_open and number == h.high)):
        raise bad
    return number


@dataclass(frozen=True)
class Stage:
    """One step of the progressive search.

    Attributes:
      params: the 1 or 2 hyperparameter names this stage varies, in `TUNING_ORDER`.
      candidates: the value tuples tried (one value per name in ``params``); for a pair, the grid
        product of both candidate lists.
    """

    params: tuple[str, ...]
    candidates: tuple[tuple[Value, ...], ...]

    @property
    def name(self) -> str:
        return "+".join(self.params)

    @property
    def shares_shapes(self) -> bool:
        """True when every varied hyperparameter leaves array shapes alone (vmappable stage)."""
        return all(HYPERPARAMETERS[p].shares_shapes for p in self.params)

    def assignments(self) -> list[dict[str, Value]]:
        """The candidates as {name: value} dicts."""
        return [dict(zip(self.params, values)) for values in self.candidates]


def _as_list(name: str, values: object) -> list:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ValueError(
            f"candidates for {name!r} must be a list or tuple of values, got {values!r}"
        )
    values = list(values)
    if not values:
        raise ValueError(f"the candidate list for {name!r} is empty; give at least one value")
    return values


def build_stages(
    candidates: Mapping[str, Sequence[Value]], pairs: Sequence[Sequence[str]] = ()
) -> list[Stage]:
    """Validate candidates and order them into stages (`TUNING_ORDER`).

    Args:
      candidates: {hyperparameter name: candidate values}; hyperparameters not named here are not
        tuned (they keep the training config's value).
      pairs: groups of two names tuned together in one stage over the grid of their candidates;
        the stage sits at the position of its earlier member.

    Returns:
      The stages in order. Raises ValueError (naming the argument, value and what is allowed) for
      an empty candidates mapping or list, an unknown name, an out-of-range or repeated value, and
      a pair that is not two distinct tuned names or that shares a name with another pair.
    """
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError(
            f"candidates must name at least one hyperparameter of {list(TUNING_ORDER)}, "
            f"got {candidates!r}"
        )
    checked: dict[str, tuple[Value, ...]] = {}
    for name, values in candidates.items():
        if name not in HYPERPARAMETERS:
            raise _unknown(name)
        values = [check_value(name, v) for v in _as_list(name, values)]
        if len(set(values)) != len(values):
            raise ValueError(f"candidates for {name!r} repeat a value: {values}")
        checked[name] = tuple(values)
    paired: dict[str, tuple[str, ...]] = {}
    for pair in pairs:
        pair = tuple(pair)
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"a pair must name two different hyperparameters, got {pair!r}")
        for name in pair:
            if name not in HYPERPARAMETERS:
                raise _unknown(name)
            if name not in checked:
                raise ValueError(f"pair {pair!r} names {name!r}, which has no candidates")
            if name in paired:
                raise ValueError(f"{name!r} appears in two pairs: {paired[name]} and {pair}")
        ordered = tuple(sorted(pair, key=TUNING_ORDER.index))
        for name in pair:
            paired[name] = ordered
    stages, done = [], set()
    for name in TUNING_ORDER:
        if name not in checked or name in done:
            continue
        params = paired.get(name, (name,))
        done.update(params)
        grid = tuple(itertools.product(*(checked[p] for p in params)))
        stages.append(Stage(params, grid))
    return stages


def get_path(config: ml_collections.ConfigDict, path: str) -> object:
    """config["a.b.c"] as config.a.b.c; KeyError names the missing path."""
    node = config
    for part in path.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise KeyError(f"the training config has no {path!r} (missing {part!r})")
        node = node[part]
    return node


def check_config_paths(config: ml_collections.ConfigDict, names: Sequence[str]) -> None:
    """Raise ValueError when the training config lacks the path of a tuned hyperparameter."""
    for name in names:
        try:
            get_path(config, HYPERPARAMETERS[name].path)
        except KeyError as err:
            raise ValueError(
                f"hyperparameter {name!r} is tuned but {err.args[0]}; add "
                f"{HYPERPARAMETERS[name].path} to the training config"
            ) from None


def read_assignment(config: ml_collections.ConfigDict, names: Sequence[str]) -> dict[str, Value]:
    """The training config's current values of ``names``."""
    return {name: get_path(config, HYPERPARAMETERS[name].path) for name in names}


def apply_assignment(
    config: ml_collections.ConfigDict, assignment: Mapping[str, Value]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with each hyperparameter of ``assignment`` set at its path."""
    out = ml_collections.ConfigDict(config.to_dict())
    for name, value in assignment.items():
        path = HYPERPARAMETERS[name].path
        get_path(out, path)  # raises KeyError naming the path
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = check_value(name, value)
    return out

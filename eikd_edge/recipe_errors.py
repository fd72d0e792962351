"""A recipe that does not validate, explained in one line, apart from the recipe's schema (config.py): an unknown
setting gets the nearest valid name, in its own section or another (`seed` -> `train.seed`)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


def explain(exc: ValidationError, root: type[BaseModel]) -> str:
    """The first error, in words: an unknown setting with the nearest valid name, else pydantic's message."""
    error = exc.errors()[0]
    location = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown setting {location!r}{_suggest(error['loc'], root)}"
    if error["type"] == "value_error":  # our own validators: the message already names the settings
        return str(error.get("ctx", {}).get("error", error["msg"]))
    return f"{location}: {error['msg']}"


def _suggest(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    model = root
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    exact = [p for p in _setting_paths(root) if p.rsplit(".", 1)[-1] == str(loc[-1])]
    if exact:  # the right name in the wrong section: `seed` is `train.seed`
        return f"; did you mean {exact[0]!r}?"
    match = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    prefix = ".".join(str(p) for p in loc[:-1])
    if match:
        return f"; did you mean {(prefix + '.' if prefix else '') + match[0]!r}?"
    elsewhere = _suggest_elsewhere(str(loc[-1]), root)
    return f"; did you mean {elsewhere!r}?" if elsewhere else ""


def _setting_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every setting of the recipe as a dotted path, sections included (train, train.seed, train.augment.flip...)."""
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths.extend(_setting_paths(field.annotation, f"{path}."))
    return paths


def _suggest_elsewhere(name: str, root: type[BaseModel]) -> str | None:
    """A setting of that name (or close to it) in another section: `seed` -> `train.seed`."""
    paths = _setting_paths(root)
    leaves = [p.rsplit(".", 1)[-1] for p in paths]
    match = difflib.get_close_matches(name, leaves, n=1)
    return paths[leaves.index(match[0])] if match else None

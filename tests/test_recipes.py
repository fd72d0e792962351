"""The shipped recipes stay valid and recipes/default.yaml stays equal to the built-in defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from eikd_edge.config import Recipe, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_default_recipe_equals_builtin_defaults() -> None:
    default = next(p for p in RECIPES if p.name == "default.yaml")
    assert load_recipe(default).dump() == Recipe().dump()


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_validates(path: Path) -> None:
    assert isinstance(load_recipe(path), Recipe)

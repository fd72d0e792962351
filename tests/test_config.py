"""Recipes: defaults, typed `--set` overrides, helpful errors, YAML files and a run's resolved recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eikd_edge.config import Recipe, SelectionConfig, load_recipe, validate_recipe
from eikd_edge.errors import EikdError

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_defaults_validate() -> None:
    recipe = load_recipe(None)
    assert recipe == Recipe()
    assert recipe.method == "eikd"
    assert recipe.loss.class_drop.enabled and recipe.loss.feature.enabled and recipe.loss.relation.enabled
    assert 0 < recipe.selection.keep_fraction <= 1
    # the dumped defaults validate again to the same recipe
    assert validate_recipe(recipe.dump(), "dump") == recipe
    assert load_recipe(None, []) == recipe


def test_overrides_apply_typed_values() -> None:
    recipe = load_recipe(None, ["train.lr=0.2", "loss.feature.enabled=false", "method=random"])
    assert recipe.train.lr == 0.2
    assert isinstance(recipe.train.lr, float)
    assert recipe.loss.feature.enabled is False
    assert recipe.method == "random"
    # untouched settings keep their defaults
    assert recipe.loss.relation == Recipe().loss.relation
    assert recipe.train.epochs == Recipe().train.epochs


def test_more_override_types() -> None:
    recipe = load_recipe(
        None,
        [
            "train.epochs=3",
            "selection.dedup_threshold=0.97",
            "selection.dedup_threshold=null",  # a later --set wins
            "loss.class_drop.top_k=2",
            "train.device=cuda:1",
            "student.width = 0.5",
            "train.weight_decay=1e-4",  # PyYAML reads 1e-4 as a string; pydantic still makes it a float
        ],
    )
    assert recipe.train.weight_decay == pytest.approx(1e-4)
    assert recipe.train.epochs == 3 and isinstance(recipe.train.epochs, int)
    assert recipe.selection.dedup_threshold is None
    assert recipe.loss.class_drop.top_k == 2
    assert recipe.train.device == "cuda:1"
    assert recipe.student.width == 0.5


def test_unknown_key_suggests_the_nearest_name() -> None:
    with pytest.raises(EikdError) as info:
        load_recipe(None, ["train.lrr=1"])
    message = str(info.value)
    assert "train.lrr" in message
    assert "train.lr" in message.split("did you mean", 1)[1]
    with pytest.raises(EikdError, match=r"did you mean 'loss\.class_drop\.mass'"):
        load_recipe(None, ["loss.class_drop.mas=0.5"])
    with pytest.raises(EikdError, match=r"did you mean 'method'"):
        load_recipe(None, ["methd=kd"])


def test_wrong_type_names_the_field() -> None:
    with pytest.raises(EikdError, match=r"train\.epochs"):
        load_recipe(None, ["train.epochs=abc"])
    with pytest.raises(EikdError, match=r"selection\.keep_fraction"):
        load_recipe(None, ["selection.keep_fraction=1.5"])  # out of range
    with pytest.raises(EikdError, match="method"):
        load_recipe(None, ["method=distill"])  # not one of the methods


def test_malformed_override_raises() -> None:
    with pytest.raises(EikdError, match="key=value"):
        load_recipe(None, ["train.lr"])
    with pytest.raises(EikdError):
        load_recipe(None, ["method=kd", "method.x=1"])  # method is a value, not a section


def test_override_values_are_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(EikdError, match="is not a device"):  # read as text, then refused: never run
        load_recipe(None, ["train.device=__import__('os')"])
    # a YAML tag that an unsafe loader would execute: stays inert text (then refused as a device name)
    payload = f"!!python/object/apply:os.system ['touch {marker}']"
    with pytest.raises(EikdError, match=r"os\.system"):
        load_recipe(None, [f"train.device={payload}"])
    assert not marker.exists()
    with pytest.raises(EikdError):  # code in a numeric field is rejected as a bad value, not run
        load_recipe(None, [f"train.lr=__import__('pathlib').Path('{marker}').touch()"])
    assert not marker.exists()


def test_yaml_recipe_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "method: eikd\n"
        "selection:\n  sampler: top\n  keep_fraction: 0.3\n  score: energy\n"
        "loss:\n  temperature: 2.0\n  relation:\n    enabled: false\n"
        "train:\n  epochs: 2\n  optimizer: adamw\n"
    )
    recipe = load_recipe(path, ["train.epochs=5"])
    assert recipe.method == "eikd"
    assert recipe.selection == SelectionConfig(sampler="top", keep_fraction=0.3, score="energy")
    assert recipe.loss.temperature == 2.0
    assert recipe.loss.relation.enabled is False
    assert recipe.train.optimizer == "adamw"
    assert recipe.train.epochs == 5  # --set wins over the file


def test_yaml_recipe_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(EikdError, match=r"bad\.yaml.*train\.lr"):
        load_recipe(bad)
    with pytest.raises(EikdError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(EikdError, match="not valid YAML"):
        load_recipe(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(EikdError, match="mapping"):
        load_recipe(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_recipe(empty) == Recipe()


def test_resolved_recipe_of_a_run_loads(tmp_path: Path) -> None:
    original = load_recipe(None, ["method=random", "train.lr=0.01", "loss.class_drop.top_k=3"])
    resolved = {
        "eikd_edge_version": "0.1.0",
        "inputs": {"teacher": "/models/teacher.pt", "pool": "/data/field", "val": None},
        "recipe": original.dump(),
    }
    path = tmp_path / "recipe.resolved.yaml"
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    assert load_recipe(path) == original
    assert load_recipe(path, ["train.lr=0.5"]).train.lr == 0.5


@pytest.mark.parametrize(
    "path",
    sorted(RECIPES.glob("*.yaml")) + sorted(RECIPES.glob("*.yml"))
    or [pytest.param(None, marks=pytest.mark.skip(reason="recipes/ has no YAML files yet"))],
    ids=lambda p: p.name if isinstance(p, Path) else "none",
)
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)


def test_unknown_key_suggests_the_setting_in_another_section() -> None:
    with pytest.raises(EikdError, match=r"unknown setting 'seed'; did you mean 'train\.seed'"):
        load_recipe(None, ["seed=1"])
    with pytest.raises(EikdError, match=r"did you mean 'selection\.keep_fraction'"):
        load_recipe(None, ["keep_fraction=0.2"])
    with pytest.raises(EikdError, match=r"did you mean 'train\.epochs'"):
        load_recipe(None, ["train.epoch=3"])

"""Recipes: the whole Constitutional AI pipeline from one YAML file (`cai run`).

    cai run tiny                      # bundled: embedded model, minutes on a laptop CPU
    cai run my-recipe.yaml --out runs/exp1

A stage is skipped when its inputs are unchanged since the last run into the same directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from constitutional.recipe.schema import Recipe
from constitutional.yamlfile import LocatedValueError, load_yaml_model

__all__ = ["Recipe", "builtin_recipes", "load_recipe"]


def builtin_recipes() -> dict[str, Path]:
    """Bundled recipe name → file."""
    folder = Path(str(files("constitutional.recipe") / "builtin"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_recipe(source: str | Path) -> Recipe:
    """A recipe from a YAML file, or a bundled one by name ('tiny', 'full')."""
    path = builtin_recipes().get(str(source), Path(source))
    return load_yaml_model(
        path, Recipe, "a recipe mapping with name and stages", check=_models_exist
    )


def _models_exist(recipe: Recipe) -> None:
    # The local backend loads from disk only (runs are offline): a typo should fail now, with
    # its line, not after an hour of earlier stages.
    specs = [("model", recipe.model)]
    for stage, key in (("label", "feedback"), ("eval", "judge")):
        section = getattr(recipe.stages, stage)
        if section is not None and getattr(section, key) not in ("base", "sl", "rl"):
            specs.append((("stages", stage, key), getattr(section, key)))
    for loc, spec in specs if recipe.backend.name == "local" else []:
        if spec != "embedded" and not Path(spec).expanduser().exists():
            where = loc if isinstance(loc, tuple) else (loc,)
            raise LocatedValueError(
                where,
                f"no such model {spec!r}: expected 'embedded', a .gguf file or an HF directory",
            )

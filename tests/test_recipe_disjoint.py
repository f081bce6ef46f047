"""A recipe whose training stages would see an evaluation prompt is refused before it runs."""

from __future__ import annotations

import pytest
import yaml

from constitutional.errors import UserError
from constitutional.recipe import builtin_recipes, load_recipe
from constitutional.recipe.disjoint import check_disjoint
from constitutional.recipe.schema import Recipe


def recipe(tmp_path, sl_prompts: str, red_team: str):
    text = f"""name: t
stages:
  sl_cai: {{prompts: "{sl_prompts}"}}
  eval: {{red_team: "{red_team}"}}
"""
    (tmp_path / "r.yaml").write_text(text)
    return load_recipe(tmp_path / "r.yaml")


def test_overlapping_sets_are_refused_with_both_names(tmp_path):
    # AdvBench and StrongREJECT share 25 prompts word for word (case and punctuation aside).
    with pytest.raises(
        UserError,
        match=r"sl_cai.prompts \(builtin:advbench\) and eval.red_team \(builtin:strongreject\) share 25",
    ):
        check_disjoint(recipe(tmp_path, "builtin:advbench", "builtin:strongreject"))


def test_a_training_file_that_copies_one_eval_prompt_is_refused(tmp_path):
    from constitutional.generate import load_prompts

    leaked = load_prompts("builtin:red_team_eval")[7]["prompt"].upper() + "!"
    (tmp_path / "train.jsonl").write_text(
        f'{{"prompt": "Hello there"}}\n{{"prompt": "{leaked}"}}\n'
    )
    with pytest.raises(UserError, match="share 1 prompt"):
        check_disjoint(recipe(tmp_path, str(tmp_path / "train.jsonl"), "builtin:red_team_eval"))


def test_the_bundled_split_and_recipes_pass(tmp_path):
    checked = check_disjoint(recipe(tmp_path, "builtin:red_team_train", "builtin:red_team_eval"))
    assert (
        checked["disjoint"]
        and checked["training_sets"]["sl_cai.prompts"] == "builtin:red_team_train"
    )
    for (
        path
    ) in builtin_recipes().values():  # full.yaml's model is not on disk here: skip that check
        check_disjoint(Recipe.model_validate(yaml.safe_load(path.read_text())))

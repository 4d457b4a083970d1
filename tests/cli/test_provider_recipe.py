"""`cscore provider publish-recipe`: a recipe is parsed strictly before any key is made or object uploaded."""

from __future__ import annotations

from pathlib import Path

from tests.cli.test_owner_input_errors import _cscore


def test_a_recipe_asking_for_per_row_evaluation_is_refused_before_any_key_or_upload(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"type": "cscore.recipe/v1", "algorithm": "tfidf-logreg", "seed": 0, '
                      '"features": {"token_pattern": "[a-zA-Z0-9_]{2,}", "max_features": 1000}, '
                      '"hyperparameters": {"C": 10, "max_iter": 100}, "evaluation": "per-row"}')
    result = _cscore("provider", "publish-recipe", str(recipe), "--name", "r", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "recipe.json" in result.stderr and "recipe.evaluation" in result.stderr and "unknown field" in result.stderr
    assert "Traceback" not in result.stderr


def test_owner_train_names_a_missing_label_folder_before_contacting_anything(tmp_path: Path) -> None:
    (tmp_path / "mail" / "spam").mkdir(parents=True)
    (tmp_path / "mail" / "spam" / "1.eml").write_text("Subject: win\n\nfree money\n")
    result = _cscore("owner", "train", str(tmp_path / "mail"), "--recipe", "r:1", "--model-name", "tuned",
                     "--tenant", "acme", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "expected folders 'spam/' and 'ham/', 'ham/' is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_recipe_file_that_is_not_json_says_what_it_should_hold(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.json"
    recipe.write_text("features: 1000\n")
    result = _cscore("provider", "publish-recipe", str(recipe), "--name", "r", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"cscore: error: {recipe}: expected a training recipe (cscore.recipe/v1) as JSON, got "
                             "'features: 1000' (Expecting value: line 1 column 1 (char 0)); see wire/recipe.py for "
                             "its fields\n")

"""Training-specific attacks (issue 16), each with what the attacker obtains and the refusal that stops it.

- The platform submits its own "labels" against a real owner's training job: its rows in place of the owner's,
  then also with the task's digest rewritten to them (it builds the task arguments). It obtains no model.
- A provider's recipe or a training whose evaluation would leak rows through the metrics: a held-out split of
  one row (recall is then that row's prediction), or metrics per row. The recipe cannot ask for either, the
  owner's SDK and the enclave refuse a small split, and a receipt or tuned card carrying row-level metrics, or
  metrics of a small split, is refused by the wire format the owner and the model list read.

In process (the enclave's training functions, a stand-in for the owner's broker): no stack needed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from cryptography.exceptions import InvalidTag

from enclave.pme import write_encrypted
from enclave.training import TrainingInputError, _metrics, train, train_job, tuned_card
from sdk.emails import Email
from sdk.owner_training import TrainingJobError, held_out, submit_training
from tests.enclave.test_pme import LocalWrapper
from tests.enclave.test_training import RECIPE, _mail, _owner_data, _published, _spec
from wire.errors import FormatError
from wire.recipe import Recipe
from wire.training import METRIC_COUNTS, METRIC_RATES, MIN_HOLDOUT_PER_CLASS, TunedCard, aggregate_metrics

# -- the platform's own labels against a real owner's job ------------------------------------------------


def test_the_platforms_own_labels_against_an_owners_job_obtain_no_model() -> None:
    card, dek, recipe_ct = _published()
    data, owner_broker = _owner_data()  # the owner's rows, under keys only its broker holds
    spec = _spec(data, card)  # what the DAG derives from the owner's signed training manifest
    texts, labels, holdout = _mail(200, seed=9)
    platform_keys = LocalWrapper()
    flipped = pa.table({"text": texts, "label": pa.array([1 - y for y in labels], pa.int8()), "holdout": holdout})
    # Well formed in every way, under the owner's key names, with the platform's own (flipped) labels.
    forged = write_encrypted(flipped, platform_keys, footer_key="owner.f", column_key="owner.c", row_group_size=100)
    forged_sha = hashlib.sha256(forged).hexdigest()

    # 1. In place of the owner's object: the digest of the owner's manifest refuses it, before any key.
    with pytest.raises(TrainingInputError) as err:
        train_job(spec, forged, owner_broker, card, dek, recipe_ct)
    assert str(err.value) == (f"input {spec.input_key}: expected sha256 {spec.input_sha256} (the owner's training "
                              f"manifest), got {forged_sha}")
    assert owner_broker.calls == [("wrap", "owner.f"), ("wrap", "owner.c")]  # the owner's own upload: no unwrap

    # 2. The task's digest rewritten to match: the owner's broker does not unwrap a key it never wrapped.
    with pytest.raises(InvalidTag):
        train_job(dataclasses.replace(spec, input_sha256=forged_sha), forged, owner_broker, card, dek, recipe_ct)
    assert owner_broker.calls[2:] == [("unwrap", "owner.f")]  # refused at the footer: not a row was read

    # What it would have obtained otherwise: a model of its labels in the owner's name. The honest job trains.
    honest = train_job(spec, data, owner_broker, card, dek, recipe_ct)
    assert honest.metrics.holdout_rows >= 2 * MIN_HOLDOUT_PER_CLASS


# -- evaluations that would leak rows through the metrics --------------------------------------------------


def test_metrics_of_a_one_row_held_out_split_would_tell_that_rows_prediction() -> None:
    """What a one-row split obtains, were it allowed: recall and F1 are that row's prediction, exactly."""
    for predicted in (0, 1):
        metrics = _metrics(np.array([1]), np.array([predicted]), train_rows=239)
        assert (metrics.recall, metrics.f1, metrics.holdout_rows) == (float(predicted), float(predicted), 1)


def test_a_held_out_split_below_the_minimum_is_refused_by_the_owners_sdk_before_any_upload() -> None:
    labelled = [(Email(f"spam/{i}", f"win cash {i}"), 1) for i in range(40)]
    labelled += [(Email(f"ham/{i}", f"meeting notes {i}"), 0) for i in range(400)]
    spam_held = sum(held_out([e.message_id for e, _ in labelled], 0.3, 0)[:40])
    assert spam_held < MIN_HOLDOUT_PER_CLASS

    class Untouched:  # an owner and a store that fail the test if anything is created or uploaded
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"{name} used before the split was checked")

    card, _, _ = _published()
    with pytest.raises(TrainingJobError) as err:
        submit_training(labelled, card, tenant="acme", owner=Untouched(), store=Untouched(),  # type: ignore[arg-type]
                        measurements=[], config_digests=[], model_name="spam-filter-tuned")
    assert str(err.value).startswith(f"holdout: expected at least {MIN_HOLDOUT_PER_CLASS} spam emails held out, "
                                     f"got {spam_held} (fraction 0.3, seed 0)")


def test_the_enclave_refuses_a_split_below_the_minimum_whatever_the_task_says() -> None:
    texts, labels, holdout = _mail(240)
    one = [i == 1 for i in range(len(texts))]  # a single (spam) row held out
    with pytest.raises(TrainingInputError) as err:
        train(RECIPE, texts, labels, one)
    assert str(err.value).startswith(f"holdout: expected at least {MIN_HOLDOUT_PER_CLASS} ham rows held out, got 0")


def test_a_recipe_cannot_ask_for_an_evaluation_of_its_own() -> None:
    doc = RECIPE.to_json()
    for field, value in (("evaluation", {"holdout_rows": 1}), ("metrics", ["per_row_predictions"])):
        with pytest.raises(FormatError) as err:
            Recipe.parse({**doc, field: value})
        assert (err.value.field, err.value.actual, err.value.hint) == (f"recipe.{field}", field, "unknown field")


@functools.cache
def _honest_card() -> dict[str, Any]:
    """A tuned card as the enclave signs it after an honest training."""
    card, _, _ = _published()
    data, _ = _owner_data()
    texts, labels, holdout = _mail(240)
    return tuned_card(_spec(data, card), train(RECIPE, texts, labels, holdout), card, evidence_sha256="0" * 64)


def _card_metrics(**change: Any) -> dict[str, Any]:
    doc = _honest_card()
    return {**doc, "metrics": {**doc["metrics"], **change}}


def test_only_aggregate_metrics_of_a_large_enough_split_pass_the_wire_format() -> None:
    honest = _card_metrics()
    assert set(TunedCard.parse(honest).metrics) == {*METRIC_RATES, *METRIC_COUNTS}
    held = honest["metrics"]["holdout_rows"]
    cases: list[tuple[dict[str, Any], str, Any, Any]] = [  # (change, field, expected, actual)
        ({"predictions": [1, 0, 1]}, "tuned_card.metrics.predictions",
         f"one of {sorted({*METRIC_RATES, *METRIC_COUNTS})}", "predictions"),
        ({"holdout_spam": 1}, "tuned_card.metrics.holdout_spam", f"at least {MIN_HOLDOUT_PER_CLASS} held-out spam rows",
         1),
        ({"holdout_spam": held - 1}, "tuned_card.metrics.holdout_rows",
         f"at least {MIN_HOLDOUT_PER_CLASS} held-out ham rows", 1),
        ({"recall": [1.0, 0.0]}, "tuned_card.metrics.recall", "int or float", "list"),
        ({"f1": 1.5}, "tuned_card.metrics.f1", "a rate in 0..1", 1.5),
        ({"train_rows": 0.5}, "tuned_card.metrics.train_rows", "int", "float"),
    ]
    for change, field, expected, actual in cases:
        with pytest.raises(FormatError) as err:
            TunedCard.parse(_card_metrics(**change))
        assert (err.value.field, err.value.expected, err.value.actual) == (field, expected, actual), change
    with pytest.raises(FormatError) as err:
        TunedCard.parse({**honest, "metrics": [0.9, 0.8]})
    assert (err.value.field, err.value.actual) == ("tuned_card.metrics", "list")


def test_the_enclaves_own_metrics_are_exactly_the_aggregates() -> None:
    metrics = _honest_card()["metrics"]
    assert aggregate_metrics(metrics, where="metrics") == metrics
    assert list(metrics) == [*METRIC_RATES, *METRIC_COUNTS]

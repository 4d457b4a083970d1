"""A tuned card that does not verify is not listed, but the owner is told which and why: a model trained on the
local stack (simulated TEE) without --accept-simulated used to vanish ("your tuned models (none)")."""

from __future__ import annotations

import pytest

from sdk.owner_training import find_tuned_model, tuned_models


class _Bucket:
    """The platform's bucket as the owner reads it: whatever it holds, by key."""

    bucket = "platform"

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def get_if_exists(self, key: str) -> bytes | None:
        return self.objects.get(key)


REASON = ("tuned/acme/m/1/card.jws: expected a compact JWS, got DecodeError: decode_error: Invalid JSON Web "
          "Signature")


def test_a_card_that_does_not_verify_is_named_with_its_reason() -> None:
    bucket = _Bucket({"tuned/acme/m/1/card.jws": b"not a jws", "tuned/acme/m/1/model.onnx.enc": b"x"})
    skipped: list[str] = []
    assert tuned_models(bucket, "acme", owner=None, skipped=skipped) == []  # type: ignore[arg-type]
    assert skipped == [REASON]


def test_choosing_a_tuned_model_that_did_not_verify_says_why() -> None:
    bucket = _Bucket({"tuned/acme/m/1/card.jws": b"not a jws"})
    with pytest.raises(LookupError) as refused:
        find_tuned_model(bucket, "acme/m:1", owner=None)  # type: ignore[arg-type]
    assert str(refused.value) == ("model: expected one of your tuned models (none), got 'acme/m:1'; 1 tuned card(s) "
                                  f"did not verify, the first: {REASON}")

"""The marketplace an owner chooses from: cards of several providers, filtered by task, each marked trusted
or not by the owner's pinned keys, with the metrics and terms the provider claims."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from joserfc import jws
from joserfc.jwk import OKPKey
from moto import mock_aws

from cscore.cli import _listing_lines
from enclave.signing import ALGORITHM, canonical_json, sign_json, unverified_payload
from sdk.contracts import DIGITS_CONTRACT, DIGITS_TASK, SPAM_CONTRACT, SPAM_TASK
from sdk.models import find_model, list_models
from sdk.storage import ObjectStore
from wire.card import CARD_TYPE


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="market")
        yield ObjectStore("market")


def _publish(store: ObjectStore, key: OKPKey, name: str, task: str, contract: dict[str, Any], **extra: Any) -> None:
    card = {"type": CARD_TYPE, "name": name, "version": 1, "digest": "sha256:" + "ab" * 32, "size": 10,
            "task": task, "contract": copy.deepcopy(contract), "object_key": f"models/{name}/1/model.onnx.enc",
            "protection": "aes-256-gcm", "broker": extra.pop("broker", "provider"), "key_id": f"model.{name}",
            "wrapped_dek": "AAAA", "published_at": 1, **extra}
    store.put(f"models/{name}/1/card.jws", sign_json(card, key).encode())


def test_models_filter_by_task_and_say_who_is_trusted(store: ObjectStore) -> None:
    acme_ml = OKPKey.generate_key("Ed25519", private=True)
    stranger = OKPKey.generate_key("Ed25519", private=True)
    _publish(store, acme_ml, "spam-filter", SPAM_TASK, SPAM_CONTRACT, metrics={"f1": 0.985},
             quota={"rows": 100000, "period_s": 86400}, output={"probability_digits": 2})
    _publish(store, acme_ml, "digits", DIGITS_TASK, DIGITS_CONTRACT, metrics={"accuracy": 0.97},
             price={"currency": "EUR", "per_1000_rows": 0.2})
    _publish(store, stranger, "cheap-digits", DIGITS_TASK, DIGITS_CONTRACT, broker="other-provider",
             price={"currency": "USD", "per_1000_rows": 0.01})
    store.put("models/old/1/card.jws", sign_json({"type": "cscore.model-card/v1", "name": "old", "version": 1,
                                                  "digest": "sha256:" + "cd" * 32}, acme_ml).encode())
    trusted = [acme_ml.as_dict(private=False)]

    images = list_models(store, trusted, task=DIGITS_TASK)
    assert [(m.name, m.trusted) for m in images] == [("cheap-digits", False), ("digits", True)]
    assert [m.name for m in list_models(store, trusted)] == ["cheap-digits", "digits", "old", "spam-filter"]

    digits = images[1].summary()
    assert digits["inputs"] == ["image (image)"] and digits["outputs"] == ["class", "probabilities"]
    assert digits["metrics"] == {"accuracy": 0.97} and digits["classes"] == [str(d) for d in range(10)]
    shown = _listing_lines(digits)
    assert "digits:1  [image-classification]  signed by a provider you trust" in shown
    assert "claims accuracy 0.97" in shown and "0.2 EUR per 1000 rows; no quota; full probabilities" in shown
    cheap = _listing_lines(images[0].summary())
    assert "UNTRUSTED signer" in cheap and "cscore owner trust-provider" in cheap
    spam = _listing_lines(list_models(store, trusted, task=SPAM_TASK)[0].summary())
    assert "inputs text (email-text)  ->  results spam_probability, label" in spam
    assert "no price; quota 100000 rows per 86400 s; probabilities to 2 digits" in spam

    with pytest.raises(LookupError, match="signed by .*pin the provider's key"):
        find_model(store, "cheap-digits", trusted)
    with pytest.raises(LookupError, match=r"model old:1: its card cannot be used \(card.type: expected "
                                          r"cscore.model-card/v2"):
        find_model(store, "old", trusted)
    assert find_model(store, "digits", trusted).card is not None


def test_a_card_naming_a_trusted_providers_key_but_signed_by_another_is_refused(store: ObjectStore) -> None:
    """The card's JWS header names the pinned provider key (its `kid`), the signature is another key's."""
    acme_ml, stranger = (OKPKey.generate_key("Ed25519", private=True) for _ in range(2))
    _publish(store, stranger, "spam-filter", SPAM_TASK, SPAM_CONTRACT)
    card = unverified_payload(store.get("models/spam-filter/1/card.jws").decode(), what="card")
    forged = jws.serialize_compact({"alg": ALGORITHM, "kid": acme_ml.thumbprint()}, canonical_json(card), stranger,
                                   algorithms=[ALGORITHM])
    store.put("models/spam-filter/1/card.jws", forged.encode())
    trusted = [acme_ml.as_dict(private=False)]
    [listing] = list_models(store, trusted)
    assert (listing.signer, listing.trusted) == (acme_ml.thumbprint(), False)
    with pytest.raises(LookupError) as refused:
        find_model(store, "spam-filter", trusted)
    assert str(refused.value) == (
        f"model spam-filter:1: expected a card signed by your pinned provider key {acme_ml.thumbprint()}, which it "
        "names, got a signature that key does not verify: the card was forged or altered; do not use it")

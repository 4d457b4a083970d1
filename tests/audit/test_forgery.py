"""Audit log forgeries: a fork at the same size (two trees, both checkpoints signed), a witness that pinned
another key, a signed history the latest head does not extend, a truncated log, and Merkle proofs that skip
a step (a hash dropped, two merged, one added). Directory logs only: no S3, no brokers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.log import VKEY, AuditLog, LogError, Witness, load_or_create_key
from audit.merkle import MerkleTree, ProofError, leaf_hash, node_hash, verify_consistency, verify_inclusion
from audit.verify import ERROR, check_integrity
from tests.attestation._forge import MEASUREMENT


def _log(folder: Path, entries: list[str], key: Path | None = None, sign: bool = True) -> AuditLog:
    log = AuditLog.open_dir(folder, key_path=key or folder / "log-key.pem")
    for name in entries:
        log.append("grant", name, {"batch_id": name})
    if sign:
        log.publish_checkpoint()
    return log


def _errors(log: AuditLog, *witnesses: Witness) -> list[str]:
    return [f.message for f in check_integrity(log, witnesses) if f.severity == ERROR]


@pytest.fixture
def key(tmp_path: Path) -> Path:
    load_or_create_key(tmp_path / "log-key.pem")
    return tmp_path / "log-key.pem"


# -- a fork at the same size ------------------------------------------------------------------------

def test_fork_at_the_same_size_is_caught_by_the_witness(tmp_path: Path, key: Path) -> None:
    seen = _log(tmp_path / "a", ["g1", "g2", "g3"], key)
    fork = _log(tmp_path / "b", ["g1", "g2-other", "g3"], key)  # same key, same size, another tree
    assert seen.latest_checkpoint().size == fork.latest_checkpoint().size == 3
    assert seen.latest_checkpoint().root != fork.latest_checkpoint().root
    assert _errors(fork) == []  # on its own, each fork is a well-formed signed log
    owner = Witness(tmp_path / "owner", "owner")
    owner.observe(seen)
    with pytest.raises(LogError, match=r"rewritten or forked \(consistency proof: two roots for size 3"):
        owner.check(fork)
    errors = _errors(fork, owner)
    assert len(errors) == 1 and "the owner saw" in errors[0] and "two roots for size 3" in errors[0]


def test_two_witnesses_shown_two_forks_of_the_same_size(tmp_path: Path, key: Path) -> None:
    log_a = _log(tmp_path / "a", ["g1", "g2"], key)
    log_b = _log(tmp_path / "b", ["g1", "g2-other"], key)
    owner, provider = Witness(tmp_path / "owner", "owner"), Witness(tmp_path / "provider", "provider")
    owner.observe(log_a)
    provider.observe(log_b)
    assert [e for e in _errors(log_a, owner, provider) if "the provider saw" in e]
    assert [e for e in _errors(log_b, owner, provider) if "the owner saw" in e]


def test_same_size_same_tree_is_no_fork(tmp_path: Path, key: Path) -> None:
    log = _log(tmp_path / "a", ["g1", "g2"], key)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "a", copy)
    owner = Witness(tmp_path / "owner", "owner")
    owner.observe(log)
    assert owner.check(AuditLog.open_dir(copy, key_path=key)).root == log.latest_checkpoint().root


# -- keys: a witness pins the key it first saw ------------------------------------------------------

def test_log_presenting_another_key_than_the_witness_pinned(tmp_path: Path, key: Path) -> None:
    log = _log(tmp_path / "log", ["g1", "g2"], key)
    owner = Witness(tmp_path / "owner", "owner")
    owner.observe(log)
    pinned = log.vkey()
    # The operator re-keys: the same entries, a new key stored beside the log, the head signed by it.
    (tmp_path / "log" / VKEY).unlink()
    rekeyed = AuditLog.open_dir(tmp_path / "log", key_path=tmp_path / "new-key.pem")
    rekeyed.publish_checkpoint()
    assert rekeyed.vkey() not in (None, pinned)
    with pytest.raises(LogError) as err:
        owner.check(rekeyed)
    assert str(err.value) == (f"owner's witness: the log now presents key {rekeyed.vkey()}, but the owner pinned "
                              f"{pinned}: the log's key was replaced")
    errors = _errors(rekeyed, owner)  # the audit checks the head with the pinned key, not the one presented
    assert len(errors) == 1 and "cannot be trusted" in errors[0] and "expected a signature by log key" in errors[0]


def test_checkpoint_signed_by_another_key_than_the_pinned_one(tmp_path: Path, key: Path) -> None:
    log = _log(tmp_path / "log", ["g1"], key)
    owner = Witness(tmp_path / "owner", "owner")
    owner.observe(log)
    # The stored key is left as it was; only the head is re-signed by someone else's key.
    other = AuditLog(log.storage, signer=Ed25519PrivateKey.generate(), origin=log.origin)
    other.publish_checkpoint()
    with pytest.raises(LogError, match="expected a signature by log key"):
        owner.check(AuditLog.open_dir(tmp_path / "log", key_path=key))


def test_witnesses_that_pinned_different_keys(tmp_path: Path, key: Path) -> None:
    log_a = _log(tmp_path / "a", ["g1"], key)
    log_b = _log(tmp_path / "b", ["g1"], tmp_path / "other-key.pem")  # a second log key, same origin name
    owner, provider = Witness(tmp_path / "owner", "owner"), Witness(tmp_path / "provider", "provider")
    owner.observe(log_a)
    provider.observe(log_b)
    findings = check_integrity(log_a, [owner, provider])
    assert findings[0].severity == ERROR and findings[0].check == "witness"
    assert "pinned different log keys" in findings[0].message and "shown two different logs" in findings[0].message


# -- history and head ------------------------------------------------------------------------------

def test_signed_history_that_the_latest_head_does_not_extend(tmp_path: Path, key: Path) -> None:
    """Both heads are signed by the log key; the later one is over a rewritten prefix."""
    folder = tmp_path / "log"
    _log(folder, ["g1", "g2"], key)
    old_history = {p.name: p.read_bytes() for p in (folder / "checkpoints").iterdir()}
    shutil.rmtree(folder)
    rewritten = _log(folder, ["g1", "g2-other", "g3"], key)
    for name, data in old_history.items():
        (folder / "checkpoints" / name).write_bytes(data)  # the published size-2 head stays in the history
    errors = _errors(AuditLog.open_dir(folder, key_path=key))
    assert len(errors) == 1 and "size 2" in errors[0] and "not consistent with the latest" in errors[0]
    assert rewritten.latest_checkpoint().size == 3


def test_log_shorter_than_its_signed_head(tmp_path: Path, key: Path) -> None:
    folder = tmp_path / "log"
    _log(folder, ["g1", "g2", "g3"], key)
    entries = folder / "entries.jsonl"
    entries.write_bytes(b"".join(entries.read_bytes().splitlines(keepends=True)[:2]))
    errors = _errors(AuditLog.open_dir(folder, key_path=key))
    assert any("covers 3 entries but the log holds only 2" in e for e in errors), errors


# -- Merkle proofs that skip a step ------------------------------------------------------------------

SIZES = range(1, 18)
TREE = MerkleTree([f"leaf-{i}".encode() for i in range(max(SIZES))])


def _variants(proof: list[bytes]) -> list[tuple[str, list[bytes]]]:
    """The proof with one hash dropped, two neighbours merged into one (a step skipped), one appended."""
    out = [(f"drop {i}", proof[:i] + proof[i + 1:]) for i in range(len(proof))]
    out += [(f"merge {i}", [*proof[:i], node_hash(proof[i], proof[i + 1]), *proof[i + 2:]])
            for i in range(len(proof) - 1)]
    out += [(f"merge {i} reversed", [*proof[:i], node_hash(proof[i + 1], proof[i]), *proof[i + 2:]])
            for i in range(len(proof) - 1)]
    return [*out, ("extra", [*proof, TREE.root(1)])]


@pytest.mark.parametrize("size2", SIZES)
def test_consistency_proofs_that_skip_a_step_are_refused(size2: int) -> None:
    for size1 in range(1, size2):
        proof = TREE.consistency_proof(size1, size2)
        verify_consistency(size1, size2, proof, TREE.root(size1), TREE.root(size2))
        for what, bad in _variants(proof):
            with pytest.raises(ProofError):
                verify_consistency(size1, size2, bad, TREE.root(size1), TREE.root(size2))
                pytest.fail(f"{size1} -> {size2}: {what} verified")


@pytest.mark.parametrize("size", SIZES)
def test_inclusion_proofs_that_skip_a_step_are_refused(size: int) -> None:
    for index in range(size):
        proof, leaf = TREE.inclusion_proof(index, size), TREE.leaf_hash_at(index)
        verify_inclusion(index, size, leaf, proof, TREE.root(size))
        for what, bad in _variants(proof):
            with pytest.raises(ProofError):
                verify_inclusion(index, size, leaf, bad, TREE.root(size))
                pytest.fail(f"leaf {index} of {size}: {what} verified")


def test_consistency_proof_for_another_old_size_is_refused() -> None:
    for size1, size2 in ((3, 7), (4, 9), (5, 16), (6, 13)):
        for other in range(1, size2):
            if other != size1:
                proof = TREE.consistency_proof(other, size2)
                with pytest.raises(ProofError):
                    verify_consistency(size1, size2, proof, TREE.root(size1), TREE.root(size2))


def test_inclusion_of_an_interior_node_as_a_leaf_is_refused() -> None:
    # The node over leaves 0..1 offered as "leaf 0" of a tree of size 4 with the rest of the path.
    pair = node_hash(TREE.leaf_hash_at(0), TREE.leaf_hash_at(1))
    with pytest.raises(ProofError):
        verify_inclusion(0, 4, pair, TREE.inclusion_proof(0, 4)[1:], TREE.root(4))
    assert leaf_hash(b"leaf-0") == TREE.leaf_hash_at(0)


# -- every Merkle refusal says what did not hold ------------------------------------------------------

def _says(call: object) -> str:
    with pytest.raises(ProofError) as err:
        call()  # type: ignore[operator]
    return str(err.value)


def test_merkle_refusals_name_what_did_not_hold() -> None:
    r, leaf0, leaf1, path0 = TREE.root, TREE.leaf_hash_at(0), TREE.leaf_hash_at(1), TREE.inclusion_proof(0, 4)
    p37 = TREE.consistency_proof(3, 7)
    cases = [
        (lambda: TREE.inclusion_proof(4, 4), "inclusion proof: index expected in [0, 4), got 4"),
        (lambda: TREE.root(18), "tree size expected in [0, 17], got 18"),
        (lambda: TREE.consistency_proof(5, 4), "consistency proof: old size expected in [0, 4], got 5"),
        (lambda: verify_inclusion(4, 4, leaf0, path0, r(4)), "inclusion proof: index expected in [0, 4), got 4"),
        (lambda: verify_inclusion(0, 4, leaf0[:31], path0, r(4)),
         "inclusion proof: expected 32-byte hashes, got one of 31 bytes"),
        (lambda: verify_inclusion(0, 4, leaf0, [*path0, r(1)], r(4)),
         "inclusion proof: expected at most 2 hashes, got 3"),
        (lambda: verify_inclusion(0, 4, leaf0, path0[:-1], r(4)),
         "inclusion proof: too short (1 hashes) for index 0 of size 4"),
        (lambda: verify_inclusion(0, 4, leaf1, path0, r(4)),
         f"inclusion proof: leaf 0 of size 4 leads to root {node_hash(node_hash(leaf1, leaf1), path0[1]).hex()}, "
         f"expected {r(4).hex()}"),
        (lambda: verify_consistency(3, 3, [r(1)], r(3), r(3)),
         "consistency proof: expected no hashes from size 3 to 3, got 1"),
        (lambda: verify_consistency(3, 7, [*p37, r(1)], r(3), r(7)),
         "consistency proof from 3 to 7: too many hashes (5)"),
        (lambda: verify_consistency(3, 7, p37[:-1], r(3), r(7)), "consistency proof from 3 to 7: too few hashes (3)"),
        (lambda: verify_consistency(3, 7, p37, r(3)[:31], r(7)),
         "consistency proof: expected 32-byte hashes, got one of 31 bytes"),
    ]
    for call, message in cases:
        assert _says(call) == message
    first = _says(lambda: verify_consistency(3, 7, p37, r(2), r(7)))
    assert first.startswith("consistency proof: the first 3 leaves hash to ") and first.endswith(r(2).hex())
    second = _says(lambda: verify_consistency(3, 7, p37, r(3), r(6)))
    assert second.startswith("consistency proof: the 7 leaves hash to ") and second.endswith(r(6).hex())


def test_merkle_tree_bookkeeping() -> None:
    tree = MerkleTree()
    assert [tree.append(b"a"), tree.append(b"b")] == [0, 1]
    assert tree.consistency_proof(0, 2) == [] and tree.consistency_proof(2, 2) == []
    hashed = MerkleTree.from_leaf_hashes([TREE.leaf_hash_at(i) for i in range(5)])
    assert hashed.size == 5 and hashed.root() == TREE.root(5)


# -- receipts: the signing key must be the one bound into the evidence ---------------------------------

@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from attestation.simulated import create_simulated_firmware

    folder = tmp_path_factory.mktemp("sim-tee")
    create_simulated_firmware(folder)
    return folder


def _receipt_case(sim: Path, signer: Any, bound: Any, sent: Any) -> tuple[str, dict[str, Any]]:
    """A receipt signed by ``signer`` beside evidence binding ``bound``'s public key, sent as ``sent``'s."""
    import hashlib

    from enclave.receipts import RECEIPT_TYPE, evidence_document
    from enclave.signing import canonical_json, sign_json
    from enclave.tee import SimulatedSnpProvider

    runtime = {"nonce": "n-1", "tee_pubkey": {"kty": "EC"}, "receipt_pubkey": bound.as_dict(private=False)}
    evidence = SimulatedSnpProvider(sim, MEASUREMENT).get_evidence(hashlib.sha512(canonical_json(runtime)).digest())
    doc = evidence_document(evidence, {**runtime, "receipt_pubkey": sent.as_dict(private=False)})
    digest = hashlib.sha256(canonical_json(doc)).hexdigest()
    return sign_json({"type": RECEIPT_TYPE, "evidence_sha256": digest, "output": {"rows": 1}, "sessions": []},
                     signer), doc


def _check_receipt(sim: Path, token: str, doc: dict[str, Any]) -> Any:
    from attestation import Policy, TrustAnchors
    from enclave.receipts import verify_receipt

    policy = Policy.from_dict({"allowed_roots": ["simulated"], "allowed_measurements": [MEASUREMENT.hex()]})
    return verify_receipt(token, doc, anchors=TrustAnchors.from_dir(sim), policy=policy)


def test_receipt_by_the_bound_key_verifies(sim: Path) -> None:
    from enclave.signing import generate_signing_key

    key = generate_signing_key()
    assert _check_receipt(sim, *_receipt_case(sim, key, key, key)).payload["output"] == {"rows": 1}


def test_receipt_by_a_key_not_bound_into_the_evidence(sim: Path) -> None:
    from attestation.errors import AppraisalError
    from enclave.signing import generate_signing_key

    enclave_key, forger = generate_signing_key(), generate_signing_key()
    token, doc = _receipt_case(sim, forger, enclave_key, forger)  # the forger's key written into runtime_data
    with pytest.raises(AppraisalError) as err:
        _check_receipt(sim, token, doc)
    assert err.value.field == "report_data" and "not bound" in str(err.value)


def test_receipt_by_another_key_than_the_one_beside_it(sim: Path) -> None:
    from enclave.signing import SignatureError, generate_signing_key

    enclave_key, forger = generate_signing_key(), generate_signing_key()
    with pytest.raises(SignatureError):
        _check_receipt(sim, *_receipt_case(sim, forger, enclave_key, enclave_key))

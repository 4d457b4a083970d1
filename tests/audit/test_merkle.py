"""The Merkle tree against the RFC 6962 test vectors of transparency-dev/merkle, plus property tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

# Test vectors from github.com/transparency-dev/merkle proof/verify_test.go (Apache-2.0), the same
# eight leaves and roots as Certificate Transparency's C++ and Go reference implementations.
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                     "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


# (leaf index (0-based), tree size, proof)
INCLUSION = [
    (0, 8, _h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (5, 8, _h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (1, 5, _h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, _h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (6, 8, _h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 5, _h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (6, 7, _h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
]


def test_roots_match_the_reference_vectors() -> None:
    tree = MerkleTree(LEAVES)
    assert tree.root(0) == EMPTY_ROOT
    assert [tree.root(n) for n in range(1, 9)] == ROOTS


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_and_verify(index: int, size: int, proof: list[bytes]) -> None:
    tree = MerkleTree(LEAVES)
    assert tree.inclusion_proof(index, size) == proof
    verify_inclusion(index, size, leaf_hash(LEAVES[index]), proof, ROOTS[size - 1])
    with pytest.raises(ProofError):
        verify_inclusion(index + 1, size, leaf_hash(LEAVES[index]), proof, ROOTS[size - 1])
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf_hash(b"WrongLeaf"), proof, ROOTS[size - 1])
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf_hash(LEAVES[index]), proof[:-1], ROOTS[size - 1])
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf_hash(LEAVES[index]), [*proof, ROOTS[size - 1]], ROOTS[size - 1])


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_proofs_match_and_verify(size1: int, size2: int, proof: list[bytes]) -> None:
    tree = MerkleTree(LEAVES)
    assert tree.consistency_proof(size1, size2) == proof
    verify_consistency(size1, size2, proof, ROOTS[size1 - 1], ROOTS[size2 - 1])
    if proof:
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof, ROOTS[size2 - 1], ROOTS[size1 - 1])
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof[:-1], ROOTS[size1 - 1], ROOTS[size2 - 1])
        with pytest.raises(ProofError):
            verify_consistency(size1 + 1, size2, proof, ROOTS[size1 - 1], ROOTS[size2 - 1])


def test_consistency_edge_cases() -> None:
    verify_consistency(0, 5, [], EMPTY_ROOT, ROOTS[4])
    with pytest.raises(ProofError, match="never shrinks"):
        verify_consistency(3, 2, [], ROOTS[2], ROOTS[1])
    with pytest.raises(ProofError, match="two roots"):
        verify_consistency(3, 3, [], ROOTS[2], ROOTS[1])
    with pytest.raises(ProofError, match="got none"):
        verify_consistency(2, 3, [], ROOTS[1], ROOTS[2])


leaves_st = st.lists(st.binary(max_size=16), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None)
@given(leaves=leaves_st, data=st.data())
def test_every_inclusion_proof_verifies_and_a_flipped_bit_does_not(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    size = data.draw(st.integers(1, len(leaves)))
    index = data.draw(st.integers(0, size - 1))
    proof = tree.inclusion_proof(index, size)
    verify_inclusion(index, size, leaf_hash(leaves[index]), proof, tree.root(size))
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof]
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf_hash(leaves[index]), bad, tree.root(size))
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf_hash(leaves[index] + b"x"), proof, tree.root(size))


@settings(max_examples=150, deadline=None)
@given(leaves=leaves_st, data=st.data())
def test_every_consistency_proof_verifies_and_a_rewrite_does_not(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    size2 = data.draw(st.integers(1, len(leaves)))
    size1 = data.draw(st.integers(1, size2))
    proof = tree.consistency_proof(size1, size2)
    verify_consistency(size1, size2, proof, tree.root(size1), tree.root(size2))
    # A log that changed one of the first size1 leaves is not consistent with the old head.
    j = data.draw(st.integers(0, size1 - 1))
    forked = MerkleTree([*leaves[:j], leaves[j] + b"!", *leaves[j + 1:size2]])
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, forked.consistency_proof(size1, size2), tree.root(size1), forked.root())
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof]
        bad[i] = bytes([bad[i][0] ^ 0x10]) + bad[i][1:]
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, bad, tree.root(size1), tree.root(size2))

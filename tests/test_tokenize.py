"""The BM25 tokenizer: analysis chain, settings validation and round trip, corpus tokenization."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from pydantic import ValidationError

from stagegraph.indexes.tokenize import ENGLISH_STOPWORDS, TokenizedCorpus, Tokenizer


def test_lowercases_and_splits_unicode_words():
    tok = Tokenizer(stopwords=None, stemmer=None)
    assert tok("Über NAÏVE café-au-lait, 3.5mg") == ["über", "naïve", "café", "au", "lait", "5mg"]


def test_pattern_keeps_two_character_tokens_only_by_default():
    tok = Tokenizer(stopwords=None, stemmer=None)
    assert tok("a b cd 7 42") == ["cd", "42"]
    assert Tokenizer(stopwords=None, stemmer=None, pattern=r"(?u)\b\w+\b")("a b cd") == ["a", "b", "cd"]


def test_lowercase_can_be_switched_off():
    assert Tokenizer(lowercase=False, stopwords=None, stemmer=None)("Foo bar") == ["Foo", "bar"]


def test_english_stopwords_are_on_by_default_and_matched_after_lowercasing():
    tok = Tokenizer(stemmer=None)
    assert tok("THE effect OF aspirin on the heart") == ["effect", "aspirin", "heart"]
    assert len(ENGLISH_STOPWORDS) == 33 and "the" in ENGLISH_STOPWORDS


@pytest.mark.parametrize("off", [None, "none"])
def test_stopwords_can_be_switched_off(off):
    assert Tokenizer(stopwords=off, stemmer=None)("the cat") == ["the", "cat"]


def test_custom_stopword_list():
    tok = Tokenizer(stopwords=["Cat", "dog"], stemmer=None)
    assert tok("the cat and the DOG bark") == ["the", "and", "the", "bark"]


def test_snowball_stemming_is_on_by_default_and_optional():
    assert Tokenizer()("running patients responses") == ["run", "patient", "respons"]
    assert Tokenizer(stemmer=None)("running patients") == ["running", "patients"]
    # Porter and Snowball English differ on some words ("generously": Porter "gener", Snowball "generous").
    assert Tokenizer(stemmer="porter")("generously") != Tokenizer(stemmer="english")("generously")


def test_stopwords_are_removed_before_stemming():
    # "thing" is not a stopword; "this" is, and must not survive as a stem such as "thi".
    assert Tokenizer()("this thing") == ["thing"]


def test_empty_and_stopword_only_texts_give_no_terms():
    tok = Tokenizer()
    assert tok("") == []
    assert tok("the of and, ...!") == []


@pytest.mark.parametrize(
    "bad",
    [{"stopwords": "klingon"}, {"pattern": "(unclosed"}, {"stemmer": "latin"}, {"unknown_field": 1}],
)
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValidationError):
        Tokenizer(**bad)


def test_settings_round_trip_through_json_and_give_the_same_analysis():
    tok = Tokenizer(stopwords=["foo", "bar"], stemmer="porter", lowercase=False)
    again = Tokenizer.model_validate_json(tok.model_dump_json())
    assert again == tok and hash(again) == hash(tok)
    text = "Foo running bar Generously"
    assert again(text) == tok(text)
    assert Tokenizer(stemmer=None) != Tokenizer()


def test_tokenize_corpus_matches_per_document_analysis():
    tok = Tokenizer()
    texts = ["The cats are running", "", "a cat runs; cats RUN", "Dogs"]
    corpus = tok.tokenize_corpus(texts)
    assert corpus.n_docs == 4
    assert corpus.term_ids.dtype == np.int32 and corpus.offsets.dtype == np.int64
    for row, text in enumerate(texts):
        assert corpus.doc_tokens(row) == tok(text)
    assert list(corpus.doc_lengths) == [len(tok(t)) for t in texts]
    assert len(set(corpus.vocab)) == len(corpus.vocab) == 3  # cat, run, dog


def test_tokenized_corpus_rejects_inconsistent_arrays():
    with pytest.raises(ValueError, match="offsets end"):
        TokenizedCorpus(np.array([0, 1], dtype=np.int32), np.array([0, 3]), ["a", "b"])
    with pytest.raises(ValueError, match="vocabulary"):
        TokenizedCorpus(np.array([0, 5], dtype=np.int32), np.array([0, 2]), ["a", "b"])


def test_analysis_is_thread_safe():
    tok = Tokenizer()
    texts = [f"running jumping generously patients {i}" for i in range(200)]
    expected = [tok(t) for t in texts]
    results: list[list[list[str]]] = [[] for _ in range(4)]

    def work(slot: int) -> None:
        results[slot] = [tok(t) for t in texts]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results)

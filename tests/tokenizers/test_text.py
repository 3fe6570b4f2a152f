import pytest

from fusion.data.synthetic import SyntheticWorld
from fusion.tokenizers.text import TextTokenizer


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(SyntheticWorld(seed=1).texts(1500), vocab_size=400)


def test_round_trip_is_exact_for_any_string(tok):
    samples = ["a large red circle.", "  two  spaces\tand\nnewlines ", "unicode: é漢字🙂", "", "<boi><eos>"]
    for s in samples:
        assert tok.decode(tok.encode(s)) == s
    assert tok.decode_batch(tok.encode_batch(samples)) == samples


def test_learns_the_corpus_words(tok):
    # BPE merges whole frequent words of the synthetic world into single pieces
    assert len(tok.encode(" circle")) == 1
    assert tok.piece(tok.encode(" circle")[0]) == "\u2581circle"
    assert tok.vocab_size <= 400


def test_special_token_spelling_is_plain_text(tok):
    ids = tok.encode("<boi>")
    assert len(ids) > 1  # spelled out, not a single control piece
    assert tok.decode(ids) == "<boi>"
    assert tok.piece(ids[0]) == "<0x3C>"  # '<' is unseen in the corpus: a byte-fallback piece


def test_save_load_round_trip(tok, tmp_path):
    assert tok.save_pretrained(tmp_path) == tmp_path / "text.model"
    again = TextTokenizer.from_pretrained(tmp_path)
    s = "Once there was a small blue cross."
    assert again.encode(s) == tok.encode(s) and again.vocab_size == tok.vocab_size


def test_bad_inputs(tok):
    with pytest.raises(ValueError, match="empty corpus"):
        TextTokenizer.train(["", ""], vocab_size=300)
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])

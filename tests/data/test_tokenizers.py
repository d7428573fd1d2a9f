"""Tokenizers: round trips, special tokens, unknown words, saving and loading, GPT-2's known ids."""

import numpy as np
import pytest

from attnlab.data.tokenizers import (
    SPECIALS,
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    HubTokenizer,
    Tokenizer,
    WordTokenizer,
)
from attnlab.errors import ConfigError, DataError

CORPUS = [
    "The movie was great, truly great!",
    "A boring film; the plot was dull.",
    "Great acting and a great story.",
    "The worst movie I have seen.",
] * 5


def test_word_tokenizer_round_trip_specials_and_unknown_words():
    tok = WordTokenizer(max_vocab=100, min_freq=2).build(CORPUS)
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.sos_id, tok.eos_id] == [0, 1, 2, 3, 4, 5]
    ids = tok.encode("The MOVIE was great!")
    assert tok.tokens("The MOVIE was great!") == ["the", "movie", "was", "great", "!"]  # lower-cased, punctuation split
    assert tok.decode(ids) == "the movie was great !"
    unknown = tok.encode("the zebra was great")
    assert unknown[1] == tok.unk_id and tok.unk_id not in ids
    assert tok.decode(unknown, skip_special=False) == "the <unk> was great"


def test_word_tokenizer_frequency_cut_off_and_max_vocabulary():
    counted = WordTokenizer(max_vocab=1000, min_freq=1).build(["a a a b b c"])
    assert counted.vocab_size == len(SPECIALS) + 3
    assert WordTokenizer(max_vocab=1000, min_freq=2).build(["a a a b b c"]).vocab_size == len(SPECIALS) + 2
    capped = WordTokenizer(max_vocab=len(SPECIALS) + 1, min_freq=1).build(["a a a b b c"])
    assert capped.vocab_size == len(SPECIALS) + 1 and capped.encode("a b") == [capped.hf.token_to_id("a"), capped.unk_id]


def test_char_tokenizer_is_exact_and_maps_unseen_characters_to_unk():
    tok = CharTokenizer().build(CORPUS)
    text = "The plot was great."
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.encode("Zq")[1] == tok.unk_id  # 'q' never occurs in the corpus


def test_bpe_round_trips_any_text_without_unk():
    tok = BPETokenizer(max_vocab=300, min_freq=2).build(CORPUS)
    assert tok.vocab_size <= 300 and tok.unk_id is None and tok.pad_id == 0 and tok.cls_id is not None
    for text in ("The movie was great!", "Ünïcödé, emoji 🎬 and <br /> tags", "  spaces  "):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("great great great")) < len("great great great")  # merges learned


def test_encode_flat_matches_single_encodes():
    tok = WordTokenizer(max_vocab=100, min_freq=1).build(CORPUS)
    texts = ["great movie", "", "the plot was dull ."]
    ids, offsets = tok.encode_flat(texts)
    assert offsets.tolist()[0] == 0 and len(offsets) == len(texts) + 1 and ids.dtype == np.uint16
    for i, text in enumerate(texts):
        assert ids[offsets[i] : offsets[i + 1]].tolist() == tok.encode(text)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_save_and_load_keep_the_ids(tmp_path):
    tok = BPETokenizer(max_vocab=300, min_freq=1).build(CORPUS)
    tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.fingerprint() == tok.fingerprint() and loaded.specials == tok.specials
    assert loaded.encode("A great plot.") == tok.encode("A great plot.") and loaded.cls_id == tok.cls_id
    with pytest.raises(DataError, match="cannot load the tokenizer"):
        Tokenizer.load(tmp_path / "missing")


def test_training_is_deterministic():
    first, second = (BPETokenizer(max_vocab=300, min_freq=1).build(CORPUS) for _ in range(2))
    assert first.fingerprint() == second.fingerprint()


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="max_vocab"):
        WordTokenizer(max_vocab=3)
    with pytest.raises(DataError, match="trained on the training texts"):
        WordTokenizer().build([])


@pytest.mark.data
def test_gpt2_tokenizer_gives_the_published_ids(shared_data):
    tok = GPT2Tokenizer(vocab_dir=str(shared_data / "gpt2_tokenizer")).build()
    assert tok.encode("hello world") == [31373, 995]
    assert tok.encode("Hello world! The quick brown fox.") == [15496, 995, 0, 383, 2068, 7586, 21831, 13]
    assert tok.encode(" SolidGoldMagikarp") == [43453]
    assert tok.eos_id == tok.sos_id == 50256 and (tok.pad_id, tok.cls_id, tok.sep_id) == (50257, 50258, 50259)
    assert tok.vocab_size == 50260 and tok.decode(tok.encode("Café <br /> ok")) == "Café <br /> ok"
    plain = GPT2Tokenizer(vocab_dir=str(shared_data / "gpt2_tokenizer"), add_specials=False).build()
    assert plain.vocab_size == 50257 and plain.pad_id == 50256 and plain.cls_id is None


def test_gpt2_without_files_offline_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="copy GPT-2's vocab.json and merges.txt"):
        GPT2Tokenizer(vocab_dir=str(tmp_path), hub_id="no-such-org/no-such-tokenizer").build()


def test_hub_tokenizer_from_a_local_folder(tmp_path):
    from transformers import PreTrainedTokenizerFast

    base = WordTokenizer(max_vocab=100, min_freq=1).build(CORPUS)
    fast = PreTrainedTokenizerFast(tokenizer_object=base.hf, pad_token="<pad>", unk_token="<unk>", cls_token="<cls>", sep_token="<sep>")
    fast.save_pretrained(tmp_path / "hf")
    tok = HubTokenizer(name_or_path=str(tmp_path / "hf")).build()
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 1, 2, 3)
    assert tok.encode("the movie was great") == base.encode("the movie was great")

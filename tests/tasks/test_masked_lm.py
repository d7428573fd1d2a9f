"""Masked-LM pretraining: BERT's masking statistics, dynamic against static masks, padding, the loss on the masked
positions only, whole words; the masked corpus's windows and facts; the encoder's masked-LM head."""

import io
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from attnlab.data.corpus import write_fake_corpus
from attnlab.data.masked_corpus import MaskedCorpusDataModule, word_starts
from attnlab.data.tokenizers import BPETokenizer, WordTokenizer
from attnlab.models.encoder import Encoder, bert_tiny
from attnlab.tasks.masked_lm import MaskedLMTask, draw_masks, mask_keys

V, MASK, SPECIALS = 500, 6, list(range(7))


def never() -> torch.Tensor:
    out = torch.zeros(V, dtype=torch.bool)
    out[SPECIALS] = True
    return out


def draw(ids, keys, **kw):
    return draw_masks(ids, keys, mask_id=MASK, never=never(), candidates=(~never()).nonzero().squeeze(1), **kw)


def tiny_task(**kw) -> MaskedLMTask:
    torch.manual_seed(0)
    model = Encoder(vocab_size=V, max_len=32, d_model=16, n_layers=1, n_heads=2, head="tokens", dropout=0.0)
    return MaskedLMTask(model=model, optimizer=None, vocab_size=V, mask_id=MASK, special_ids=SPECIALS, **kw)


def with_epoch(task: MaskedLMTask, epoch: int) -> MaskedLMTask:
    task._trainer = SimpleNamespace(current_epoch=epoch)  # what Lightning's trainer tells the task
    return task


def test_masking_statistics_15_percent_then_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, V, (64, 512), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # <cls> ... <sep>
    masked, chosen = draw(ids, mask_keys(0, range(64)))
    real = ids.numel() - 2 * 64
    assert chosen.sum() / real == pytest.approx(0.15, abs=0.006)
    as_mask = (masked == MASK) & chosen
    unchanged = (masked == ids) & chosen
    randomised = chosen & ~as_mask & ~unchanged
    n = chosen.sum()
    assert as_mask.sum() / n == pytest.approx(0.8, abs=0.015)
    assert unchanged.sum() / n == pytest.approx(0.1, abs=0.012)  # (a random draw equal to the original: 1 in 493)
    assert randomised.sum() / n == pytest.approx(0.1, abs=0.012)
    assert not (masked[~chosen] != ids[~chosen]).any()  # nothing outside the chosen positions changes
    assert not never()[masked[randomised]].any()  # a random replacement is never a special token
    assert not chosen[:, 0].any() and not chosen[:, -1].any()


def test_dynamic_masks_differ_between_epochs_static_ones_do_not():
    ids = torch.randint(7, V, (8, 32), generator=torch.Generator().manual_seed(1))
    index = torch.arange(8)
    batch = {"input_ids": ids}
    dynamic = tiny_task(masking="dynamic")
    first = with_epoch(dynamic, 0).masks(batch, index, "train")[1]
    again = with_epoch(dynamic, 0).masks(batch, index, "train")[1]
    later = with_epoch(dynamic, 1).masks(batch, index, "train")[1]
    assert torch.equal(first, again) and not torch.equal(first, later)
    static = tiny_task(masking="static")
    assert torch.equal(with_epoch(static, 0).masks(batch, index, "train")[1],
                       with_epoch(static, 5).masks(batch, index, "train")[1])
    # Evaluation masks never move, whatever the masking of training.
    assert torch.equal(with_epoch(dynamic, 0).masks(batch, index, "val")[1],
                       with_epoch(dynamic, 3).masks(batch, index, "val")[1])
    # A window's masks depend on its index, not on the batch it falls in.
    alone = with_epoch(dynamic, 2).masks({"input_ids": ids[5:6]}, index[5:6], "train")[1]
    assert torch.equal(alone[0], with_epoch(dynamic, 2).masks(batch, index, "train")[1][5])


def test_padding_is_never_masked_nor_predicted():
    ids = torch.randint(7, V, (16, 40), generator=torch.Generator().manual_seed(2))
    lengths = torch.randint(3, 40, (16,), generator=torch.Generator().manual_seed(3))
    real = torch.arange(40) < lengths[:, None]
    ids = ids.masked_fill(~real, 0)  # <pad> = 0
    task = with_epoch(tiny_task(mask_prob=0.5), 0)
    masked, chosen = task.masks({"input_ids": ids, "attention_mask": real}, torch.arange(16), "train")
    assert chosen.any() and not chosen[~real].any() and torch.equal(masked[~real], ids[~real])
    # No padding without an attention mask either: <pad> is a special token.
    assert not draw(ids, mask_keys(0, range(16)), mask_prob=0.5)[1][~real].any()


def test_the_loss_is_the_cross_entropy_of_the_masked_positions_only():
    task = with_epoch(tiny_task(mask_prob=0.3), 0)
    task.log = lambda *a, **k: None
    ids = torch.randint(7, V, (4, 32), generator=torch.Generator().manual_seed(4))
    index = torch.arange(4)
    loss = task._step(({"input_ids": ids}, index), "train")
    masked, chosen = task.masks({"input_ids": ids}, index, "train")
    logits = task.model(masked)  # (B, T, V): every position
    expected = F.cross_entropy(logits[chosen], ids[chosen])
    everywhere = F.cross_entropy(logits.flatten(0, 1), ids.flatten())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(everywhere.item() - expected.item()) > 1e-3  # the unmasked positions would change it
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in task.model.parameters() if p.requires_grad)


def test_whole_word_masking_masks_every_piece_of_a_chosen_word():
    tok = BPETokenizer(max_vocab=300, min_freq=1, mask=True).build(
        ["the internationalisation of unbelievable wordings happens everywhere"] * 20)
    starts = word_starts(tok)
    text = " ".join(["internationalisation unbelievable everywhere wordings"] * 30)
    ids = torch.tensor([[tok.cls_id, *tok.encode(text)[:200], tok.sep_id]] * 8)
    specials = sorted({tok.hf.token_to_id(t) for t in tok.specials.values()})
    nev = torch.zeros(tok.vocab_size, dtype=torch.bool)
    nev[specials] = True
    _, chosen = draw_masks(ids, mask_keys(0, range(8)), mask_id=tok.mask_id, never=nev,
                           candidates=(~nev).nonzero().squeeze(1), word_start=starts)
    begins = starts[ids]
    assert (~begins[:, 1:-1]).any()  # the text has words of several pieces
    for row in range(8):
        word = -1
        words: dict[int, set[bool]] = {}
        for t in range(1, ids.shape[1] - 1):
            word += int(bool(begins[row, t]))
            words.setdefault(word, set()).add(bool(chosen[row, t]))
        assert all(len(v) == 1 for v in words.values())  # all of a word's pieces, or none
    assert chosen.float().mean() == pytest.approx(0.15, abs=0.05)


def test_word_tokenizer_mask_token_and_unchanged_keys():
    plain, masked = WordTokenizer(max_vocab=100, min_freq=1), WordTokenizer(max_vocab=100, min_freq=1, mask=True)
    assert plain.settings() == {"scheme": "word", "max_vocab": 100, "min_freq": 1, "lowercase": True}  # old cache keys
    tok = masked.build(["a b c"])
    assert tok.mask_id == 6 and tok.decode([tok.mask_id], skip_special=False) == "<mask>"
    assert plain.build(["a b c"]).mask_id is None


def test_masked_corpus_windows_and_facts(tmp_path):
    write_fake_corpus(tmp_path / "stories.txt", n_docs=120)
    dm = MaskedCorpusDataModule(cache_dir=str(tmp_path / "cache"), tokenizer=WordTokenizer(max_vocab=200, min_freq=1,
                                mask=True), seed=0, train_file=str(tmp_path / "stories.txt"), max_len=16, batch_size=4,
                                val_fraction=0.1)
    facts = dm.facts()
    assert facts["mask_id"] == 6 and set(facts["special_ids"]) == set(range(7)) and facts["max_len"] == 16
    dm.setup("fit")
    inputs, index = next(iter(dm.val_dataloader()))
    ids = inputs["input_ids"]
    assert ids.shape == (4, 16) and (ids[:, 0] == dm.tokenizer.cls_id).all() and (ids[:, -1] == dm.tokenizer.sep_id).all()
    assert index.tolist() == [0, 1, 2, 3]
    stream = dm.val_tokens()
    assert ids[1, 1:-1].tolist() == stream[14:28].tolist()  # consecutive windows of max_len - 2
    no_mask = MaskedCorpusDataModule(cache_dir=str(tmp_path / "cache"), tokenizer=WordTokenizer(max_vocab=200),
                                     seed=0, train_file=str(tmp_path / "stories.txt"), max_len=16)
    with pytest.raises(Exception, match="<mask>"):
        no_mask.facts()


def test_encoder_with_a_masked_lm_head_round_trips_and_ties_its_output_layer():
    model = bert_tiny(vocab_size=V, max_len=16, head="tokens")
    assert model.lm_head.decoder.weight is model.tok_embed.weight
    ids = torch.randint(7, V, (2, 16))
    model.eval()
    out = model(ids)
    assert out.shape == (2, 16, V)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = bert_tiny(vocab_size=V, max_len=16, head="tokens").eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh(ids), out)
    with pytest.raises(ValueError, match="num_classes"):
        bert_tiny(vocab_size=V, max_len=16)
    with pytest.raises(ValueError, match="masked-LM head"):
        MaskedLMTask(model=bert_tiny(vocab_size=V, max_len=16, num_classes=2), vocab_size=V, mask_id=MASK,
                     special_ids=SPECIALS)

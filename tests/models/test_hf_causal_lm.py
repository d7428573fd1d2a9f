"""HF causal LM wrapper (offline, tiny GPT-2): shapes, causality, save_pretrained round trips (ours and transformers'),
vocabulary resizing, greedy generation with the KV cache equal to the argmax loop, tokenizer files."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.models.hf import HFCausalLM

V, MAX_LEN = 64, 16


def tiny(**kw) -> HFCausalLM:
    torch.manual_seed(0)
    return HFCausalLM(vocab_size=kw.pop("vocab_size", V), max_len=MAX_LEN, n_layer=2, n_embd=32, n_head=2, **kw)


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_shapes_gradients_and_causality():
    model = tiny(dropout=0.0)
    x = tokens(3, 10)
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, 10, V)
    F.cross_entropy(logits.reshape(-1, V), tokens(3, 10, seed=1).reshape(-1)).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.model.config.n_positions == MAX_LEN and model.model.config.eos_token_id is None
    model.eval()
    changed = x.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % V
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_save_pretrained_round_trips(tmp_path):
    import transformers

    model = tiny().eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    x = tokens(2, 12)
    ours = HFCausalLM(vocab_size=V, max_len=MAX_LEN, name_or_path=str(tmp_path)).eval()
    assert torch.equal(ours(x), model(x))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(theirs(input_ids=x).logits, model(x))


def test_vocabulary_resized_or_cut_and_context_checked(tmp_path):
    model = tiny().eval()
    model.save_pretrained(tmp_path)
    x = tokens(2, 8)
    bigger = HFCausalLM(vocab_size=V + 6, max_len=MAX_LEN, name_or_path=str(tmp_path)).eval()
    assert bigger.model.get_input_embeddings().num_embeddings == V + 6
    logits = bigger(x)
    assert logits.shape == (2, 8, V + 6)
    torch.testing.assert_close(logits[..., :V], model(x))  # the old tokens keep their logits
    smaller = HFCausalLM(vocab_size=V - 4, max_len=MAX_LEN, name_or_path=str(tmp_path)).eval()
    torch.testing.assert_close(smaller(x), model(x)[..., : V - 4])
    with pytest.raises(ValueError, match="max_len 32 exceeds"):
        HFCausalLM(vocab_size=V, max_len=2 * MAX_LEN, name_or_path=str(tmp_path))


def test_greedy_generate_equals_the_argmax_loop_past_the_context():
    model = tiny().eval()
    prompt = tokens(2, 5)
    out = model.generate(prompt, 20, temperature=0)  # 25 > max_len 16: the window slides
    idx = prompt
    for _ in range(20):
        logits = model(idx[:, -MAX_LEN:])[:, -1]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)
    model.train()  # generate samples without dropout and hands the mode back
    assert torch.equal(model.generate(prompt, 20, temperature=0), out) and model.training


def test_sampling_is_reproducible_with_a_generator_and_stops_at_eos():
    model = tiny().eval()
    prompt = tokens(2, 4)
    draw = lambda: model.generate(prompt, 8, top_k=10, generator=torch.Generator().manual_seed(3))  # noqa: E731
    a = draw()
    torch.manual_seed(123)
    assert torch.equal(a, draw()) and a.shape == (2, 12)
    greedy = model.generate(prompt[:1], 5, temperature=0)
    eos = int(greedy[0, 5])  # the second new token
    end = 4 + greedy[0, 4:].tolist().index(eos)  # its first appearance
    assert torch.equal(model.generate(prompt[:1], 5, temperature=0, eos_id=eos), greedy[:, : end + 1])


def test_save_pretrained_writes_the_tokenizer(tmp_path):
    import transformers

    from attnlab.data.tokenizers import Tokenizer, WordTokenizer

    texts = ["once upon a time there was a cat .", "the cat ran home to the dog ."] * 5
    tok = WordTokenizer(max_vocab=64, min_freq=1).build(texts)
    model = tiny(vocab_size=tok.vocab_size).eval()
    model.save_pretrained(tmp_path, tokenizer=tok)
    assert Tokenizer.load(tmp_path).encode(texts[1]) == tok.encode(texts[1])
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok(texts[0])["input_ids"] == tok.encode(texts[0])
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.eos_token_id == tok.eos_id == hf_tok.eos_token_id


def test_sizes_of_a_pretrained_model_are_an_error_naming_the_fix(tmp_path):
    tiny().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"n_layer=2, dropout=0.0 shape a GPT-2 built from scratch; .* drop them "
                                         r"\(~model.n_layer ~model.dropout\) or build from scratch: model.name_or_path=null"):
        HFCausalLM(vocab_size=V, max_len=MAX_LEN, name_or_path=str(tmp_path), n_layer=2, dropout=0.0)
    scratch = HFCausalLM(vocab_size=V, max_len=MAX_LEN)  # unset sizes: the from-scratch defaults
    assert (scratch.model.config.n_layer, scratch.model.config.n_embd, scratch.model.config.n_head) == (4, 128, 4)

"""Every val/ and test/ metric a task logs has a direction stated in its conf/task/*.yaml (`monitor.modes`), which
checkpoints, early stopping and the sweep summary read: a new metric without one fails here. A metric that is no
score (a summary's length) states `none`."""

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from attnlab.config import conf_dir, metric_mode
from attnlab.tasks.classification import ClassificationTask
from attnlab.tasks.language_modeling import LanguageModelingTask
from attnlab.tasks.reconstruction import ReconstructionTask
from attnlab.tasks.seq2seq import Seq2SeqTask


def logged(task: L.LightningModule, batches: list) -> set[str]:
    """The metrics one validation and one test pass log (the best-so-far ones need a fit: added by name)."""
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    loader = DataLoader(batches, batch_size=None)
    names = set(trainer.validate(task, dataloaders=loader, verbose=False)[0])
    return names | set(trainer.test(task, dataloaders=loader, verbose=False)[0])


class Detokenizer:
    def decode(self, ids, skip_special=True) -> str:
        return " ".join(map(str, ids))


def _seq2seq():
    from attnlab.models.seq2seq import TransformerSeq2Seq

    torch.manual_seed(0)
    model = TransformerSeq2Seq(src_vocab_size=9, tgt_vocab_size=9, src_pad_id=0, tgt_pad_id=0, max_src_len=8,
                               max_tgt_len=8, d_model=8, n_heads=2, n_enc_layers=1, n_dec_layers=1, d_ff=16)
    task = Seq2SeqTask(model=model, optimizer=torch.optim.SGD, tgt_pad_id=0, sos_id=1, eos_id=2, max_tgt_len=8,
                       tgt_tokenizer=Detokenizer(), beam_size=2)
    batch = {"src": torch.tensor([[3, 4, 2]]), "tgt": torch.tensor([[1, 5, 6, 2]]), "index": torch.tensor([0]),
             "set": "test_2016_flickr", "refs": ["5 6"]}
    return task, [batch], {"val/bleu_best"}


def _summarization():
    from attnlab.models.hf import HFCausalLM
    from attnlab.tasks.summarization import SummarizationTask

    torch.manual_seed(0)
    model = HFCausalLM(vocab_size=9, max_len=16, n_layer=1, n_embd=8, n_head=2)
    task = SummarizationTask(model=model, optimizer=torch.optim.SGD, tokenizer=Detokenizer(), eos_id=2, pad_id=0,
                             max_summary_len=3, test_sets=["scitldr", "dialogsum"])
    batches = [{"input_ids": torch.tensor([[3, 4, 5, 6, 2]]), "labels": torch.tensor([[-100, -100, 5, 6, 2]]),
                "prompt_ids": torch.tensor([[3, 4]]), "prompt_mask": torch.ones(1, 2, dtype=torch.bool),
                "index": torch.tensor([0]), "set": name, "refs": [["5 6"]], "sources": ["3 4. 7 8."]}
               for name in ("scitldr", "dialogsum")]
    return task, batches, {"val/rougeL_best"}


TASKS = {
    "classification": lambda: (ClassificationTask(model=nn.Linear(4, 3), optimizer=torch.optim.SGD, num_classes=3),
                               [(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))], {"val/acc_best"}),
    "reconstruction": lambda: (ReconstructionTask(model=nn.Sigmoid(), optimizer=torch.optim.SGD),
                               [(torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4))], set()),
    "language_modeling": lambda: (LanguageModelingTask(model=nn.Embedding(5, 5), optimizer=torch.optim.SGD,
                                                       token_bytes=[1.0] * 5, sample_tokens=0),
                                  [(torch.tensor([[0, 1, 2]]), torch.tensor([[1, 2, 3]]))], {"val/loss_best"}),
    "seq2seq": _seq2seq,
    "summarization": _summarization,
}


@pytest.mark.parametrize("name", list(TASKS))
def test_every_logged_metric_has_a_stated_direction(name):
    task, batches, best = TASKS[name]()
    metrics = logged(task, batches) | best
    modes = OmegaConf.load(conf_dir() / "task" / f"{name}.yaml").monitor.modes
    unstated = {m for m in metrics if m.startswith(("val/", "test/")) and metric_mode(m, modes) is None}
    assert {m for m in unstated if modes.get(m.split("/")[1]) != "none"} == set()
    assert len(metrics) >= 3

"""Tasks under a real Lightning loop on tiny models: running bests survive a resume, a diverged loss stops the run."""

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attnlab.errors import DivergedError
from attnlab.tasks.classification import ClassificationTask
from attnlab.tasks.language_modeling import LanguageModelingTask, checked_samples
from attnlab.tasks.reconstruction import ReconstructionTask

VOCAB = 8


def _classification(lr: float = 0.5) -> tuple[ClassificationTask, DataLoader, DataLoader]:
    """Validation labels follow the opposite rule to training labels: validation accuracy falls as training learns,
    so the best epoch is an early one."""
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    train = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    val = DataLoader(TensorDataset(xv, (xv[:, 0] <= 0).long()), batch_size=32)
    torch.manual_seed(0)
    task = ClassificationTask(model=nn.Linear(2, 2), optimizer=functools.partial(torch.optim.SGD, lr=lr), num_classes=2)
    return task, train, val


def _language_model() -> tuple[LanguageModelingTask, DataLoader, DataLoader]:
    """A bigram table trained on "t is followed by t+1" and validated on "t is followed by t+2": validation loss
    rises as training learns, so the best epoch is an early one."""
    starts = torch.arange(64) % VOCAB
    seq = (starts[:, None] + torch.arange(9)) % VOCAB  # (64, 9)
    val_seq = (starts[:, None] + 2 * torch.arange(9)) % VOCAB
    train = DataLoader(TensorDataset(seq[:, :-1], seq[:, 1:]), batch_size=16)
    val = DataLoader(TensorDataset(val_seq[:, :-1], val_seq[:, 1:]), batch_size=32)
    torch.manual_seed(0)
    task = LanguageModelingTask(model=nn.Embedding(VOCAB, VOCAB), optimizer=functools.partial(torch.optim.SGD, lr=2.0))
    return task, train, val


class Record(Callback):
    """The logged values after each validation epoch (not the sanity check)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _fit(make, max_epochs: int, ckpt_dir=None, ckpt_path=None) -> Record:
    task, train, val = make()
    record = Record()
    callbacks = [record] + ([ModelCheckpoint(dirpath=ckpt_dir, save_last=True)] if ckpt_dir else [])
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, callbacks=callbacks,
                        enable_checkpointing=bool(ckpt_dir), enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, train, val, ckpt_path=ckpt_path, weights_only=True)
    return record


@pytest.mark.parametrize("make, metric, best", [(_classification, "val/acc", max), (_language_model, "val/loss", min)])
def test_running_best_survives_a_resume(tmp_path, make, metric, best):
    straight = _fit(make, 3).epochs
    values = [e[metric] for e in straight]
    assert best(values) == values[0] != best(values[1:]), values  # the best epoch comes before the resume point
    assert straight[-1][f"{metric}_best"] == values[0]  # the sanity check's value never counts

    _fit(make, 1, ckpt_dir=tmp_path)
    resumed = _fit(make, 3, ckpt_path=tmp_path / "last.ckpt").epochs
    assert [e[metric] for e in resumed] == values[1:]  # the resumed epochs replay the uninterrupted ones
    assert resumed[-1][f"{metric}_best"] == values[0]


def test_a_diverging_loss_stops_training_and_names_the_step():
    x = torch.rand(64, 4)
    train = DataLoader(TensorDataset(x, x), batch_size=16)
    task = ReconstructionTask(model=nn.Linear(4, 4), optimizer=functools.partial(torch.optim.SGD, lr=1e4))
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(DivergedError, match=r"training loss is (nan|inf) at step (\d+) .*learning rate") as err:
        trainer.fit(task, train)
    assert f"at step {trainer.global_step} " in str(err.value) and trainer.global_step < 20  # stopped at once


def test_a_nan_input_stops_training_at_step_zero():
    task, _, val = _classification()
    x = torch.randn(32, 2)
    x[3, 0] = float("nan")
    train = DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=16)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with pytest.raises(DivergedError, match="at step 0 "):
        trainer.fit(task, train, val)


def test_sampling_from_a_diverged_model_raises_a_clear_error():
    from attnlab.data.tokenizers import CharTokenizer
    from attnlab.models.gpt import GPT

    tokenizer = CharTokenizer().build(["a tiny corpus"])
    torch.manual_seed(0)
    model = GPT(vocab_size=tokenizer.vocab_size, max_len=16, d_model=16, n_layers=1, n_heads=2)
    with torch.no_grad():
        model.ln_f.weight[0] = float("nan")  # as a diverged run leaves it
    task = LanguageModelingTask(model=model, optimizer=torch.optim.SGD, tokenizer=tokenizer)
    with pytest.raises(DivergedError, match="cannot sample a continuation: the model's next-token logits are NaN"):
        checked_samples(task.model, task.tokenizer, ["a t"], 4)

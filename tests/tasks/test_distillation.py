"""Distillation: the temperature-scaled KL is zero for a student equal to its teacher; the teacher stays frozen and
out of the student's checkpoint; a student starts from every other teacher layer (init_from_layers)."""

import copy

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.models.encoder import bert_tiny, distilbert_tiny
from attnlab.runs import pick_layers
from attnlab.tasks.distillation import DistillationTask, distillation_kl

V = 60


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, V, (6, 20), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}, torch.randint(0, 2, (6,), generator=g)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kl_is_zero_for_equal_logits_and_positive_otherwise(temperature):
    logits = torch.randn(8, 3)
    assert distillation_kl(logits, logits.clone(), temperature).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_kl(logits, torch.randn(8, 3), temperature).item() > 1e-3


def test_a_student_equal_to_its_teacher_has_zero_kl_and_the_teacher_stays_out_of_the_state_dict():
    torch.manual_seed(0)
    student = bert_tiny(vocab_size=V, max_len=32, num_classes=2, dropout=0.0)
    task = DistillationTask(model=student, num_classes=2, teacher="unused", temperature=3.0, alpha=1.0)
    task.set_teacher(copy.deepcopy(student))
    logged = {}
    task.log = lambda name, value, **k: logged.__setitem__(name, value)
    task.log_loss = lambda *a, **k: None
    loss = task._step(batch(), "train")
    assert logged["train/kl"].item() == pytest.approx(0.0, abs=1e-6) and loss.item() == pytest.approx(0.0, abs=1e-6)
    assert not any(p.requires_grad for p in task.teacher.parameters()) and not task.teacher.training
    assert all(not key.startswith(("teacher", "_teacher")) for key in task.state_dict())
    # Another student: a positive KL, and gradients reach the student only.
    task.model = bert_tiny(vocab_size=V, max_len=32, num_classes=2, dropout=0.0)
    task._step(batch(1), "train").backward()
    assert logged["train/kl"].item() > 0
    assert all(p.grad is None for p in task.teacher.parameters())


def test_bad_settings_are_refused():
    model = bert_tiny(vocab_size=V, max_len=32, num_classes=2)
    with pytest.raises(ValueError, match="temperature"):
        DistillationTask(model=model, num_classes=2, teacher="x", temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        DistillationTask(model=model, num_classes=2, teacher="x", alpha=1.5)


def test_every_other_teacher_layer_initialises_a_half_depth_student():
    teacher = bert_tiny(vocab_size=V, max_len=32, num_classes=2, n_layers=4)
    picked = pick_layers(teacher.state_dict(), "every_other")
    student = distilbert_tiny(vocab_size=V, max_len=32, num_classes=2, n_layers=2, type_vocab_size=2)
    missing, unexpected = student.load_state_dict({k: v for k, v in picked.items() if not k.startswith("pooler")},
                                                  strict=False)
    assert not missing and not unexpected
    for i, j in ((0, 0), (1, 2)):
        for name, value in student.blocks[i].state_dict().items():
            assert torch.equal(value, teacher.blocks[j].state_dict()[name])
    assert torch.equal(student.tok_embed.weight, teacher.tok_embed.weight)
    assert sorted({k.split(".")[1] for k in pick_layers(teacher.state_dict(), [3]) if k.startswith("blocks.")}) == ["0"]
    with pytest.raises(ConfigError, match="blocks 0..3"):
        pick_layers(teacher.state_dict(), [1, 4])

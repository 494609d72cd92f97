import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import classification_step, distillation_step, kd_loss


def reference_kd(student, teacher, targets, t, alpha):
    """Hinton's loss written out by hand: sum_c p_t (log p_t - log p_s), batch mean."""
    p_teacher = torch.softmax(teacher.double() / t, 1)
    log_p_student = torch.log_softmax(student.double() / t, 1)
    kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(1).mean()
    ce = -torch.log_softmax(student.double(), 1)[torch.arange(len(targets)), targets].mean()
    return alpha * t * t * kl + (1 - alpha) * ce


@pytest.mark.parametrize('t', [1.0, 4.0, 20.0])
@pytest.mark.parametrize('alpha', [0.0, 0.5, 0.9, 1.0])
def test_kd_loss_matches_reference(t, alpha):
    gen = torch.Generator().manual_seed(int(t * 10 + alpha * 100))
    student, teacher = torch.randn(16, 10, generator=gen) * 3, torch.randn(16, 10, generator=gen) * 3
    targets = torch.randint(0, 10, (16,), generator=gen)
    expected = reference_kd(student, teacher, targets, t, alpha)
    assert kd_loss(student, teacher, targets, t, alpha).item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_alpha_zero_is_exactly_cross_entropy_and_needs_no_teacher():
    student, targets = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.equal(kd_loss(student, None, targets, 4.0, 0.0), F.cross_entropy(student, targets))


def test_kd_term_vanishes_when_student_equals_teacher():
    logits, targets = torch.randn(8, 5) * 4, torch.randint(0, 5, (8,))
    assert kd_loss(logits, logits.clone(), targets, 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_stable_for_extreme_logits_and_half_precision():
    student = torch.tensor([[1000.0, -1000.0, 0.0]]).half()
    teacher = torch.tensor([[-1000.0, 1000.0, 0.0]]).half()
    loss = kd_loss(student, teacher, torch.tensor([0]), 1.0, 0.9)
    assert torch.isfinite(loss) and loss.dtype == torch.float32


def test_gradient_scale_is_independent_of_temperature_as_t_squared_predicts():
    # For large T the soft gradient is (s - t) / (N T^2) per logit; the T^2 factor cancels it.
    teacher, base, targets = torch.randn(32, 10), torch.randn(32, 10), torch.zeros(32, dtype=torch.long)
    scaled, unscaled = [], []
    for t in (4.0, 16.0):
        student = base.clone().requires_grad_(True)
        kd_loss(student, teacher, targets, t, 1.0).backward()
        scaled.append(student.grad.norm().item())
        unscaled.append(scaled[-1] / (t * t))
    assert scaled[0] == pytest.approx(scaled[1], rel=0.1)
    assert unscaled[0] / unscaled[1] > 10  # without T^2 the soft term would fade 16x


def test_steps_return_loss_and_logits():
    model = torch.nn.Linear(4, 3)
    images, labels = torch.randn(5, 4), torch.randint(0, 3, (5,))
    loss, logits = classification_step(model)(images, labels, torch.arange(5))
    assert logits.shape == (5, 3) and loss.item() == pytest.approx(F.cross_entropy(model(images), labels).item())
    seen = []
    teacher_logits = lambda x, idx: seen.append(idx) or torch.zeros(len(idx), 3)
    loss, _ = distillation_step(model, teacher_logits, 2.0, 0.5)(images, labels, torch.arange(5))
    assert len(seen) == 1 and math.isfinite(loss.item())
    distillation_step(model, teacher_logits, 2.0, 0.0)(images, labels, torch.arange(5))
    assert len(seen) == 1  # alpha 0 never asks for the teacher

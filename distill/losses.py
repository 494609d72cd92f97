"""The distillation loss (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531) and the training steps built on it."""
import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y), batch means.

    The one definition of the distillation loss: change it here. label_smoothing applies to the CE term.

    The T^2 keeps the soft term's gradients on the same scale as the hard term's at any T.
    Computed in float32 from log-probabilities, so it is stable under AMP and at large T.
    With alpha == 0 it is exactly cross-entropy and teacher_logits may be None.
    """
    ce = F.cross_entropy(student_logits.float(), targets, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction='batchmean', log_target=True)
    return alpha * t * t * kl + (1 - alpha) * ce


def classification_step(model, label_smoothing: float = 0.0):
    """The teacher's step: cross-entropy on the labels."""
    def step(images, labels, indices):
        logits = model(images)
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing), logits
    return step


def distillation_step(student, teacher_logits_for, temperature: float, alpha: float, label_smoothing: float = 0.0):
    """A student's step. teacher_logits_for(images, indices) returns the teacher's logits of exactly
    these augmented images: computed online, or read from a cache keyed by sample index and epoch."""
    def step(images, labels, indices):
        logits = student(images)
        teacher_logits = teacher_logits_for(images, indices) if alpha > 0 else None
        return kd_loss(logits, teacher_logits, labels, temperature, alpha, label_smoothing), logits
    return step

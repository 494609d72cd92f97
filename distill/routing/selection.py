"""The selector's data and training: every expert's outputs on the held-out splits (and on augmented copies of
the route images), which expert is right on each, and the step and score the engine trains the selector with."""
import itertools

import torch
import torch.nn.functional as F

from ..engine import predict_logits
from ..runtime import autocast
from .decisions import (answer_logits, confidences, deferral_accuracy, expert_correctness, extra_costs,
                        selector_choice, selector_inputs)


def cascade_inputs(outputs: dict, correct: dict, alone: dict, sizes: dict) -> tuple:
    """(confidences, correctness as routed, correctness alone) of the first sizes[part] images of each part, as
    choose_routing's cascade_tuning: the held-out images themselves, not the augmented copies that follow them
    in routing_data's route."""
    return tuple(torch.cat(parts).cpu() for parts in zip(*[
        (confidences([logits[:n] for logits in outputs[part][0]]), correct[part][:n], alone[part][:n])
        for part, n in sizes.items()]))


@torch.inference_mode()
def expert_outputs(experts: list, batches, device, amp=None):
    """([each expert's logits], labels) over (images, labels, indices) batches, in order, as float32."""
    logits, labels = [[] for _ in experts], []
    for images, batch_labels, _ in batches:
        with autocast(device, amp):
            for k, expert in enumerate(experts):
                logits[k].append(expert(images).float())
        labels.append(batch_labels)
    return [torch.cat(out) for out in logits], torch.cat(labels)


def routing_data(experts: list, loaders: dict, route_views: int, device, amp, answer: str):
    """For each split, ([each expert's logits], labels), where each expert's answer as routed is right
    (answer_logits), where each expert alone is right, and the selector's inputs. The experts run once on each
    split and on route_views cropped and flipped copies of the route images, as more examples for the selector."""
    sources = {part: [loader] for part, loader in loaders.items()}
    sources['route'] += [loaders['route'].augmented(view) for view in range(1, route_views + 1)]
    outputs = {part: expert_outputs(experts, itertools.chain(*batches), device, amp)
               for part, batches in sources.items()}
    correct = {part: expert_correctness(answer_logits(logits, answer), labels) for part, (logits, labels) in
               outputs.items()}
    alone = {part: expert_correctness(logits, labels) for part, (logits, labels) in outputs.items()}
    return outputs, correct, alone, {part: selector_inputs(logits[0]) for part, (logits, _) in outputs.items()}


def selection_step(selector, disagreement_weight: float = 1.0):
    """The selector's training step: binary cross-entropy on 'is expert e right', per expert, with the
    images on which the experts disagree (where the choice matters) weighted by disagreement_weight."""
    def step(inputs, correct, indices):
        scores = selector(inputs).float()
        disagree = (correct.max(1).values != correct.min(1).values).float()
        weight = 1 + (disagreement_weight - 1) * disagree
        loss = F.binary_cross_entropy_with_logits(scores, correct, reduction='none').mean(1)
        return (loss * weight).sum() / weight.sum(), None
    return step


class SelectorScore:
    """evaluate_fn for the engine on a TensorLoader of (selector inputs, expert correctness): (mean BCE, a
    routed accuracy). While the selector trains, its accuracy averaged over its cost range (deferral_accuracy),
    so that the epoch kept is the one that ranks images best; once an operating point is chosen
    (cost_weight), the routed accuracy there. costs: the experts', cheapest first."""

    def __init__(self, costs: torch.Tensor):
        self.costs, self.cost_weight = costs, None

    def __call__(self, selector, loader, amp=None):
        scores, correct = predict_logits(selector, loader)  # in float32 whatever amp is, as selector_scores
        loss = F.binary_cross_entropy_with_logits(scores, correct).item()
        if self.cost_weight is None:
            return loss, deferral_accuracy(scores, correct, self.costs)
        choice = selector_choice(scores, extra_costs(self.costs), self.cost_weight)
        return loss, correct.gather(1, choice[:, None]).mean().item()

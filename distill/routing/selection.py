"""The selector's data and training: every expert's outputs on the held-out splits (and on augmented copies of
the route images), which expert is right on each, the step and score the engine trains the selector with, and
the tuning of both routing modes on val that ends its training."""
import itertools

import torch
import torch.nn.functional as F

from ..engine import predict_logits
from ..metrics import time_model
from ..runtime import autocast
from .decisions import (answer_logits, choose_routing, confidences, deferral_accuracy, expert_correctness,
                        extra_costs, ranking_references, selector_choice, selector_inputs, selector_scores)
from .report import format_report, routing_report, routing_summary
from .router import measure_routing


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


class RoutingTuning:
    """fit's calibrate for the selector: on val, with the best epoch's selector and before the test set is touched,
    each mode's operating point (the cascade's also on the parts in tune_on), both timed as infer.py routes a
    folder, and the val report printed. Returns what the checkpoint keeps beside the selector; self.score, the
    selector's evaluate_fn, scores test at the chosen point. routed: routing_data's (outputs, correct, alone,
    inputs); selector_val: the selector's val loader; timing_images: val images to time the routing on; costs:
    per cost kind, cheapest expert first; selector_macs: the selector's MACs per image."""

    def __init__(self, experts: list, routed: tuple, selector_val, timing_images: torch.Tensor, costs: dict,
                 selector_macs: float, *, cost: str, tune_on: dict, max_drop: float, val_margin: float, answer: str,
                 batch_size: int, amp=None):
        outputs, correct, alone, inputs = routed
        self.experts, (self.val_logits, self.val_labels), self.costs = experts, outputs['val'], costs
        self.val_correct, self.val_alone, self.val_inputs = correct['val'].cpu(), alone['val'].cpu(), inputs['val']
        self.selector_val, self.timing_images = selector_val, timing_images
        self.selector_macs, self.cost, self.max_drop, self.val_margin = selector_macs, cost, max_drop, val_margin
        self.answer, self.batch_size, self.amp, self.tune_on = answer, batch_size, amp, list(tune_on)
        self.cascade_tuning = cascade_inputs(outputs, correct, alone, tune_on) if set(tune_on) != {'val'} else None
        self.references = ranking_references(confidences(self.val_logits).cpu(), self.val_correct, costs[cost])
        self.score = SelectorScore(costs[cost])

    def __call__(self, selector) -> dict:
        scores = predict_logits(selector, self.selector_val)[0]  # float32, as selector_scores
        selector_time = time_model(lambda x: selector_scores(selector, x), self.val_inputs[:self.batch_size],
                                   self.amp)['seconds_per_image']
        selector_costs = {'macs': self.selector_macs, 'time': selector_time}
        routing = choose_routing(confidences(self.val_logits).cpu(), scores.cpu(), self.val_correct,
                                 self.costs[self.cost], selector_costs[self.cost], self.max_drop, self.val_margin,
                                 self.cascade_tuning, self.val_alone)
        routing.update(cost=self.cost, cascade_tuned_on=self.tune_on, answer=self.answer)
        self.score.cost_weight = routing['cost_weight']
        routing = measure_routing(routing, self.experts, selector.eval(), extra_costs(self.costs[self.cost]),
                                  self.timing_images, self.batch_size, self.amp)
        names = [e.name for e in self.experts]
        report = routing_report(self.val_logits, self.val_labels, scores, self.costs, selector_costs, routing)
        print(format_report(report, names, 'val split, best epoch:'))
        print(routing_summary(routing, names))
        return {'routing': routing, 'selector_cost': selector_costs, 'ranking_references': self.references}

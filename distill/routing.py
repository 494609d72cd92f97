"""Routing: per-image targets, the routing decision, and conditional-compute prediction.

The selector has one output per expert, trained as a multi-label "is expert i right on this
image" classifier on the held-out `route` split (experts are near-perfect on their own training
images, so targets built there would say nothing). route() trades predicted correctness against
cost; predict() runs the selector once and then each expert only on the images routed to it.
selectorTrain.py, infer.py and evaluate.py all use these functions.
"""
import math
import os

import torch
import torch.nn.functional as F

from . import UserError
from .checkpoint import check_compatible, linked_path, load_checkpoint, model_from_checkpoint
from .engine import autocast, fuse_for_inference, place, predict_logits, reduce_sums
from .metrics import count_macs, count_params, weights_mb

COST_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)  # the sweep: selectorTrain's choice, evaluate's table


class Expert:
    """A classifier rebuilt from its checkpoint, with its cost in MACs per image."""

    def __init__(self, path: str, device, reference: dict | None = None):
        self.path = path
        self.state = load_checkpoint(path, map_location='cpu')
        if reference is not None:  # every expert must see the same data, split and pixels
            check_compatible(self.state, path, num_classes=reference['num_classes'], split=reference['split'],
                             image_size=reference['image_size'])
            if self.state['mean'] != reference['mean'] or self.state['std'] != reference['std']:
                raise UserError(f"'{path}' normalises images differently from '{reference['path']}'; "
                                f"train all experts on the same data")
        model = place(model_from_checkpoint(self.state, path), torch.device(device))
        self.params, self.weights_mb = count_params(model), weights_mb(model)  # as trained, before fusing
        self.model = fuse_for_inference(model)
        self.name = os.path.basename(os.path.dirname(os.path.abspath(path))) or self.state['arch']
        self.macs = count_macs(self.model, self.state['image_size'], device)

    def reference(self) -> dict:
        return {'path': self.path, **{k: self.state[k] for k in ('num_classes', 'split', 'image_size', 'mean', 'std')}}


def load_selector(path: str) -> dict:
    """A selector checkpoint, with its experts' paths found from where it lies now; anything else is
    refused in one line."""
    state = load_checkpoint(path, map_location='cpu')
    if 'experts' not in state:
        raise UserError(f"'{path}' is a {state.get('arch', 'model')} checkpoint, not a selector; pass the "
                        "best.pt that selectorTrain.py wrote (default checkpoints/selector/best.pt)")
    for expert in state['experts']:
        found = linked_path(expert['path'], path, state)
        if found is None:
            raise UserError(f"selector '{path}' routes to '{expert['path']}', which is neither where it "
                            f"lay beside the selector nor here; move run directories together, or retrain the selector")
        expert['path'] = found
    return state


def load_experts(paths, device) -> list:
    if not paths:
        raise UserError('no experts given; pass --experts CKPT [CKPT ...]')
    first = Expert(paths[0], device)
    return [first] + [Expert(p, device, first.reference()) for p in paths[1:]]


def expert_correctness(expert_logits: list, labels: torch.Tensor) -> torch.Tensor:
    """N x E float tensor: 1 where expert e classifies image n correctly."""
    return torch.stack([(logits.argmax(1) == labels).float() for logits in expert_logits], 1)


def normalised_costs(macs) -> torch.Tensor:
    costs = torch.tensor(macs, dtype=torch.float32)
    return costs / costs.max()


def route(scores: torch.Tensor, costs: torch.Tensor, cost_weight: float = 0.0) -> torch.Tensor:
    """Index of the expert with the best predicted correctness minus cost_weight x normalised cost."""
    return (torch.sigmoid(scores.float()) - cost_weight * costs.to(scores.device)).argmax(1)


@torch.inference_mode()
def predict(selector, experts: list, images: torch.Tensor, costs: torch.Tensor, cost_weight: float = 0.0, amp=None):
    """Route a batch and run each expert only on its own images.

    Returns (logits N x C, choice N): logits are in input order, from the expert each image went to.
    """
    with autocast(images.device, amp):
        choice = route(selector(images), costs, cost_weight)
        logits = None
        for e, expert in enumerate(experts):
            mine = (choice == e).nonzero().squeeze(1)
            if len(mine) == 0:
                continue
            out = expert(images.index_select(0, mine)).float()
            if logits is None:
                logits = torch.empty(len(images), out.shape[1], device=images.device)
            logits[mine] = out
    return logits, choice


def cost_weight_sweep(expert_logits: list, labels, scores, macs: list, selector_macs: int, weights) -> list:
    """(cost weight, accuracy, mean MACs per image) of routing at each weight, from precomputed outputs."""
    correct = expert_correctness(expert_logits, labels).cpu()
    costs, macs_t = normalised_costs(macs), torch.tensor(macs, dtype=torch.float64)
    points = []
    for w in weights:
        choice = route(scores.cpu(), costs, w)
        points.append((w, correct.gather(1, choice[:, None]).mean().item(), selector_macs + macs_t[choice].mean().item()))
    return points


def choose_cost_weight(sweep: list, max_drop: float) -> float:
    """The weight of the cheapest point of a sweep [(weight, accuracy, MACs)] whose accuracy is within max_drop
    (a fraction) of the most accurate point's; among equally cheap ones, the most accurate. selectorTrain.py calls
    it on val, so the operating point is never picked on test."""
    best = max(accuracy for _, accuracy, _ in sweep)
    return min((p for p in sweep if p[1] >= best - max_drop), key=lambda p: (p[2], -p[1]))[0]


def selection_step(selector, targets: torch.Tensor):
    """The selector's training step: binary cross-entropy on 'is expert e right', per expert.

    targets is indexed by sample index (rows outside the route split are never read)."""
    def step(images, labels, indices):
        scores = selector(images)
        return F.binary_cross_entropy_with_logits(scores.float(), targets[indices]), None
    return step


class RoutedAccuracy:
    """evaluate_fn for the engine: (selector BCE, routed accuracy) on a loader.

    Each expert's predictions on a loader are computed once and kept, so choosing the best epoch
    costs one selector pass per epoch."""

    def __init__(self, experts: list, cost_weight: float = 0.0):
        self.experts, self.cost_weight = experts, cost_weight
        self.costs = normalised_costs([e.macs for e in experts])
        self.cached = {}

    def expert_outputs(self, loader, amp=None):
        if id(loader) not in self.cached:
            outputs = [predict_logits(e.model, loader, amp) for e in self.experts]
            labels = outputs[0][1]
            self.cached[id(loader)] = ([logits for logits, _ in outputs], labels)
        return self.cached[id(loader)]

    def __call__(self, selector, loader, amp=None):
        expert_logits, labels = self.expert_outputs(loader, amp)
        correct = expert_correctness(expert_logits, labels)
        scores, _ = predict_logits(selector, loader, amp)
        choice = route(scores, self.costs, self.cost_weight)
        loss = F.binary_cross_entropy_with_logits(scores, correct, reduction='sum').item() / correct.shape[1]
        right = correct.gather(1, choice[:, None]).sum().item()
        loss, right, seen = reduce_sums(loss, right, len(labels), device=labels.device)  # over torchrun ranks
        return loss / max(seen, 1), right / max(seen, 1)


def routing_report(expert_logits: list, labels: torch.Tensor, scores: torch.Tensor, macs: list,
                   selector_macs: int, cost_weight: float = 0.0, seed: int = 0, best: int | None = None) -> dict:
    """Accuracy and mean MACs per image of routing against its references, from precomputed outputs.

    Keys: each expert alone, routed, oracle (any expert right), random routing, best single expert
    (pass `best` chosen on val when reporting on test) and max-confidence routing (runs every expert).
    Also the share of images each expert received."""
    correct = expert_correctness(expert_logits, labels)
    n, e = correct.shape
    choice = route(scores, normalised_costs(macs), cost_weight).cpu()
    correct = correct.cpu()
    rows = {}
    for i in range(e):
        rows[f'expert:{i}'] = (correct[:, i].mean().item(), macs[i])
    random_choice = torch.randint(0, e, (n,), generator=torch.Generator().manual_seed(seed))
    share = torch.bincount(choice, minlength=e).float() / n
    rows['routed'] = (correct.gather(1, choice[:, None]).mean().item(),
                      selector_macs + float((share * torch.tensor(macs, dtype=torch.float32)).sum()))
    rows['oracle'] = (correct.max(1).values.mean().item(), float('nan'))
    rows['random'] = (correct.gather(1, random_choice[:, None]).mean().item(), sum(macs) / e)
    best = int(correct.mean(0).argmax()) if best is None else best
    rows['best single'] = (correct[:, best].mean().item(), macs[best])
    confidence = torch.stack([F.softmax(l.float(), 1).max(1).values.cpu() for l in expert_logits], 1)
    rows['max confidence'] = (correct.gather(1, confidence.argmax(1)[:, None]).mean().item(), sum(macs))
    return {'rows': rows, 'share': share.tolist(), 'choice': choice}


def format_report(report: dict, names: list, title: str) -> str:
    lines = [title, f"  {'routing':<22}{'accuracy':>9}{'MMACs/img':>11}"]
    for key, (acc, macs) in report['rows'].items():
        label = names[int(key.split(':')[1])] if key.startswith('expert:') else key
        shown_macs = '—' if math.isnan(macs) else f'{macs / 1e6:.1f}'  # the oracle has no cost of its own
        lines.append(f'  {label:<22}{acc:>9.2%}{shown_macs:>11}')
    lines.append('  share routed: ' + ', '.join(f'{n} {s:.0%}' for n, s in zip(names, report['share'])))
    return '\n'.join(lines)

"""From checkpoints to predictions on new images: the classifier infer.py runs (the routing, one expert, or
any checkpoint alone) and the table it writes."""
import csv
import json
import os
import sys

from . import UserError
from .checkpoint import atomic_write, load_checkpoint
from .cli import checkpoint_path
from .routing import load_experts, load_selector, router_for
from .runtime import fast_inference, inference_model

FIELDS = ('path', 'prediction', 'confidence', 'expert', 'error')


def build_classifier(selector_path: str, device, amp, *, teacher=None, expert=None, route=None, thresholds=None,
                     cost_weight=None, cost='stored', batch_size: int = 256):
    """A function from (images, tag) batches to (tag, logits, expert names) per batch, in input order, and the
    checkpoint whose preprocessing it needs: one checkpoint alone (teacher), one of the selector's experts
    alone (expert), or the selector's routing, whose later experts run on batches gathered across calls."""
    if teacher:
        path = checkpoint_path(teacher)
        state = load_checkpoint(path)
        model = fast_inference(inference_model(state, path, device), device)
        return one_model(model, os.path.basename(os.path.dirname(os.path.abspath(path)))), state
    state = load_selector(selector_path)
    experts = load_experts([e['path'] for e in state['experts']], device)
    names = [e.name for e in experts]
    if expert:
        matches = [e for e in experts if expert in (e.name, e.state['arch'])]
        if not matches:
            raise UserError(f"no expert named '{expert}'; the selector's experts are {', '.join(names)}")
        return one_model(matches[0], matches[0].name), matches[0].state
    router = router_for(state, experts, inference_model(state, selector_path, device), mode=route,
                        thresholds=thresholds, cost_weight=cost_weight, cost=cost, amp=amp, where=selector_path)

    def classify(batches):
        for tag, logits, choice in router.stream(batches, batch_size):
            yield tag, logits, [names[i] for i in choice.tolist()]
    return classify, experts[0].state


def one_model(model, name: str):
    """build_classifier's function for one model that answers every image."""
    def classify(batches):
        for images, tag in batches:
            yield tag, model(images) if len(images) else None, [name] * len(images)
    return classify


def write_rows(path: str, fmt: str, rows):
    """Stream rows to standard output, or into a file that replaces path only when complete."""
    def write(f):
        if fmt == 'csv':
            writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator='\n')
            writer.writeheader()
            writer.writerows(rows)
        else:
            f.write('[')
            for i, row in enumerate(rows):
                f.write((',\n ' if i else '\n ') + json.dumps(row))
            f.write('\n]\n')
    if path == '-':
        return write(sys.stdout)
    with atomic_write(path) as f:
        write(f)

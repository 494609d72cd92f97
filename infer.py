"""Classify every image in a folder through the selector and the one student it picks.

    python infer.py my_pictures/ --selector checkpoints/selector/best.pt --out predictions.csv
"""
import argparse
import csv
import json
import os
import sys

import torch
from tqdm import tqdm

from distill import UserError
from distill.checkpoint import atomic_write, load_checkpoint
from distill.cli import add_amp_argument, amp_dtype, check_writable, main_guard, resolve_device
from distill.data import list_image_files, normalise, read_images
from distill.engine import autocast, inference_model
from distill.routing import load_experts, load_selector, normalised_costs, predict

FIELDS = ('path', 'prediction', 'confidence', 'expert', 'error')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('image_dir', help='a folder, searched recursively, or one image file')
    p.add_argument('--selector', default='checkpoints/selector/best.pt')
    p.add_argument('--expert', help='skip the selector and use this expert alone (its name or arch)')
    p.add_argument('--teacher', help='skip the selector and use this checkpoint (e.g. the teacher) alone')
    p.add_argument('--cost-weight', type=float, help='override the cost weight stored with the selector')
    p.add_argument('--out', default='predictions.csv')
    p.add_argument('--format', choices=('csv', 'json'), help='default: from --out\'s extension')
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    add_amp_argument(p)
    args = p.parse_args(argv)
    args.format = args.format or ('json' if args.out.endswith('.json') else 'csv')
    if args.batch_size < 1:
        p.error('--batch-size must be at least 1')
    return args


def build_classifier(args, device):
    """A function images -> (logits, expert names), and the checkpoint whose preprocessing it needs."""
    if args.teacher:
        state = load_checkpoint(args.teacher)
        model = inference_model(state, args.teacher, device)
        name = os.path.basename(os.path.dirname(os.path.abspath(args.teacher)))
        return lambda x: (model(x), [name] * len(x)), state
    state = load_selector(args.selector)
    experts = load_experts([e['path'] for e in state['experts']], device)
    names = [e.name for e in experts]
    if args.expert:
        matches = [e for e in experts if args.expert in (e.name, e.state['arch'])]
        if not matches:
            raise UserError(f"no expert named '{args.expert}'; the selector's experts are {', '.join(names)}")
        model = matches[0].model
        return lambda x: (model(x), [matches[0].name] * len(x)), matches[0].state
    selector = inference_model(state, args.selector, device)
    costs = normalised_costs([e.macs for e in experts])
    weight = state['cost_weight'] if args.cost_weight is None else args.cost_weight

    def classify(x):
        logits, choice = predict(selector, [e.model for e in experts], x, costs, weight)
        return logits, [names[i] for i in choice.tolist()]
    return classify, experts[0].state


def write_rows(path: str, fmt: str, rows):
    """Stream rows into a file that replaces path only when complete."""
    with atomic_write(path) as f:
        if fmt == 'csv':
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
        else:
            f.write('[')
            for i, row in enumerate(rows):
                f.write((',\n ' if i else '\n ') + json.dumps(row))
            f.write('\n]\n')


@main_guard
def main(argv=None):
    args = parse_args(argv)
    if not os.path.exists(args.image_dir):
        raise UserError(f"image folder '{args.image_dir}' does not exist; pass a folder of images")
    files = list_image_files(args.image_dir) if os.path.isdir(args.image_dir) else [args.image_dir]
    check_writable(args.out)
    if not files:
        raise UserError(f"'{args.image_dir}' holds no files; pass a folder of images")
    device = resolve_device(args.device)
    amp = amp_dtype(args.amp, device)
    classify, state = build_classifier(args, device)
    classes, size, failures = state['class_names'], state['image_size'], []

    def rows():
        with torch.inference_mode(), autocast(device, amp), tqdm(total=len(files), unit='img', disable=None) as bar:
            for start in range(0, len(files), args.batch_size):
                images, read, failed = read_images(files[start:start + args.batch_size], size)
                failures.extend(failed)
                if len(read):
                    logits, chosen = classify(normalise(images.to(device), state['mean'], state['std']))
                    confidence, label = torch.softmax(logits.float(), 1).max(1)
                    for path, c, p, e in zip(read, label.tolist(), confidence.tolist(), chosen):
                        yield {'path': path, 'prediction': classes[c], 'confidence': round(p, 4), 'expert': e,
                               'error': ''}
                for path, why in failed:
                    yield {'path': path, 'prediction': '', 'confidence': '', 'expert': '', 'error': why}
                bar.update(len(read) + len(failed))
    write_rows(args.out, args.format, rows())
    for path, why in failures:
        print(f'skipped {path}: {why}', file=sys.stderr)
    print(f'{len(files) - len(failures)} images classified, {len(failures)} unreadable -> {args.out}')


if __name__ == '__main__':
    main()

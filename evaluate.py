"""Test-set report of a trained system: accuracy, routing, compression and figures.

    python evaluate.py --selector checkpoints/selector/best.pt
Everything is rebuilt from the checkpoints: the selector names its experts, the students their teacher.
"""
import argparse
import os

import torch

from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.cli import main_guard, resolve_device
from distill.data import Loader, balanced_subset, load_dataset
from distill.engine import place, predict_logits, write_json
from distill.metrics import confusion_matrix, per_class_accuracy, share_per_class
from distill.plots import accuracy_vs_macs, confusion_matrices, per_class_bars, training_curves
from distill.report import compression_row, cost_weight_sweep, device_name, markdown, speed
from distill.routing import Expert, load_experts, normalised_costs, predict, routing_report

SWEEP = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--selector', default='checkpoints/selector/best.pt')
    p.add_argument('--teacher', help="default: the teacher named in the first expert's checkpoint")
    p.add_argument('--data-dir', help='override the data location stored in the checkpoints')
    p.add_argument('--test-subset', type=int, help='override: the first N test images, class-balanced')
    p.add_argument('--image-size', type=int, help='override the training image size')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--name', default='report', help='results/<name>.json and .md')
    p.add_argument('--results-dir', default='results')
    p.add_argument('--images-dir', default='images')
    return p.parse_args(argv)


def gather_models(args, experts, device) -> dict:
    """name -> Expert: the teacher, the experts, and each student's no-KD baseline where it exists."""
    models = {}
    teacher = args.teacher or experts[0].state.get('teacher')
    if teacher and os.path.exists(teacher):
        models['teacher'] = Expert(teacher, device, experts[0].reference())
    for e in experts:
        models[e.name] = e
        baseline = os.path.join(os.path.dirname(os.path.dirname(e.path)), f"{e.state['arch']}-nokd", 'best.pt')
        if e.state.get('alpha') and os.path.exists(baseline):
            models[f'{e.name} (no KD)'] = Expert(baseline, device, experts[0].reference())
    return models


@main_guard
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    state = load_checkpoint(args.selector)
    experts = load_experts([e['path'] for e in state['experts']], device)
    models = gather_models(args, experts, device)
    config, size = state['config'], args.image_size or state['image_size']
    test = load_dataset(config['dataset'], args.data_dir or config['data_dir'], False, size)
    test = test.select(balanced_subset(test.labels, args.test_subset or config.get('test_subset')))
    loader = Loader(test, torch.arange(len(test)), args.batch_size, state['mean'], state['std'], device)
    logits = {name: predict_logits(m.model, loader)[0] for name, m in models.items()}
    labels = test.labels.to(device)
    selector = place(model_from_checkpoint(state, args.selector), device).eval()
    scores = predict_logits(selector, loader)[0]

    macs = [e.macs for e in experts]
    best_on_val = max(range(len(experts)), key=lambda i: experts[i].state['best_val_acc'])
    routing = routing_report([logits[e.name] for e in experts], labels, scores, macs, state['selector_macs'],
                             state['cost_weight'], best=best_on_val)
    accuracy = {name: (float((logits[name].argmax(1) == labels).float().mean()), m.macs) for name, m in models.items()}
    accuracy.update({k: v for k, v in routing['rows'].items() if not k.startswith('expert:')})
    predictions = {name: out.argmax(1).cpu() for name, out in logits.items()}
    predictions['routed'] = torch.stack([predictions[e.name] for e in experts], 1).gather(
        1, routing['choice'][:, None]).squeeze(1)
    n_classes, cpu_labels = len(test.classes), test.labels

    sample = next(iter(loader))[0]
    costs = normalised_costs(macs)
    compression = {name: compression_row(m.model, m.macs, sample) for name, m in models.items()}
    routed_fn = lambda x: predict(selector, [e.model for e in experts], x, costs, state['cost_weight'])
    compression['routed'] = {**compression_row(None, accuracy['routed'][1], sample), **speed(routed_fn, sample)}
    sweep = cost_weight_sweep([logits[e.name] for e in experts], labels, scores, macs, state['selector_macs'], SWEEP)

    result = {'name': args.name, 'dataset': config['dataset'], 'test_images': len(test), 'device': device_name(device),
              'batch_size': len(sample), 'accuracy': accuracy, 'compression': compression, 'sweep': sweep,
              'share': {e.name: s for e, s in zip(experts, routing['share'])},
              'per_class': {name: per_class_accuracy(p, cpu_labels, n_classes) for name, p in predictions.items()},
              'classes': test.classes}
    os.makedirs(args.results_dir, exist_ok=True)
    write_json(os.path.join(args.results_dir, f'{args.name}.json'), result)
    table = markdown(result)
    with open(os.path.join(args.results_dir, f'{args.name}.md'), 'w') as f:
        f.write(table)

    figures = os.path.join(args.images_dir, args.name)
    runs = {name: os.path.join(os.path.dirname(m.path), 'metrics.csv') for name, m in models.items()}
    runs['selector'] = os.path.join(os.path.dirname(args.selector), 'metrics.csv')
    training_curves({k: v for k, v in runs.items() if os.path.exists(v)}, os.path.join(figures, 'training_curves.png'))
    confusion_matrices({name: confusion_matrix(predictions[name], cpu_labels, n_classes)
                        for name in [*models][:1] + [e.name for e in experts] + ['routed']},
                       test.classes, os.path.join(figures, 'confusion.png'))
    per_class_bars({name: result['per_class'][name] for name in [*models, 'routed']}, test.classes,
                   os.path.join(figures, 'per_class_accuracy.png'), 'test accuracy (%)')
    shares = dict(zip([e.name for e in experts], share_per_class(routing['choice'], cpu_labels, len(experts), n_classes)))
    per_class_bars(shares, test.classes, os.path.join(figures, 'routing_share.png'), 'images routed (%)', stacked=True)
    accuracy_vs_macs([(m, a) for _, a, m in sweep], {name: (m.macs, accuracy[name][0]) for name, m in models.items()},
                     os.path.join(figures, 'accuracy_vs_macs.png'))
    print(table)
    print(f'wrote {args.results_dir}/{args.name}.json, .md and figures in {figures}/')


if __name__ == '__main__':
    main()

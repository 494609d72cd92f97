"""Test-set report of a trained system: accuracy, routing, compression and figures.

    python evaluate.py --selector checkpoints/selector/best.pt
    python evaluate.py --selector checkpoints/seed*/selector/best.pt   # mean ± std over seeds
Everything is rebuilt from the checkpoints: the selector names its experts, the students their teacher.
"""
import argparse
import os

import torch

from distill.checkpoint import linked_path
from distill.cli import add_amp_argument, amp_dtype, check_writable, main_guard, precision_name, resolve_device
from distill.data import Loader, balanced_subset, load_dataset
from distill.engine import inference_model, predict_logits
from distill.metrics import per_class_accuracy
from distill.plots import report_figures
from distill.report import aggregate, aggregate_markdown, device_name, markdown, seeds_of, speed, write_report
from distill.routing import (COST_WEIGHTS, Expert, cost_weight_sweep, load_experts, load_selector, normalised_costs,
                            predict, routing_report)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--selector', nargs='+', default=['checkpoints/selector/best.pt'],
                   help='several selectors (runs that differ only by --seed): each is evaluated, '
                        'then every accuracy is reported as mean ± std over them')
    p.add_argument('--teacher', help="default: the teacher named in the first expert's checkpoint")
    p.add_argument('--data-dir', help='override the data location stored in the checkpoints')
    p.add_argument('--test-subset', type=int, help='override: the first N test images, class-balanced')
    p.add_argument('--image-size', type=int, help='override the training image size')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--batch-size', type=int, default=256)
    add_amp_argument(p)
    p.add_argument('--name', default='report', help='results/<name>.json and .md')
    p.add_argument('--results-dir', default='results')
    p.add_argument('--images-dir', default='images')
    return p.parse_args(argv)


def gather_models(args, experts, device) -> dict:
    """name -> Expert: the teacher, the experts, and each student's no-KD baseline where it exists."""
    models = {}
    teacher = args.teacher or (experts[0].state.get('teacher') and
                               linked_path(experts[0].state['teacher'], experts[0].path, experts[0].state))
    if teacher and os.path.exists(teacher):
        models['teacher'] = Expert(teacher, device, experts[0].reference())
    for e in experts:
        models[e.name] = e
        baseline = os.path.join(os.path.dirname(os.path.dirname(e.path)), f"{e.state['arch']}-nokd", 'best.pt')
        if e.state.get('alpha') and os.path.exists(baseline):
            models[f'{e.name} (no KD)'] = Expert(baseline, device, experts[0].reference())
    return models


def evaluate_system(args, selector_path: str, name: str, device, amp=None) -> dict:
    """One selector and its experts on the test split: results/<name>.json and .md, figures in images/<name>/."""
    state = load_selector(selector_path)
    experts = load_experts([e['path'] for e in state['experts']], device)
    models = gather_models(args, experts, device)
    config, size = state['config'], args.image_size or state['image_size']
    test = load_dataset(config['dataset'], args.data_dir or config['data_dir'], False, size)
    test = test.select(balanced_subset(test.labels, args.test_subset or config.get('test_subset')))
    loader = Loader(test, torch.arange(len(test)), args.batch_size, state['mean'], state['std'], device)
    logits = {name: predict_logits(m.model, loader, amp)[0] for name, m in models.items()}
    labels = test.labels.to(device)
    selector = inference_model(state, selector_path, device)
    scores = predict_logits(selector, loader, amp)[0]

    macs = [e.macs for e in experts]
    best_on_val = max(range(len(experts)), key=lambda i: experts[i].state['best_val_acc'])
    routing = routing_report([logits[e.name] for e in experts], labels, scores, macs, state['selector_macs'],
                             state['cost_weight'], best=best_on_val)
    accuracy = {name: (float((logits[name].argmax(1) == labels).float().mean()), m.macs) for name, m in models.items()}
    accuracy.update({k: v for k, v in routing['rows'].items() if not k.startswith('expert:')})
    predictions = {name: out.argmax(1).cpu() for name, out in logits.items()}
    predictions['routed'] = torch.stack([predictions[e.name] for e in experts], 1).gather(
        1, routing['choice'][:, None]).squeeze(1)

    sample = next(iter(loader))[0]
    costs = normalised_costs(macs)
    compression = {name: {'params': m.params, 'macs': m.macs, 'size_mb': m.weights_mb, **speed(m.model, sample, amp)}
                   for name, m in models.items()}
    routed_fn = lambda x: predict(selector, [e.model for e in experts], x, costs, state['cost_weight'])
    compression['routed'] = {'params': None, 'macs': accuracy['routed'][1], 'size_mb': None,
                             **speed(routed_fn, sample, amp)}
    sweep = cost_weight_sweep([logits[e.name] for e in experts], labels, scores, macs, state['selector_macs'],
                              COST_WEIGHTS)

    result = {'name': name, 'selector': selector_path, 'seed': config['seed'], 'dataset': config['dataset'],
              'test_images': len(test), 'device': device_name(device), 'batch_size': len(sample),
              'precision': precision_name(amp),
              'accuracy': accuracy, 'compression': compression, 'sweep': sweep,
              'share': {e.name: s for e, s in zip(experts, routing['share'])},
              'per_class': {name: per_class_accuracy(p, test.labels, len(test.classes)) for name, p in predictions.items()},
              'classes': test.classes}
    write_report(args.results_dir, name, result, markdown(result))
    runs = {name: os.path.join(os.path.dirname(m.path), 'metrics.csv') for name, m in models.items()}
    runs['selector'] = os.path.join(os.path.dirname(selector_path), 'metrics.csv')
    report_figures(os.path.join(args.images_dir, name), runs, predictions, result['per_class'], test.labels,
                   test.classes, [e.name for e in experts], routing['choice'], sweep,
                   {name: (m.macs, accuracy[name][0]) for name, m in models.items()})
    print(f'wrote {args.results_dir}/{name}.json, .md and figures in {args.images_dir}/{name}/')
    return result


@main_guard
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    amp = amp_dtype(args.amp, device)
    for folder in (args.results_dir, args.images_dir):
        check_writable(os.path.join(folder, 'report'))  # before minutes of evaluation, not after
    if len(args.selector) == 1:
        return evaluate_system(args, args.selector[0], args.name, device, amp)
    seeds = seeds_of([load_selector(path)['config'] for path in args.selector])
    results = [evaluate_system(args, path, f'{args.name}-seed{seed}', device, amp)
               for seed, path in zip(seeds, args.selector)]
    summary = aggregate(args.name, results)
    write_report(args.results_dir, args.name, summary, aggregate_markdown(summary))
    return summary


if __name__ == '__main__':
    main()

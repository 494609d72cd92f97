"""Test-set report of a trained system: accuracy, both routing modes, measured speed, compression, figures.

    python evaluate.py --selector checkpoints/selector
    python evaluate.py --selector checkpoints/seed*/selector   # mean ± std over seeds
Everything is rebuilt from the checkpoints: the selector names its experts, the students their teacher.
Every model and both routing modes are timed here, in turns, on this device.
"""
import os

import torch

from distill.checkpoint import run_dir
from distill.cli import Parser, add_device_arguments, check_writable, checkpoint_path, main_guard
from distill.data import balanced_subset, load_dataset
from distill.loaders import Loader
from distill.engine import predict_logits
from distill.metrics import per_class_accuracy, time_in_turns
from distill.plots import report_figures
from distill.report import aggregate, aggregate_markdown, markdown, measured_time, seeds_of, write_report
from distill.routing import (MODES, Expert, cascade_sweep, confidences, cost_vector, expert_correctness,
                             expert_outputs, load_experts, load_selector, router_for, routing_report, selector_inputs,
                             selector_sweep, teacher_of)
from distill.runtime import amp_dtype, device_name, inference_model, precision_name, resolve_device


def parse_args(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument('--selector', nargs='+', default=['checkpoints/selector/best.pt'],
                   help='selector checkpoint(s) or run directories; several (runs that differ only by --seed) '
                        'are each evaluated, then every accuracy is reported as mean ± std over them')
    p.add_argument('--teacher', help="the teacher to compare with (default: the one the experts name)")
    p.add_argument('--data-dir', help='where the data is now (default: as stored in the checkpoints)')
    p.add_argument('--test-subset', type=int, help='the first N test images, class-balanced (default: as the '
                                                   'selector was tested)')
    p.add_argument('--batch-size', type=int, default=256, help='batch for scoring and for timing')
    add_device_arguments(p)
    p.add_argument('--name', default='report', help='the report is written as RESULTS_DIR/<name>.json and .md')
    p.add_argument('--results-dir', default='results', help='where the report goes')
    p.add_argument('--images-dir', help='where the figures go (default: RESULTS_DIR/<name>/)')
    args = p.parse_args(argv)
    args.selector = [checkpoint_path(s) for s in args.selector]
    return args


def gather_models(args, experts, device) -> dict:
    """name -> Expert: the teacher, the experts, and each student's no-KD twin where it exists."""
    models = {}
    teacher = args.teacher or (all(e.state.get('teacher') for e in experts) and teacher_of(experts))
    if teacher and not args.teacher and not os.path.isfile(checkpoint_path(teacher)):
        print(f"note: the experts' teacher '{teacher}' is not here, so the report leaves it out; pass --teacher to "
              f"compare with it")
        teacher = None
    if teacher:
        models['teacher'] = Expert(checkpoint_path(teacher), device, experts[0].reference())
    for e in experts:
        models[e.name] = e
        twin = os.path.join(run_dir(os.path.dirname(os.path.dirname(e.path)), e.state['arch'], False), 'best.pt')
        if e.state.get('alpha') and os.path.exists(twin):
            models[f'{e.name} (no KD)'] = Expert(twin, device, experts[0].reference())
    return models


def evaluate_system(args, selector_path: str, name: str, device, amp=None) -> dict:
    """One selector and its experts on the test split: RESULTS_DIR/<name>.json and .md, and the figures."""
    state = load_selector(selector_path)
    experts = load_experts([e['path'] for e in state['experts']], device)
    models = gather_models(args, experts, device)
    config, routing = state['config'], state['routing']
    test = load_dataset(config['dataset'], args.data_dir or config['data_dir'], False, state['image_size'],
                        config.get('data_cache'))
    test = test.select(balanced_subset(test.labels, args.test_subset or config.get('test_subset'))).to(device)
    loader = Loader(test, torch.arange(len(test)), args.batch_size, state['mean'], state['std'], device)
    expert_logits, labels = expert_outputs(experts, loader, device, amp)
    logits = {e.name: out for e, out in zip(experts, expert_logits)}
    logits.update({n: predict_logits(m.model, loader, amp)[0] for n, m in models.items() if n not in logits})
    selector = inference_model(state, selector_path, device)
    with torch.inference_mode():
        scores = selector(selector_inputs(expert_logits[0])).float()

    sample = next(iter(loader))[0]
    cost = 'stored' if routing['cost'] == 'macs' else 'measure'  # timed here, whatever selectorTrain ran on
    routers = {f'routed ({mode})': router_for(state, experts, selector, mode=mode, cost='stored' if mode == 'cascade'
                                              else cost, amp=amp) for mode in MODES}
    speed = time_in_turns({**models, **routers}, sample, amp)
    for e in experts:  # this device's timings, not the stored ones
        e.cost = {'macs': e.macs, **speed[e.name]}
    costs = {kind: cost_vector([e.cost for e in experts], kind) for kind in ('time', 'macs')}
    selector_cost = {'time': 0.0, 'macs': state['selector_macs']}
    best_on_val = max(range(len(experts)), key=lambda i: experts[i].state['best_val_acc'])
    report = routing_report(expert_logits, labels, scores, costs, selector_cost, routing, config['seed'], best_on_val)
    correct = expert_correctness(expert_logits, labels).cpu()
    sweeps = {'cascade': cascade_sweep(confidences(expert_logits).cpu(), correct, costs['time']),
              'selector': selector_sweep(scores.cpu(), correct, costs['time'])}

    rows = {n: {'accuracy': float((out.argmax(1) == labels).float().mean()), 'time': speed[n]['seconds_per_image'],
                'macs': models[n].macs} for n, out in logits.items()}
    rows.update({k: v for k, v in report['rows'].items() if not k.startswith('expert:')})
    predictions = {n: out.argmax(1).cpu() for n, out in logits.items()}
    predictions['routed'] = torch.stack([predictions[e.name] for e in experts], 1).gather(
        1, report['choice'][:, None]).squeeze(1)
    result = {'name': name, 'selector': selector_path, 'seed': config['seed'], 'dataset': config['dataset'],
              'test_images': len(test), 'device': device_name(device), 'batch_size': len(sample),
              'precision': precision_name(amp), 'mode': routing['mode'], 'routing': routing, 'rows': rows,
              'accuracy': {n: (r['accuracy'], r['macs']) for n, r in rows.items()},
              'speed': speed, 'compression': {n: {'params': m.params, 'size_mb': m.weights_mb, 'macs': m.macs}
                                              for n, m in models.items()},
              'share': {mode: dict(zip([e.name for e in experts], s)) for mode, s in report['share'].items()},
              'sweeps': sweeps, 'classes': test.classes, 'gap_closed': report['gap_closed'],
              'per_class': {n: per_class_accuracy(p, test.labels.cpu(), len(test.classes))
                            for n, p in predictions.items()}}
    write_report(args.results_dir, name, result, markdown(result))
    images_dir = os.path.join(args.images_dir or args.results_dir, name)
    runs = {n: os.path.join(os.path.dirname(m.path), 'metrics.csv') for n, m in models.items()}
    runs['selector'] = os.path.join(os.path.dirname(selector_path), 'metrics.csv')
    report_figures(images_dir, runs, predictions, result['per_class'], test.labels.cpu(), test.classes,
                   [e.name for e in experts], report['choice'], sweeps,
                   {n: {**row, 'time': measured_time(result, n)} for n, row in rows.items()})
    print(f'wrote {args.results_dir}/{name}.json, .md and figures in {images_dir}/')
    return result


@main_guard
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    amp = amp_dtype(args.amp, device)
    for folder in (args.results_dir, args.images_dir or args.results_dir):
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

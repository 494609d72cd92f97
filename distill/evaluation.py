"""evaluate.py's report of one trained system on the test split: every model and both routing modes scored and
timed in turns on this device, compression, figures."""
import os

import torch

from .checkpoint import run_dir, staged_folder
from .cli import checkpoint_path
from .data import default_dataset, load_test_set
from .engine import predict_logits
from .loaders import Loader
from .metrics import in_calls, paired_lead, per_class_accuracy, time_in_turns
from .plots import report_figures
from .report import markdown, measured_time, write_report
from .routing.decisions import (MODES, answer_logits, answer_of, cascade_sweep, confidences, expert_correctness,
                                selector_inputs, selector_scores, selector_sweep)
from .routing.experts import Expert, cost_vector, load_selector, selector_experts, teacher_of
from .routing.report import routing_report
from .routing.router import router_for
from .routing.selection import expert_outputs
from .runtime import device_name, inference_model, precision_name


def gather_models(experts: list, device, teacher: str | None = None) -> dict:
    """name -> Expert: the teacher, the experts, and each student's no-KD twin where it exists."""
    models, asked = {}, teacher
    teacher = teacher or (all(e.state.get('teacher') for e in experts) and teacher_of(experts))
    if teacher and not asked and not os.path.isfile(checkpoint_path(teacher)):
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


def evaluate_system(selector_path: str, name: str, device, amp=None, *, route=None, teacher=None, data_dir=None,
                    test_subset=None, batch_size=256, timing_images=2048, results_dir='results',
                    images_dir=None) -> dict:
    """One selector and its experts on the test split: results_dir/<name>.json and .md, and the figures
    (in (images_dir or results_dir)/<name>/). route, teacher, data_dir, test_subset: as stored unless given (the
    stored test_subset applies to the stored data only); route is the mode of the routed row and the figures (both
    modes are scored and timed either way)."""
    state = load_selector(selector_path)
    experts = selector_experts(state, selector_path, device)
    models = gather_models(experts, device, teacher)
    config, routing = state['config'], {**state['routing'], **({'mode': route} if route else {})}
    # Any test/<class>/ folder of the experts' classes: the data they learned from moved, or a new test set.
    dataset = 'folder' if data_dir and default_dataset(data_dir, test_only=True) == 'folder' else config['dataset']
    test = load_test_set(dataset, data_dir or config['data_dir'], state['class_names'], state['image_size'],
                         config.get('data_cache'), test_subset or (None if data_dir else config.get('test_subset')))
    test = test.to(device)
    loader = Loader(test, torch.arange(len(test)), batch_size, state['mean'], state['std'], device)
    expert_logits, labels = expert_outputs(experts, loader, device, amp)
    logits = {e.name: out for e, out in zip(experts, expert_logits)}
    logits.update({n: predict_logits(m.model, loader, amp)[0] for n, m in models.items() if n not in logits})
    selector = inference_model(state, selector_path, device)
    with torch.inference_mode():
        scores = selector_scores(selector, selector_inputs(expert_logits[0]))

    # timed on many batches: one batch is a sample of the routing mix
    timing = loader.classes_in_turn(max(batch_size, timing_images))
    cost = 'stored' if routing['cost'] == 'macs' else 'measure'  # timed here, whatever selectorTrain ran on
    routers = {f'routed ({mode})': router_for(state, experts, selector, mode=mode, cost='stored' if mode == 'cascade'
                                              else cost, amp=amp, batch_size=min(batch_size, len(timing)))
               for mode in MODES}
    fns = {name: in_calls(fn, batch_size) for name, fn in {**models, **routers}.items()}
    fns.update({f'{name}, gathered': (lambda x, router=router: router.folder(x, batch_size))
                for name, router in routers.items()})  # as infer.py routes a folder
    rounds = 3
    speed = time_in_turns(fns, timing, amp, rounds=rounds, warmup=1)
    for e in experts:  # this device's timings, not the stored ones
        e.cost = {'macs': e.macs, **speed[e.name]}
    costs = {kind: cost_vector([e.cost for e in experts], kind) for kind in ('time', 'macs')}
    selector_cost = {'time': 0.0, 'macs': state['selector_macs']}
    best_on_val = max(range(len(experts)), key=lambda i: experts[i].state['best_val_acc'])
    report = routing_report(expert_logits, labels, scores, costs, selector_cost, routing, config['seed'], best_on_val)
    answers = answer_logits(expert_logits, answer_of(routing))  # where each expert is chosen, as routed
    correct = expert_correctness(answers, labels).cpu()
    sweeps = {'cascade': cascade_sweep(confidences(expert_logits).cpu(), correct, costs['time']),
              'selector': selector_sweep(scores.cpu(), correct, costs['time'])}

    rows = {n: {'accuracy': float((out.argmax(1) == labels).float().mean()), 'time': speed[n]['seconds_per_image'],
                'macs': models[n].macs} for n, out in logits.items()}
    rows.update({k: v for k, v in report['rows'].items() if not k.startswith('expert:')})
    predictions = {n: out.argmax(1).cpu() for n, out in logits.items()}
    predictions['routed'] = torch.stack([out.argmax(1).cpu() for out in answers], 1).gather(
        1, report['choice'][:, None]).squeeze(1)
    right = {n: p == test.labels.cpu() for n, p in predictions.items()}
    kd_gain = {n: paired_lead(right[n], right[f'{n} (no KD)']) for n in right if f'{n} (no KD)' in right}
    result = {'name': name, 'selector': selector_path, 'seed': config['seed'], 'dataset': config['dataset'],
              'data_dir': data_dir or config['data_dir'], 'test_images': len(test), 'device': device_name(device),
              'batch_size': min(batch_size, len(test)),
              'timing_images': len(timing), 'timing_rounds': rounds,
              'precision': precision_name(amp), 'mode': routing['mode'], 'mode_on_val': state['routing']['mode'],
              'mode_given': bool(route), 'routing': routing, 'rows': rows,
              'accuracy': {n: (r['accuracy'], r['macs']) for n, r in rows.items()},
              'speed': speed, 'best_single': experts[best_on_val].name,
              'compression': {n: {'params': m.params, 'size_mb': m.weights_mb, 'macs': m.macs}
                              for n, m in models.items()},
              'share': {mode: dict(zip([e.name for e in experts], s)) for mode, s in report['share'].items()},
              'sweeps': sweeps, 'classes': test.classes, 'gap_closed': report['gap_closed'], 'lead': report['lead'],
              'kd_gain': kd_gain,
              'ranking_on_val': ({'selector': state['best_val_acc'], **state['ranking_references']}
                                 if state.get('ranking_references') else {}),  # older selectors scored epochs otherwise
              'per_class': {n: per_class_accuracy(p, test.labels.cpu(), len(test.classes))
                            for n, p in predictions.items()}}
    figures_dir = os.path.join(images_dir or results_dir, name)
    runs = {n: os.path.join(os.path.dirname(m.path), 'metrics.csv') for n, m in models.items()}
    selector_run = (os.path.join(os.path.dirname(selector_path), 'metrics.csv'), state.get('ranking_references', {}))
    with staged_folder(figures_dir) as staging:  # the report and its figures replace the last ones together
        report_figures(staging, runs, predictions, result['per_class'], test.labels.cpu(), test.classes,
                       [e.name for e in experts], report['choice'], sweeps,
                       {n: {**row, 'time': measured_time(result, n)} for n, row in rows.items()}, selector_run)
        write_report(results_dir, name, result, markdown(result))
    print(f'wrote {results_dir}/{name}.json, .md and figures in {figures_dir}/')
    return result

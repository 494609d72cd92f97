"""evaluate.py's reports on the test split: of one trained system (every model and both routing modes scored and
timed in turns on this device, compression, figures), or of classifiers alone, without routing."""
import os

import torch

from . import UserError
from .checkpoint import run_dir, staged_folder
from .cli import checkpoint_path
from .data import default_dataset, load_test_set
from .engine import predict_logits
from .loaders import Loader
from .metrics import confusion_matrix, in_calls, paired_lead, per_class_accuracy, time_in_turns
from .plots import model_figures, report_figures
from .report import markdown, measured_time, models_markdown, write_report
from .routing.decisions import (MODES, answer_logits, answer_of, cascade_sweep, confidences, expert_correctness,
                                selector_inputs, selector_scores, selector_sweep)
from .routing.experts import Expert, check_experts_distinct, cost_vector, load_selector, selector_experts, teacher_of
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


def test_set_of(state: dict, data_dir=None, test_subset=None):
    """The test images for the models a checkpoint describes: their own test split (its stored --test-subset too),
    or, given data_dir, any test/<class>/ folder of their classes: the data they learned from moved, or a new set."""
    config = state['config']
    dataset = 'folder' if data_dir and default_dataset(data_dir, test_only=True) == 'folder' else config['dataset']
    return load_test_set(dataset, data_dir or config['data_dir'], state['class_names'], state['image_size'],
                         config.get('data_cache'), test_subset or (None if data_dir else config.get('test_subset')))


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
    test = test_set_of(state, data_dir, test_subset).to(device)
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


def evaluate_models(paths: list, name: str, device, amp=None, *, data_dir=None, test_subset=None, batch_size=256,
                    timing_images=2048, results_dir='results', images_dir=None) -> dict:
    """Classifiers alone (a teacher, students, any run of this repository), no routing, on one test set: each one's
    accuracy, overall and per class, its lead over the first with its paired standard error, and its time
    measured in turns on this device; results_dir/<name>.json and .md, and figures in (images_dir or
    results_dir)/<name>/."""
    models = [Expert(path, device) for path in paths]
    names = [m.name for m in models]
    for m in models:  # runs of one name (two teachers, say) are told apart by where they lie
        if names.count(m.name) > 1:
            m.name = os.path.relpath(os.path.dirname(os.path.abspath(m.path)))
    check_experts_distinct(models, 'a model')
    first = models[0]
    for m in models[1:]:
        for key, what in (('class_names', 'classes'), ('image_size', 'image size')):
            if m.state[key] != first.state[key]:
                raise UserError(f"'{m.path}' has other {what} than '{first.path}'; score together only models of one "
                                f"data set and image size (run evaluate.py once for each)")
    test = test_set_of(first.state, data_dir, test_subset).to(device)
    loaders = {m.name: Loader(test, torch.arange(len(test)), batch_size, m.state['mean'], m.state['std'], device)
               for m in models}  # each model sees the pixels normalised as it was trained
    logits = {m.name: predict_logits(m.model, loaders[m.name], amp)[0] for m in models}
    labels = test.labels.cpu()
    right = {n: (out.argmax(1).cpu() == labels) for n, out in logits.items()}
    timing = loaders[first.name].classes_in_turn(max(batch_size, timing_images))
    rounds = 3
    speed = time_in_turns({m.name: in_calls(m, batch_size) for m in models}, timing, amp, rounds=rounds, warmup=1)
    rows = {m.name: {'path': m.path, 'arch': m.state['arch'], 'accuracy': float(right[m.name].float().mean()),
                     'lead': paired_lead(right[m.name], right[first.name]), 'time': speed[m.name]['seconds_per_image'],
                     'macs': m.macs, 'params': m.params, 'size_mb': m.weights_mb} for m in models}
    predictions = {n: out.argmax(1).cpu() for n, out in logits.items()}
    result = {'name': name, 'models': [m.path for m in models], 'reference': first.name,
              'dataset': first.state['config']['dataset'], 'data_dir': data_dir or first.state['config']['data_dir'],
              'test_images': len(test), 'device': device_name(device), 'batch_size': min(batch_size, len(test)),
              'timing_images': len(timing), 'timing_rounds': rounds, 'precision': precision_name(amp), 'rows': rows,
              'speed': speed, 'classes': test.classes,
              'per_class': {n: per_class_accuracy(p, labels, len(test.classes)) for n, p in predictions.items()}}
    figures_dir = os.path.join(images_dir or results_dir, name)
    runs = {m.name: os.path.join(os.path.dirname(m.path), 'metrics.csv') for m in models}
    matrices = {n: confusion_matrix(p, labels, len(test.classes)) for n, p in predictions.items()}
    with staged_folder(figures_dir) as staging:
        model_figures(staging, runs, matrices, result['per_class'], test.classes)
        write_report(results_dir, name, result, models_markdown(result))
    print(f'wrote {results_dir}/{name}.json, .md and figures in {figures_dir}/')
    return result

"""The test-set report evaluate.py writes: accuracy, compression, markdown, and the mean ± std over runs
that differ only by --seed."""
import json
import os
import statistics

from . import UserError
from .checkpoint import atomic_write, changed_settings
from .metrics import round_ratios
from .routing.report import (answer_text, cost_weight_text, gap_closed_text, lead_text, measured_ratios,
                             points_text, ranking_verdict)


def timed_entry(result: dict, name: str) -> dict | None:
    """evaluate.py's timing of a model or a routing mode (a row of the report), where it timed one."""
    row = result['rows'][name]
    mode = row.get('mode') or (name if name in ('cascade', 'selector') else None)
    return result['speed'].get(f'routed ({mode})' if mode else name)


def measured_time(result: dict, name: str):
    """Seconds per image as timed, for a model or a routing mode; else the mix's expected time."""
    timed = timed_entry(result, name)
    return timed['seconds_per_image'] if timed else result['rows'][name].get('time', float('nan'))


def ratio_text(seconds: float, reference: float, timed: dict | None = None, timed_reference: dict | None = None) -> str:
    """'0.86x', and where both were timed in rounds, the range of the ratio over them: '0.86x (0.83-0.90)'."""
    if reference is None or seconds != seconds:
        return '—'
    per_round = round_ratios(timed or {}, timed_reference or {}) if timed is not timed_reference else []
    return f'{seconds / reference:.2f}x' + (f' ({min(per_round):.2f}-{max(per_round):.2f})' if len(per_round) > 1
                                            else '')


def markdown(result: dict) -> str:
    rows = result['rows']
    teacher = measured_time(result, 'teacher') if 'teacher' in rows else None
    best = measured_time(result, 'best single')
    timed_teacher = timed_entry(result, 'teacher') if 'teacher' in rows else None
    timed_best = result['speed'].get(result['best_single'])
    lines = [f"# {result['name']}", '',
             f"Test split: {result['test_images']} images of {data_text(result)}. Timed on {result['device']}, "
             f"{result['timing_images']} test images, the classes in turn, in calls of "
             f"{result['batch_size']}, {result.get('precision', 'float32')}; every model and routing mode in turns, "
             f"best of {result['timing_rounds']} rounds (in brackets, a ratio's range over them). {mode_text(result)}; "
             f"{answer_text(result['routing'])}."
             + val_timing_text(result['routing']), '',
             '| model or routing | test accuracy | ms / image | time vs teacher | time vs best single | MMACs / image |',
             '|---|---|---|---|---|---|']
    mode_source = '--route' if result.get('mode_given') else 'default'
    for name, row in rows.items():
        t = measured_time(result, name)
        label = f"routed ({row['mode']}, {mode_source})" if name == 'routed' else name
        timed = timed_entry(result, name)
        macs = row.get('macs', float('nan'))
        lines.append(f"| {label} | {100 * row['accuracy']:.2f}% | {'—' if t != t else f'{1000 * t:.3f}'} | "
                     f"{ratio_text(t, teacher, timed, timed_teacher)} | {ratio_text(t, best, timed, timed_best)} | "
                     f"{'—' if macs != macs else f'{macs / 1e6:.1f}'} |")
    lines += ['', 'Of the gap between the best single expert (chosen on val) and the oracle, closed on test: ' +
              gap_closed_text(result['gap_closed']) + '.']
    lines += ['', "Each mode's lead in test accuracy over the best single expert, in points ± its paired standard "
                  "error (the noise of these test images alone; a second training run moves every model more): "
                  + lead_text(result['lead']) + '.'] + teacher_verdict(result)
    if result['kd_gain']:  # the distilled students against their no-KD twins, on the same images
        lines += ['', "What distillation gained over each student's no-KD twin, in points ± its paired standard "
                  "error: " + lead_text(result['kd_gain']) + '.']
    if result.get('ranking_on_val'):
        references = {k: v for k, v in result['ranking_on_val'].items() if k != 'selector'}
        verdict = ranking_verdict(result['ranking_on_val']['selector'], references)
        lines += ['', verdict[0].upper() + verdict[1:] + '.']
    lines += ['', 'Share of images each mode sends to each expert: ' + '; '.join(
        f"{mode}: " + ', '.join(f'{n} {100 * s:.1f}%' for n, s in share.items())
        for mode, share in result['share'].items()), '', '## Compression', '',
        '| model | params (M) | weights (MB) | MMACs / image | latency, batch 1 (ms) | images/s |', '|---|---|---|---|---|---|']
    for name, row in result['compression'].items():
        speed = result['speed'][name]
        lines.append(f"| {name} | {row['params'] / 1e6:.2f} | {row['size_mb']:.1f} | {row['macs'] / 1e6:.1f} | "
                     f"{speed['latency_ms']:.2f} | {speed['images_per_s']:.0f} |")
    lines += gathered_markdown(result)
    routing = result['routing']
    lines += ['', '## Operating points on test (chosen on held-out images)', '',
              f"Cascade thresholds {routing['thresholds']} "
              f"(tuned on {' + '.join(routing.get('cascade_tuned_on', ['val']))}); selector cost weight "
              f"{cost_weight_text(routing['cost_weight'])} "
              f"(cost: {routing['cost']}).", '', '| mode | setting | accuracy | ms / image (from the mix) |',
              '|---|---|---|---|']
    for mode, points in result['sweeps'].items():
        lines += [f'| {mode} | {setting_text(setting)} | {100 * a:.2f}% | {1000 * c:.3f} |' for setting, a, c in points
                  if len(points) <= 20]
    return '\n'.join(lines) + '\n'


def models_markdown(result: dict) -> str:
    """evaluate.py --models' table: each classifier alone, against the first."""
    rows, reference = result['rows'], result['reference']
    lines = [f"# {result['name']}", '',
             f"Test split: {result['test_images']} images of {data_text(result)}. Timed on {result['device']}, "
             f"{result['timing_images']} test images, the classes in turn, in calls of {result['batch_size']}, "
             f"{result['precision']}; the models in turns, best of {result['timing_rounds']} rounds (in brackets, a "
             f"ratio's range over them). The lead over {reference} is in points ± its paired standard error (the "
             f"noise of these test images alone; a second training run moves every model more).", '',
             f'| model | test accuracy | lead over {reference} | ms / image | time vs {reference} | images/s | '
             f'latency, batch 1 (ms) | MMACs / image | params (M) | weights (MB) |', '|---' * 10 + '|']
    timed_reference = result['speed'][reference]
    for name, row in rows.items():
        timed = result['speed'][name]
        lead = '—' if name == reference else points_text(*row['lead'])
        lines.append(f"| {name} | {100 * row['accuracy']:.2f}% | {lead} | {1000 * row['time']:.3f} | "
                     f"{ratio_text(row['time'], timed_reference['seconds_per_image'], timed, timed_reference)} | "
                     f"{timed['images_per_s']:.0f} | {timed['latency_ms']:.2f} | {row['macs'] / 1e6:.1f} | "
                     f"{row['params'] / 1e6:.2f} | {row['size_mb']:.1f} |")
    lines += ['', '## Test accuracy per class', '', '| class | ' + ' | '.join(rows) + ' |', '|---' * (len(rows) + 1)
              + '|']
    for c, cls in enumerate(result['classes']):
        cells = [result['per_class'][name][c] for name in rows]
        if cells[0] is not None:  # a class with test images here: a new test set may hold only some
            lines.append(f'| {cls} | ' + ' | '.join(f'{100 * v:.1f}%' for v in cells) + ' |')
    return '\n'.join(lines) + '\n'


def data_text(result: dict) -> str:
    """Which data the test images came from: a report of data other than the experts' own says so."""
    where = result.get('data_dir')  # absent from reports written before it was recorded
    return f"`{result['dataset']}`" + (f" in `{where}`" if where else '')


def setting_text(setting) -> str:
    """A threshold, a chain's thresholds or a cost weight, to six digits (the sweep's weights run to 17)."""
    if isinstance(setting, (list, tuple)):
        return ', '.join(map(setting_text, setting))
    return f'{setting:.6g}'


def mode_text(result: dict) -> str:
    if result.get('mode_given'):
        return (f"Routing mode (--route): {result['mode']}; selectorTrain.py chose {result['mode_on_val']} on val as "
                f"the default")
    return f"Default routing mode (chosen on val): {result['mode']}"


def teacher_verdict(result: dict) -> list:
    """A line where the teacher alone is as accurate as the routing reported and no slower than it as infer.py
    runs it (gathered): there the routing does not earn its place, whatever the MACs say."""
    rows, speed = result['rows'], result['speed']
    if 'teacher' not in rows or 'routed' not in rows:
        return []
    mode = rows['routed']['mode']
    routed = speed.get(f'routed ({mode}), gathered') or speed.get(f'routed ({mode})')
    if not routed or 'teacher' not in speed or rows['teacher']['accuracy'] < rows['routed']['accuracy']:
        return []
    ratio = speed['teacher']['seconds_per_image'] / routed['seconds_per_image']
    if ratio > 1:
        return []
    return ['', f"On {result['device']} the teacher alone beats the {mode} routing: at least as accurate "
                f"({100 * rows['teacher']['accuracy']:.2f}% against {100 * rows['routed']['accuracy']:.2f}%) in "
                f"{ratio:.2f}x its time as infer.py routes a folder (infer.py --teacher with the teacher's checkpoint "
                f"runs it alone)."]


def val_timing_text(routing: dict) -> str:
    """What selectorTrain.py measured on val when it picked the default mode (absent in older selectors)."""
    if 'measured' not in routing:
        return ''
    measured = routing['measured']
    return (f" selectorTrain.py timed both on {measured['images']:,} val images on {measured['device']}, as infer.py "
            f"routes a folder in calls of {measured['batch_size']}: {measured_ratios(routing)} the time of the best "
            f"single expert alone.")


def gathered_markdown(result: dict) -> list:
    """Each routing mode per call and as infer.py routes a folder, where evaluate.py timed both."""
    speed = result['speed']
    modes = [name.removesuffix(', gathered') for name in speed if name.endswith(', gathered')]
    if not modes:
        return []
    teacher, best = speed.get('teacher'), speed[result['best_single']]
    lines = ['', '## Routing a folder, as infer.py does', '',
             "Each call's images routed on their own, or each later expert run once a full batch has been passed on "
             "to it, gathered across calls (infer.py); timed with the table above.", '',
             f"| routing | ms / image | time vs teacher | time vs best single ({result['best_single']}) |",
             '|---|---|---|---|']
    for name in [n for mode in modes for n in (mode, f'{mode}, gathered')]:
        t = speed[name]['seconds_per_image']
        vs_teacher = ratio_text(t, teacher['seconds_per_image'], speed[name], teacher) if teacher else '—'
        lines.append(f"| {name} | {1000 * t:.3f} | {vs_teacher} | "
                     f"{ratio_text(t, best['seconds_per_image'], speed[name], best)} |")
    return lines


def seeds_of(configs: list) -> list:
    """The seed of each run; refuses runs that differ in anything but the seed, or share one."""
    seeds = [c['seed'] for c in configs]
    if len(set(seeds)) < len(seeds):
        raise UserError(f'the selectors share a seed ({seeds}); pass one selector per --seed')
    differ = sorted(k for c in configs[1:] for k in changed_settings(configs[0], c, also_incidental={'seed'}))
    if differ:
        raise UserError(f"the selectors differ in {', '.join(dict.fromkeys(differ))}, not only the seed; "
                        'mean ± std is taken over runs that differ only by --seed')
    return seeds


def aggregate(name: str, results: list) -> dict:
    """Mean and sample std (n - 1) over seeds of every accuracy row all results share, and of the routing mix."""
    rows = [k for k in results[0]['accuracy'] if all(k in r['accuracy'] for r in results)]
    accuracy = {}
    for row in rows:
        accs = [r['accuracy'][row][0] for r in results]
        macs = [r['accuracy'][row][1] for r in results]
        accuracy[row] = {'mean': statistics.mean(accs), 'std': statistics.stdev(accs), 'per_seed': accs,
                         'macs': statistics.mean(macs)}
    return {'name': name, 'dataset': results[0]['dataset'], 'data_dir': results[0].get('data_dir'),
            'test_images': results[0]['test_images'],
            'seeds': [r['seed'] for r in results], 'reports': [r['name'] for r in results], 'accuracy': accuracy,
            'left_out': sorted({k for r in results for k in r['accuracy']} - set(rows)),
            'share': {e: statistics.mean(r['share'][r['mode']][e] for r in results)
                      for e in results[0]['share'][results[0]['mode']]}}


def aggregate_markdown(summary: dict) -> str:
    seeds = summary['seeds']
    lines = [f"# {summary['name']}: mean ± std over seeds {', '.join(map(str, seeds))}", '',
             f"Test split: {summary['test_images']} images of {data_text(summary)}. Std is the sample std (n - 1) "
             f"over {len(seeds)} runs that differ only by --seed (split, initialisation, augmentation); "
             f"per-seed reports: {', '.join(summary['reports'])}.", '',
             '| model or routing | test accuracy | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | MMACs / image |',
             '|---' * (len(seeds) + 3) + '|']
    for row, a in summary['accuracy'].items():
        macs = '—' if a['macs'] != a['macs'] else f"{a['macs'] / 1e6:.1f}"
        lines.append(f"| {row} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f}% | "
                     + ' | '.join(f'{100 * x:.2f}%' for x in a['per_seed']) + f' | {macs} |')
    lines += ['', 'Mean share of images routed: '
              + ', '.join(f'{n} {100 * s:.1f}%' for n, s in summary['share'].items())]
    if summary['left_out']:
        lines.append(f"Left out (not in every seed's report): {', '.join(summary['left_out'])}.")
    return '\n'.join(lines) + '\n'


def write_report(folder: str, name: str, result: dict, table: str):
    """results/<name>.json and .md, and the table on stdout. Both are written out before either replaces its
    old copy, so that a full disk leaves the old pair, not a new table beside an old one."""
    path = os.path.join(folder, name)
    with atomic_write(f'{path}.json') as json_file, atomic_write(f'{path}.md') as markdown_file:
        json.dump(result, json_file, indent=2)
        markdown_file.write(table)
        json_file.flush()
        markdown_file.flush()
    print(table)

"""What routing did: the report of both modes against their references on precomputed outputs, and the lines
selectorTrain.py, infer.py and evaluate.py print about it."""
import math

import torch

from ..metrics import paired_lead
from ..runtime import device_name
from .decisions import (MODES, RANKING_REFERENCES, answer_of, answer_logits, cascade_choice, cascade_cost, confidences,
                        expert_correctness, extra_costs, outcome, selector_choice, selector_cost)


def routing_report(expert_logits: list, labels, scores, costs_by_kind: dict, selector_costs: dict, routing: dict,
                   seed: int = 0, best: int | None = None) -> dict:
    """Accuracy and cost per image (time and MACs) of both routing modes against their references, from
    precomputed outputs. Rows: each expert alone, cascade, selector, the default mode, oracle (any expert
    right), random routing, best single expert (pass `best`, chosen on val, when reporting on test) and
    max confidence (runs every expert). Also the share of images each mode sends to each expert, and each
    mode's lead in accuracy over the best single expert with its paired standard error."""
    alone = expert_correctness(expert_logits, labels).cpu()
    correct = expert_correctness(answer_logits(expert_logits, answer_of(routing)), labels).cpu()  # as routed
    conf = confidences(expert_logits).cpu()
    n, e = correct.shape
    choices = {'cascade': cascade_choice(conf, routing['thresholds']),
               'selector': selector_choice(scores.cpu(), extra_costs(costs_by_kind[routing['cost']]),
                                           routing['cost_weight'])}
    rows = {}

    def add(name, choice, cost_fn, right=correct):
        rows[name] = {'accuracy': outcome(choice, right, torch.zeros(n))[0],
                      **{kind: cost_fn(choice, kind).double().mean().item() for kind in costs_by_kind}}
    for i in range(e):
        add(f'expert:{i}', torch.full((n,), i), lambda c, kind: costs_by_kind[kind][c], alone)
    add('cascade', choices['cascade'], lambda c, kind: cascade_cost(c, costs_by_kind[kind]))
    add('selector', choices['selector'], lambda c, kind: selector_cost(c, costs_by_kind[kind], selector_costs[kind]))
    rows['routed'] = {**rows[routing['mode']], 'mode': routing['mode']}
    rows['oracle'] = {'accuracy': alone.max(1).values.mean().item(), **{k: math.nan for k in costs_by_kind}}
    random_choice = torch.randint(0, e, (n,), generator=torch.Generator().manual_seed(seed))
    add('random', random_choice, lambda c, kind: costs_by_kind[kind][c], alone)
    best = int(alone.mean(0).argmax()) if best is None else best
    add('best single', torch.full((n,), best), lambda c, kind: costs_by_kind[kind][c], alone)
    add('max confidence', conf.argmax(1), lambda c, kind: costs_by_kind[kind].sum().expand(n), alone)
    share = {mode: (torch.bincount(c, minlength=e).float() / n).tolist() for mode, c in choices.items()}
    headroom = rows['oracle']['accuracy'] - rows['best single']['accuracy']
    gap_closed = {mode: (rows[mode]['accuracy'] - rows['best single']['accuracy']) / headroom if headroom > 0
                  else math.nan for mode in choices}
    lead = {mode: paired_lead(correct.gather(1, c[:, None]).squeeze(1), alone[:, best]) for mode, c in choices.items()}
    return {'rows': rows, 'share': share, 'choice': choices[routing['mode']], 'gap_closed': gap_closed, 'lead': lead}


def format_report(report: dict, names: list, title: str) -> str:
    lines = [title, f"  {'routing':<22}{'accuracy':>9}{'ms/img':>9}{'MMACs/img':>11}"]
    for key, row in report['rows'].items():
        label = names[int(key.split(':')[1])] if key.startswith('expert:') else key
        if key == 'routed':
            label = f"routed ({row['mode']})"
        ms = '—' if math.isnan(row.get('time', math.nan)) else f"{1000 * row['time']:.3f}"
        macs = '—' if math.isnan(row.get('macs', math.nan)) else f"{row['macs'] / 1e6:.1f}"
        lines.append(f"  {label:<22}{row['accuracy']:>9.2%}{ms:>9}{macs:>11}")
    for mode, share in report['share'].items():
        lines.append(f'  share, {mode}: ' + ', '.join(f'{n} {s:.0%}' for n, s in zip(names, share)))
    lines.append('  of the gap between the best single expert and the oracle, closed: '
                 + gap_closed_text(report['gap_closed']))
    lines.append('  lead over the best single expert, points ± paired standard error: ' + lead_text(report['lead']))
    return '\n'.join(lines)


def lead_text(lead: dict) -> str:
    """'cascade +0.22 ± 0.15, selector -0.04 ± 0.12': each mode's lead in points."""
    return ', '.join(f'{mode} {points_text(*lead_and_error)}' for mode, lead_and_error in lead.items())


def points_text(lead: float, error: float) -> str:
    return f'{100 * lead:+.2f} ± {100 * error:.2f}'


def gap_closed_text(gap_closed: dict) -> str:
    """'cascade 6%, selector -1%'; where the oracle is no better than the best single expert, says so."""
    if all(math.isnan(closed) for closed in gap_closed.values()):
        return 'no gap (no image has a right expert where the best single one is wrong)'
    return ', '.join(f'{mode} {closed:.0%}' for mode, closed in gap_closed.items())


def measured_ratios(routing: dict) -> str:
    """'cascade 0.65x (0.63-0.70), selector 0.52x (0.50-0.55)': each mode's time on val, as measure_routing timed
    it, against the reference expert alone, with its range over the timing rounds (absent in older selectors)."""
    seconds, ranges = routing['measured']['seconds_per_image'], routing['measured'].get('ratio_ranges', {})
    return ', '.join(f"{mode} {seconds[mode] / seconds['alone']:.2f}x"
                     + (f' ({ranges[mode][0]:.2f}-{ranges[mode][1]:.2f})' if mode in ranges else '') for mode in MODES)


def routing_summary(routing: dict, names: list) -> str:
    """selectorTrain.py's last word on the routing: each mode's measured time against the reference expert alone,
    whether routing pays on this device, and the default mode with its settings."""
    seconds, alone = routing['measured']['seconds_per_image'], names[routing['reference']]
    measured = (f"measured on {routing['measured']['images']:,} held-out images as infer.py routes a folder "
                f"({routing['measured']['device']}, batch {routing['measured']['batch_size']}): "
                f"{measured_ratios(routing)} the time of {alone} alone")
    if min(seconds[mode] for mode in MODES) >= seconds['alone']:
        measured += f"; routing does not pay on this device: infer.py --expert {alone} runs {alone} alone"
    cleared = 'cleared by' if routing['cleared_margin'] else 'not cleared by'
    return (f"{measured}\ndefault mode on val: {routing['mode']} (cascade thresholds {routing['thresholds']} chosen "
            f"on {' + '.join(routing['cascade_tuned_on'])}, selector cost weight "
            f"{cost_weight_text(routing['cost_weight'])}, target accuracy {routing['target_accuracy']:.2%}, {cleared} "
            f"{routing['margin_z']:g} standard errors; "
            f"{answer_text(routing)})")


def cost_weight_text(weight: float) -> str:
    """A cost weight; the ends of the selector's sweep say what they do (±1e9 alone reads as a number gone wrong)."""
    if weight <= -1e9:
        return f'{weight:g} (every image sent to the costliest expert)'
    if weight >= 1e9:
        return f'{weight:g} (every image kept by the cheapest expert)'
    return f'{weight:g}'


def answer_text(routing: dict) -> str:
    if answer_of(routing) == 'committee':
        return "an image sent on answered by the average of its expert's probabilities and the cheapest one's"
    return 'an image sent on answered by its expert alone'


def unpaid_routing_note(state: dict, mode: str, device) -> str | None:
    """A note where selectorTrain.py timed this mode, at its stored operating point on this device, at or above
    the best single expert alone; None where it paid, or was timed elsewhere or by an older selectorTrain.py."""
    routing = state['routing']
    measured = routing.get('measured')
    if not measured or measured['device'] != device_name(torch.device(device)):
        return None
    seconds, best = measured['seconds_per_image'], state['experts'][routing['reference']]['name']
    if seconds[mode] < seconds['alone']:
        return None
    return (f"note: selectorTrain.py timed {mode} routing on this device at {seconds[mode] / seconds['alone']:.2f}x "
            f"the time of {best} alone; --expert {best} runs {best} alone")


def experts_line(experts: list) -> str:
    """The experts as selectorTrain.py timed them, cheapest first, and where."""
    return ('experts, cheapest first: ' + ', '.join(
        f"{e.name} {1e3 * e.cost['seconds_per_image']:.3f} ms/img, {e.macs / 1e6:.0f} MMACs" for e in experts)
        + f" ({experts[0].cost['device']}, batch {experts[0].cost['batch_size']})")


def route_line(experts: list, correct, views: int) -> str:
    """How often each expert is right on what the selector learns from: the route images and their copies."""
    return (f'route split and {views} cropped and flipped copies ({len(correct):,} images): expert accuracy '
            + ', '.join(f'{e.name} {acc:.2%}' for e, acc in zip(experts, correct.mean(0).tolist())))


def ranking_line(references: dict) -> str:
    """What the selector's per-epoch val score (its ranking: routed accuracy averaged over its cost range) is
    to be read against."""
    if not references:
        return "the selector's val score: routed accuracy averaged over its cost range"
    return ("the selector's val score, routed accuracy averaged over its cost range, against "
            + ', '.join(f'{RANKING_REFERENCES[name]} {value:.2%}' for name, value in references.items()))


def ranking_verdict(score: float, references: dict) -> str:
    """Where the selector's best val score stands between the cheap expert's confidence (what the cascade ranks
    by, untrained) and the best possible ranking (two experts; with more there are no references)."""
    if not references:
        return f'the selector ranks val images at {score:.2%} (no reference rankings for more than two experts)'
    ahead = score - references['confidence']
    room = references['best possible'] - references['confidence']
    share = (f", {ahead / room:.0%} of the way to the best possible ranking ({references['best possible']:.2%})"
             if room > 0 else '')
    return (f"the selector ranks val images at {score:.2%}: {100 * ahead:+.2f} points from the cheap expert's "
            f"confidence ({references['confidence']:.2%}, the cascade's ranking){share}")

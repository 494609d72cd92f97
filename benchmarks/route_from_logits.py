"""Cascades tuned on val and scored on test from exported logits: routing work on a CPU with GPU-trained experts.

    python benchmarks/route_from_logits.py results/gpu-check/logits --rates results/gpu-check/fast.json \
        --chain googlenet densenet121 --chain googlenet teacher --chain googlenet densenet121 teacher
Reads OUT/<name>-logits.pt as benchmarks/export_logits.py writes them, and each model's img/s from evaluate.py's
report (each model in calls of its --batch-size, as infer.py runs) or from benchmarks/run.py's JSON
(infer.<name>.img_s: one large call on a GPU). A cascade's cost per image is its mix of those measured costs,
which is what a routed run costs where every model runs at the measured rate; evaluate.py and
benchmarks/run.py measure routed runs themselves. The threshold is chosen as selectorTrain.py chooses it
(--val-margin), against the chain's last model, on val or, as selectorTrain.py does by default, on the route
images too (--tune-on route val); test is touched once per chain.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from distill import UserError  # noqa: E402
from distill.checkpoint import load_checkpoint  # noqa: E402
from distill.cli import Parser, check_range, main_guard  # noqa: E402
from distill.routing.decisions import (ANSWERS, answer_logits, cascade_choice, cascade_cost,  # noqa: E402
                                       choose_cascade, confidences, expert_correctness, outcome)
from distill.metrics import paired_lead  # noqa: E402
from distill.routing.report import points_text  # noqa: E402


def model_rates(report: dict) -> dict:
    """{model: img/s} from evaluate.py's report or benchmarks/run.py's JSON."""
    if 'speed' in report:
        return {name: row['images_per_s'] for name, row in report['speed'].items()}
    return {key.split('.')[1]: value for key, value in report.items()
            if key.startswith('infer.') and key.endswith('.img_s') and key.count('.') == 2}


def load_parts(logits: dict, names: list, parts: list, answer: str):
    """(confidences, where each model's answer as routed is right, where each alone is right)."""
    outputs = [torch.cat([logits[n][part].float() for part in parts]) for n in names]
    labels = torch.cat([logits[names[0]]['labels'][part] for part in parts])
    return confidences(outputs), expert_correctness(answer_logits(outputs, answer), labels), expert_correctness(
        outputs, labels)


@main_guard
def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument('logits', help='folder of <name>-logits.pt files (benchmarks/export_logits.py)')
    p.add_argument('--rates', required=True,
                   help="evaluate.py's report JSON, or benchmarks/run.py's, with each model's measured img/s")
    p.add_argument('--chain', nargs='+', action='append', required=True,
                   help='models in the order the cascade runs them, cheapest first; repeat for several cascades')
    p.add_argument('--val-margin', type=float, default=1.645, help='as in selectorTrain.py')
    p.add_argument('--tune-on', nargs='+', choices=('route', 'val'), default=['val'],
                   help='the held-out images the threshold is chosen on')
    p.add_argument('--answer', choices=ANSWERS, default='committee', help='as in selectorTrain.py')
    args = p.parse_args()
    check_range('val_margin', args.val_margin, low=0)
    try:
        with open(args.rates) as f:
            report = json.load(f)
        measured = model_rates(report)
    except (OSError, ValueError, AttributeError, TypeError, KeyError) as e:  # not JSON, or not of that shape
        raise UserError(f"cannot read --rates '{args.rates}' ({e.__class__.__name__}); pass the JSON that "
                        f"evaluate.py or benchmarks/run.py --parts infer wrote") from None
    logits, rate = {}, {}
    for name in sorted({n for chain in args.chain for n in chain}):
        path = os.path.join(args.logits, f'{name}-logits.pt')
        if not os.path.exists(path) or name not in measured:
            raise UserError(f"no logits '{path}' or no img/s of '{name}' in '{args.rates}'; export it, and time "
                            f"it with evaluate.py or benchmarks/run.py, first")
        logits[name], rate[name] = load_checkpoint(path), measured[name]
    teacher = measured.get('teacher')  # evaluate.py leaves the teacher out where its weights are not there
    shown = {**rate, **({'teacher': teacher} if teacher else {})}
    print(f"costs: {', '.join(f'{n} {r:,.0f} img/s' for n, r in shown.items())} ({report.get('device')}, "
          f"{report.get('precision')}); margin {args.val_margin} standard errors\n")
    tuned = ' + '.join(args.tune_on)
    print(f'| cascade | thresholds ({tuned}) | target on {tuned} | {tuned} accuracy | test accuracy | last model alone, test | '
          'lead, points ± paired s.e. | time vs last model | time vs teacher | share per model |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for chain in args.chain:
        costs = torch.tensor([1 / rate[n] for n in chain], dtype=torch.float64)
        conf, correct, alone = load_parts(logits, chain, args.tune_on, args.answer)
        last = len(chain) - 1
        (thresholds, val_acc, _), level = choose_cascade(conf, correct, costs, alone[:, last], 0.0, args.val_margin)
        conf, correct, alone = load_parts(logits, chain, ['test'], args.answer)
        choice = cascade_choice(conf, thresholds)
        test_acc, cost = outcome(choice, correct, cascade_cost(choice, costs))
        share = torch.bincount(choice, minlength=len(chain)).float() / len(choice)
        met = ('not reached', 'reached', 'cleared by the margin')[level]
        vs_teacher = f'{cost * teacher:.2f}x' if teacher else '—'
        lead = points_text(*paired_lead(correct.gather(1, choice[:, None]).squeeze(1), alone[:, last]))
        print(f"| {' → '.join(chain)} | {thresholds} | {met} | {val_acc:.2%} | {test_acc:.2%} | "
              f"{alone[:, last].mean().item():.2%} | {lead} | {cost * rate[chain[-1]]:.2f}x | {vs_teacher} | "
              f"{', '.join(f'{n} {s:.0%}' for n, s in zip(chain, share.tolist()))} |")


if __name__ == '__main__':
    main()

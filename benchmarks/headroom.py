"""How much of the oracle's headroom a router could ever capture: the same models from two runs of one recipe.

    python benchmarks/headroom.py RUN_A/logits RUN_B/logits --pair googlenet densenet121
Two copies of one recipe that differ only in their training randomness are, image by image, equally likely
to be right, so nothing a router reads of an image says which copy will err; yet the oracle over the two
beats either. Where two copies of the better student already have most of the headroom that the pair of
students has, that headroom is mostly of this kind: out of reach of any selector, learned or not.
It also routes RUN_B's pair by which of RUN_A's copies was right: the most that correctness labels from
another training run (cross-fitted ones, say) can teach a selector, were it to learn them perfectly.
Reads <name>-logits.pt as benchmarks/export_logits.py writes them; the pair is taken from RUN_B.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from distill import UserError  # noqa: E402
from distill.checkpoint import load_checkpoint  # noqa: E402
from distill.cli import Parser, main_guard  # noqa: E402
from distill.routing.decisions import confidences, expert_correctness  # noqa: E402


def pair_row(label: str, logits: list, labels: torch.Tensor) -> dict:
    """Accuracy of each, the oracle, its headroom over the better one, how often exactly one is right, and
    max confidence (both run; the more confident answers)."""
    correct = expert_correctness(logits, labels)
    best = correct.mean(0).max().item()
    oracle = correct.max(1).values.mean().item()
    max_conf = correct.gather(1, confidences(logits).argmax(1, keepdim=True)).mean().item()
    return {'label': label, 'each': correct.mean(0).tolist(), 'oracle': oracle, 'headroom': oracle - best,
            'one_right': (correct[:, 0] != correct[:, 1]).float().mean().item(),
            'max_conf_closed': (max_conf - best) / (oracle - best) if oracle > best else float('nan')}


def other_run_routing(correct_a: torch.Tensor, correct_b: torch.Tensor) -> float:
    """Share of the pair's headroom in run B captured by sending an image to the weaker expert exactly where,
    in run A, the weaker was right and the better wrong (columns: cheap, costly; the better is run B's)."""
    better = int(correct_b.mean(0).argmax())
    weaker = 1 - better
    to_weaker = correct_a[:, weaker].bool() & ~correct_a[:, better].bool()
    routed = torch.where(to_weaker, correct_b[:, weaker], correct_b[:, better]).mean().item()
    best, oracle = correct_b[:, better].mean().item(), correct_b.max(1).values.mean().item()
    return (routed - best) / (oracle - best) if oracle > best else float('nan')


def read_logits(folder: str, name: str) -> dict:
    path = os.path.join(folder, f'{name}-logits.pt')
    if not os.path.exists(path):
        raise UserError(f"no logits '{path}'; export them with benchmarks/export_logits.py first")
    return load_checkpoint(path)


@main_guard
def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument('run_a', help='folder of <name>-logits.pt from one run')
    p.add_argument('run_b', help='the same from a second run of the same recipe and split')
    p.add_argument('--pair', nargs=2, default=['googlenet', 'densenet121'], metavar=('CHEAP', 'COSTLY'),
                   help="the two experts routed between (from RUN_B)")
    p.add_argument('--models', nargs='+', default=['googlenet', 'densenet121', 'teacher'],
                   help='models whose two runs are compared')
    args = p.parse_args()
    runs = {run: {name: read_logits(folder, name) for name in {*args.models, *args.pair}}
            for run, folder in (('A', args.run_a), ('B', args.run_b))}
    for name in sorted({*args.models, *args.pair}):
        if runs['A'][name]['split'] != runs['B'][name]['split']:
            raise UserError(f"the two runs' {name} were trained on different splits; compare runs of one split")
    print('| pair | split | accuracy of each | oracle | headroom over the better | exactly one right | '
          'max confidence (runs both): headroom closed |')
    print('|---|---|---|---|---|---|---|')
    share, other_run = {}, {}
    for part in ('val', 'test'):
        labels = runs['B'][args.pair[0]]['labels'][part]
        rows = [pair_row(f'{args.pair[0]} or {args.pair[1]}', [runs['B'][n][part].float() for n in args.pair],
                         labels)]
        rows += [pair_row(f'{name}, run A or run B', [runs[r][name][part].float() for r in 'AB'], labels)
                 for name in args.models]
        for row in rows:
            print(f"| {row['label']} | {part} | {' / '.join(f'{a:.2%}' for a in row['each'])} | {row['oracle']:.2%} | "
                  f"{100 * row['headroom']:.2f} points | {row['one_right']:.2%} | {row['max_conf_closed']:.0%} |")
        other_run[part] = other_run_routing(
            *(expert_correctness([runs[r][n][part].float() for n in args.pair], labels) for r in 'AB'))
        share[part] = {row['label'].split(',')[0]: row['headroom'] / rows[0]['headroom'] for row in rows[1:]}
    print()
    for name in args.models:
        print(f"two runs of {name} have {share['val'][name]:.0%} (val) and {share['test'][name]:.0%} (test) of the "
              f"headroom of {args.pair[0]} or {args.pair[1]}")
    print(f"routing run B's pair by which of run A's copies was right closes {other_run['val']:.0%} (val) and "
          f"{other_run['test']:.0%} (test) of that headroom: the most that labels from another run can teach")


if __name__ == '__main__':
    main()

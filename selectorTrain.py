"""Train the selector: a small CNN that predicts, per image, which expert (student) will be right.

    python selectorTrain.py --experts checkpoints/densenet121/best.pt checkpoints/googlenet/best.pt
"""
import torch

from distill import UserError
from distill.checkpoint import linked_path
from distill.cli import amp_dtype, main_guard, resolve_device, training_parser, validate_args
from distill.data import Loader, prepare_data
from distill.engine import fit, predict_logits
from distill.metrics import count_macs
from distill.routing import (COST_WEIGHTS, Expert, RoutedAccuracy, choose_cost_weight, cost_weight_sweep,
                             expert_correctness, format_report, load_experts, routing_report, selection_step)
from models import build_model


def parse_args(argv=None):
    parser = training_parser(__doc__.splitlines()[0], out='checkpoints/selector', epochs=30, lr=0.05)
    parser.add_argument('--experts', nargs='+', default=['checkpoints/densenet121/best.pt',
                                                         'checkpoints/googlenet/best.pt'])
    parser.add_argument('--include-teacher', action='store_true',
                        help="add the experts' teacher as a costly fallback expert")
    parser.add_argument('--cost-weight', type=cost_weight, default='auto',
                        help='route to argmax(P(correct) - w * MACs / max MACs); 0 is pure accuracy. auto: the '
                             'cheapest routing on val within --max-accuracy-drop of the most accurate')
    parser.add_argument('--max-accuracy-drop', type=float, default=1.0,
                        help='with --cost-weight auto: val accuracy (percentage points) to give up for compute')
    args = validate_args(parser.parse_args(argv))
    if args.max_accuracy_drop < 0:
        raise UserError(f'--max-accuracy-drop must be at least 0 (got {args.max_accuracy_drop})')
    return args


def cost_weight(text: str):
    if text == 'auto':
        return text
    weight = float(text)  # argparse turns a ValueError into a one-line usage error
    if weight < 0:
        raise ValueError(text)
    return weight


@main_guard
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    amp = amp_dtype(args.amp, device)  # the experts are scored at the precision the selector is trained at
    experts = load_experts(args.experts, device)
    if args.include_teacher:
        teacher = experts[0].state.get('teacher')
        if not teacher:
            raise UserError(f"'{args.experts[0]}' was trained without a teacher; drop --include-teacher")
        teacher = linked_path(teacher, args.experts[0], experts[0].state) or teacher
        experts.append(Expert(teacher, device, experts[0].reference()))
    data = prepare_data(args)
    reference = experts[0].state
    if data.split != reference['split'] or data.image_size != reference['image_size']:
        raise UserError(f"the experts were trained on split {reference['split']} at {reference['image_size']} px; pass "
                        f"the same --dataset, --data-dir, --subset, --val-size, --route-size, --seed and --image-size")
    if len(data.parts['route']) == 0:
        raise UserError('the experts were trained with --route-size 0: no image was held out for the selector; '
                        'retrain them with a route split (default 10%)')

    # Targets on the held-out route split, with the experts in eval mode and no augmentation.
    route_loader = Loader(data.train, data.parts['route'], 256, data.mean, data.std, device)
    # Epochs are chosen on routed val accuracy at the fixed weight, or at 0 (pure accuracy) before auto picks one.
    routed = RoutedAccuracy(experts, 0.0 if args.cost_weight == 'auto' else args.cost_weight)
    expert_logits, labels = routed.expert_outputs(route_loader, amp)
    targets = torch.zeros(len(data.train), len(experts), device=device)
    targets[data.parts['route'].to(device)] = expert_correctness(expert_logits, labels)
    print('route split: expert accuracy ' + ', '.join(
        f'{e.name} {acc:.2%}' for e, acc in zip(experts, targets[data.parts['route']].mean(0).tolist())))

    torch.manual_seed(args.seed)
    selector = build_model('selector', len(experts))
    selector_macs = count_macs(selector, data.image_size)
    extra = {'experts': [{'path': e.path, 'name': e.name, 'arch': e.state['arch'], 'macs': e.macs} for e in experts],
             'selector_macs': selector_macs, 'cost_weight': routed.cost_weight}
    macs = [e.macs for e in experts]
    val_loader = Loader(data.train, data.parts['val'], 256, data.mean, data.std, device)

    def choose_weight(best_selector):  # on val, before fit touches the test set
        if args.cost_weight != 'auto':
            return {}
        val_logits, val_labels = routed.expert_outputs(val_loader, amp)
        sweep = cost_weight_sweep(val_logits, val_labels, predict_logits(best_selector, val_loader, amp)[0], macs,
                                  selector_macs, COST_WEIGHTS)
        routed.cost_weight = choose_cost_weight(sweep, args.max_accuracy_drop / 100)
        print('val sweep (cost weight: accuracy, MMACs/img): ' + ', '.join(
            f'{w:g}: {a:.2%}, {m / 1e6:.0f}' for w, a, m in sweep) + f' -> cost weight {routed.cost_weight:g}')
        return {'cost_weight': routed.cost_weight}
    fit(args, 'selector', selector, lambda trained: selection_step(trained, targets), data, train_part='route',
        evaluate_fn=routed, num_outputs=len(experts), extra=extra, device=device, calibrate=choose_weight)

    val_logits, val_labels = routed.expert_outputs(val_loader, amp)
    scores, _ = predict_logits(selector, val_loader, amp)
    report = routing_report(val_logits, val_labels, scores, macs, selector_macs, routed.cost_weight, args.seed)
    print(format_report(report, [e.name for e in experts], 'val split, best epoch:'))


if __name__ == '__main__':
    main()

"""Train the selector and tune both routing modes on held-out images: which student answers each image.

    python selectorTrain.py --experts checkpoints/densenet121 checkpoints/googlenet
    python selectorTrain.py --experts checkpoints/densenet121 checkpoints/googlenet --include-teacher
The experts are timed on this device and ordered cheapest first. The selector reads the cheapest expert's
sorted probabilities and learns, on the held-out route split, which expert will be right; the cascade
needs no training, so it is tuned on route and val, the selector on val alone: each to reach the best single
expert's accuracy as cheaply as it can. Both are then timed on val images, routed as infer.py routes a folder,
against the best expert alone; the one that pays more becomes the default.
"""
import torch

from distill.cli import (check_range, check_spared, checkpoint_path, inherit_data_settings, main_guard,
                         train_settings, training_parser, validate_args)
from distill.data import prepare_data
from distill.engine import fit
from distill.loaders import TensorLoader, split_loader
from distill.metrics import count_macs
from distill.routing.decisions import ANSWERS, SELECTOR_INPUTS
from distill.routing.experts import (COST_KINDS, Expert, check_routable, check_route_split, cost_vector,
                                     fallback_teacher, load_experts, measure_costs)
from distill.routing.report import experts_line, ranking_line, ranking_verdict, route_line
from distill.routing.selection import RoutingTuning, routing_data, selection_step
from distill.runtime import amp_dtype, resolve_device
from models import build_model


def parse_args(argv=None):
    parser = training_parser(__doc__.splitlines()[0], out='checkpoints/selector', epochs=30, lr=0.05,
                             batch_size=256, label_smoothing=False, inherits='the first expert')
    parser.add_argument('--experts', nargs='+', default=['checkpoints/densenet121', 'checkpoints/googlenet'],
                        help='student checkpoints or run directories')
    parser.add_argument('--include-teacher', action='store_true',
                        help="add the experts' teacher as the costliest, last-resort expert")
    parser.add_argument('--teacher', help='the last-resort teacher, where it is not where the experts name it: its '
                        'checkpoint or run directory (implies --include-teacher)')
    parser.add_argument('--cost', choices=COST_KINDS, default='time',
                        help='what an expert costs: its time per image measured on this device, or its MACs')
    parser.add_argument('--max-accuracy-drop', type=float, default=0.0,
                        help="val accuracy (percentage points) below the best single expert's that routing may "
                             "give up for speed")
    parser.add_argument('--val-margin', type=float, default=1.645,
                        help="paired standard errors by which routing clears the best single expert's val accuracy "
                             "(less --max-accuracy-drop) where some operating point can, so that it holds beyond "
                             "val's noise (1.645: one-sided 95%%); else it only reaches it")
    parser.add_argument('--route-views', type=int, default=4,
                        help='cropped and flipped copies of each route image that the experts also classify, as more '
                             'examples for the selector')
    parser.add_argument('--cascade-tune-on', nargs='+', choices=('route', 'val'), default=['route', 'val'],
                        help="the held-out images the cascade's thresholds are chosen on; it trains nothing, so it "
                             "also uses the route split, which the selector learns from (docs/routing.md)")
    parser.add_argument('--disagreement-weight', type=float, default=1.0,
                        help='weight, in the loss, of route images on which the experts disagree')
    parser.add_argument('--answer', choices=ANSWERS, default='committee',
                        help='an image sent on is answered by the average of its expert and the cheapest one (both '
                             'have run), or by its expert alone')
    args = validate_args(parser.parse_args(argv))
    check_range('max_accuracy_drop', args.max_accuracy_drop, 0, 100)
    check_range('disagreement_weight', args.disagreement_weight, low=0)
    check_range('val_margin', args.val_margin, low=0)
    check_range('route_views', args.route_views, low=0)
    args.experts = [checkpoint_path(p) for p in args.experts]
    args.teacher = args.teacher and checkpoint_path(args.teacher)
    return args


@main_guard
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    amp = amp_dtype(args.amp, device)  # the experts are scored and timed at the precision they will run at
    experts = load_experts(args.experts, device)
    if args.include_teacher or args.teacher:
        experts.append(Expert(fallback_teacher(experts, args.teacher), device, experts[0].reference()))
    check_routable(experts)
    check_spared(args.out, [e.path for e in experts])
    inherit_data_settings(args, argv, experts[0].state['config'], args.experts[0])
    data = prepare_data(args).to(device)
    check_route_split(data, experts, args.data_dir)
    loaders = {part: split_loader(data, part, args.batch_size, device) for part in ('route', 'val', 'test')}
    measure_costs(experts, next(iter(loaders['val']))[0], amp)
    experts.sort(key=lambda e: e.cost['seconds_per_image' if args.cost == 'time' else 'macs'])
    print(experts_line(experts))

    outputs, correct, alone, inputs = routing_data(experts, loaders, args.route_views, device, amp, args.answer)
    print(route_line(experts, alone['route'], args.route_views))
    selector_loaders = {'train' if part == 'route' else part: TensorLoader(
        inputs[part], correct[part], args.batch_size, train=part == 'route', seed=args.seed) for part in inputs}
    torch.manual_seed(args.seed)
    model_args = {'in_features': inputs['route'].shape[1]}
    selector = build_model('selector', len(experts), **model_args)
    selector_macs = count_macs(selector, inputs['val'][:1])
    costs = {kind: cost_vector([e.cost for e in experts], kind) for kind in COST_KINDS}
    tune_on = {part: len(data.parts[part]) for part in args.cascade_tune_on}  # each split once, without route's copies
    timing_images = loaders['val'].classes_in_turn(2048)  # every class, as a folder infer.py routes
    tuning = RoutingTuning(experts, (outputs, correct, alone, inputs), selector_loaders['val'], timing_images, costs,
                           selector_macs, cost=args.cost, tune_on=tune_on, max_drop=args.max_accuracy_drop / 100,
                           val_margin=args.val_margin, answer=args.answer, batch_size=args.batch_size, amp=amp)
    print(ranking_line(tuning.references))
    extra = {'experts': [e.describe() for e in experts], 'selector_macs': selector_macs, 'model_args': model_args,
             'selector_inputs': SELECTOR_INPUTS}
    summary = fit(train_settings(args), 'selector', selector, lambda trained: selection_step(
        trained, args.disagreement_weight), data, train_part='route', loaders=selector_loaders,
        evaluate_fn=tuning.score, num_outputs=len(experts), extra=extra, device=device, calibrate=tuning)
    print(ranking_verdict(summary['best_val_acc'], tuning.references))


if __name__ == '__main__':
    main()

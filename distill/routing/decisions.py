"""The decisions of both routing modes from the experts' precomputed outputs, their sweeps over thresholds and
cost weights, and the choice of an operating point on held-out images."""
import itertools
import math

import torch
import torch.nn.functional as F

from .. import UserError

MODES = ('cascade', 'selector')
# The selector's sweep. Below 0 the weight favours costlier experts when they are about as likely right.
COST_WEIGHTS = (-0.3, -0.2, -0.1, -0.05, -0.02, 0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
SELECTOR_INPUTS = 'sorted-probabilities'  # stored in a selector's checkpoint: what it was trained to read
# The cascade's thresholds on the top softmax probability; 1 passes every image on.
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0)


# How an image sent on to a costlier expert is answered: by the average of its probabilities and the cheapest
# expert's, which has run on the image in either mode (Wang et al.'s committees; docs/routing.md), or by it alone.
ANSWERS = ('committee', 'expert')


def expert_correctness(expert_logits: list, labels: torch.Tensor) -> torch.Tensor:
    """N x E float tensor: 1 where expert e classifies image n correctly."""
    return torch.stack([(logits.argmax(1) == labels).float() for logits in expert_logits], 1)


def answer_logits(expert_logits: list, answer: str) -> list:
    """What the routing answers where each expert is chosen: the expert's own logits, or (committee) for a
    costlier expert the log of its probabilities averaged with the cheapest expert's, a valid logit."""
    if answer == 'expert':
        return expert_logits
    cheap = F.softmax(expert_logits[0].float(), 1)
    return [expert_logits[0]] + [committee_logits(cheap, logits) for logits in expert_logits[1:]]


def answer_of(routing: dict) -> str:
    """How a stored routing answers the images it sends on; selectors tuned before committees answered alone."""
    return routing.get('answer', 'expert')


def committee_logits(cheap_probabilities: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return torch.log((cheap_probabilities + F.softmax(logits.float(), 1)) / 2)


def confidences(expert_logits: list) -> torch.Tensor:
    """N x E: each expert's top softmax probability."""
    return torch.stack([F.softmax(logits.float(), 1).max(1).values for logits in expert_logits], 1)


def check_thresholds(thresholds, num_experts: int, names=None):
    if len(thresholds) != num_experts - 1:
        chain = ' -> '.join(names) if names else f'of {num_experts} experts'
        raise UserError(f'the cascade {chain} takes {num_experts - 1} threshold(s), one for each expert but the '
                        f'last; got {len(thresholds)}')
    for t in thresholds:
        if not 0 <= t <= 1:
            raise UserError(f'cascade threshold {t} is outside [0, 1]; pass a top-probability between 0 and 1')


def cascade_choice(conf: torch.Tensor, thresholds) -> torch.Tensor:
    """The expert that answers each image: the first k whose confidence reaches thresholds[k] (1 never does)."""
    n, e = conf.shape
    choice = torch.full((n,), e - 1, dtype=torch.long, device=conf.device)
    undecided = torch.ones(n, dtype=torch.bool, device=conf.device)
    for k, t in enumerate(thresholds):
        keep = undecided & (conf[:, k] >= t) if t < 1 else torch.zeros_like(undecided)
        choice[keep] = k
        undecided &= ~keep
    return choice


def cascade_cost(choice: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """Per-image cost of a cascade: every expert up to the one that answered ran."""
    return costs.cumsum(0).to(choice.device)[choice]


def extra_costs(costs: torch.Tensor) -> torch.Tensor:
    """What choosing each expert adds once the cheapest has run, as a fraction of the largest: the
    selector's cost term."""
    extra = costs.double().clone()
    extra[0] = 0
    return (extra / costs.max()).float()


def selector_inputs(logits: torch.Tensor) -> torch.Tensor:
    """What the selector reads of the cheapest expert: its softmax probabilities, largest first, i.e. how sure
    it is and the shape of its doubt. Its 1,024 penultimate features and the predicted class were tried and
    did worse or no better on 5,000 route images (docs/routing.md)."""
    return F.softmax(logits.float(), 1).sort(1, descending=True).values


def selector_scores(selector, inputs: torch.Tensor) -> torch.Tensor:
    """The selector's score per expert, in float32 under any autocast: in bfloat16 two experts' scores often
    round to one value and argmax then picks by position, so the choice would depend on the device's precision
    and evaluate.py's figures would not be what infer.py does."""
    with torch.autocast(inputs.device.type, enabled=False):
        return selector(inputs.float()).float()


def selector_choice(scores: torch.Tensor, extra: torch.Tensor, weight: float) -> torch.Tensor:
    return (torch.sigmoid(scores.float()) - weight * extra.to(scores.device)).argmax(1)


def selector_cost(choice: torch.Tensor, costs: torch.Tensor, selector_cost_: float = 0.0) -> torch.Tensor:
    """Per-image cost of selector routing: the cheapest expert and the selector always, plus the chosen one."""
    costs = costs.to(choice.device)
    return costs[0] + selector_cost_ + torch.where(choice > 0, costs[choice], torch.zeros_like(costs[choice]))


def outcome(choice, correct, per_image_cost) -> tuple:
    """(accuracy, mean cost per image) of a routing."""
    return correct.gather(1, choice[:, None].to(correct.device)).mean().item(), per_image_cost.double().mean().item()


def cascade_sweep(conf, correct, costs, grid=THRESHOLDS) -> list:
    """[(thresholds, accuracy, cost)] over every combination of per-stage thresholds in the grid."""
    points = []
    for thresholds in itertools.product(grid, repeat=conf.shape[1] - 1):
        choice = cascade_choice(conf, thresholds)
        points.append((list(thresholds), *outcome(choice, correct, cascade_cost(choice, costs))))
    return points


def switch_weights(scores, costs, count: int = 256) -> list:
    """Cost weights at which the selector's choices change, spread evenly over the images (at most count, each
    side of its switch), with the fixed grid and both ends: every image on the costliest expert (very negative)
    and on the cheapest (very large). Sweeping these traces the selector's whole accuracy-cost curve; a fixed
    grid of weights can step over the stretch where its cheapest good point lies."""
    extra = extra_costs(costs).to(scores.device)
    p_right = torch.sigmoid(scores.float())
    switches = ((p_right[:, 1:] - p_right[:, :1]) / extra[1:].clamp(min=1e-12)).flatten().sort().values
    steps = switches[torch.linspace(0, len(switches) - 1, min(count, len(switches))).round().long()].tolist()
    return sorted({-1e9, 1e9, *COST_WEIGHTS, *(w - 1e-7 for w in steps), *(w + 1e-7 for w in steps)})


def selector_sweep(scores, correct, costs, selector_cost_=0.0, weights=None) -> list:
    """[(cost weight, accuracy, cost)] of selector routing at each weight (default: switch_weights)."""
    extra = extra_costs(costs)
    weights = switch_weights(scores, costs) if weights is None else weights
    return [(w, *outcome(choice, correct, selector_cost(choice, costs, selector_cost_)))
            for w in weights for choice in [selector_choice(scores, extra, w)]]


def deferral_accuracy(scores, correct, costs) -> float:
    """The selector's routed accuracy averaged over its whole cost range, from every image kept by the cheapest
    expert to every image sent to the costliest: the area under its accuracy-cost curve, per unit of cost. It
    measures how well the selector ranks images, which every operating point relies on; routed accuracy at one
    weight does not (at weight 0 a selector sends every image to the strongest expert, however it ranks them).
    A ranking no better than chance scores the straight line between the curve's two ends."""
    if len(costs) < 2 or extra_costs(costs)[1:].min() <= 0:  # nothing to trade: the routing at weight 0
        return outcome(selector_choice(scores, extra_costs(costs), 0.0), correct, torch.zeros(1))[0]
    points = sorted((cost, accuracy) for _, accuracy, cost in selector_sweep(scores, correct, costs))
    cost, accuracy = torch.tensor(points, dtype=torch.float64).unbind(1)
    return (torch.trapezoid(accuracy, cost) / (cost[-1] - cost[0])).item()


RANKING_REFERENCES = {'chance': 'a chance ranking',
                      'confidence': "the cheap expert's confidence (the cascade's, untrained)",
                      'best possible': 'the best possible ranking'}


def ranking_references(conf: torch.Tensor, correct: torch.Tensor, costs) -> dict:
    """deferral_accuracy of the rankings a selector of two experts is judged by: chance (the straight line),
    the cheapest expert's own top probability (what the cascade ranks by, with no training) and the best
    possible ranking (first the images only the costlier expert gets right). Empty for more experts, where
    the cascade is not one ranking."""
    if correct.shape[1] != 2:
        return {}
    rankings = {'chance': torch.zeros_like(correct),
                'confidence': torch.stack([torch.logit(conf[:, 0].float(), eps=1e-6), torch.zeros_like(conf[:, 0])], 1),
                'best possible': 20 * (2 * correct - 1)}  # sigmoid: 1 where right, 0 where wrong
    return {name: deferral_accuracy(scores, correct, costs) for name, scores in rankings.items()}


def choose_point(points: list, target: float, margins=None):
    """(point, how well it meets target) on held-out images: the cheapest point whose accuracy clears target by
    its margin (2); else the cheapest that reaches target (1); else the most accurate, then cheapest (0).
    selectorTrain.py calls it on val or route, so an operating point is never picked on test."""
    levels = ([(2, margins)] if margins is not None else []) + [(1, [0.0] * len(points))]
    for level, margins_ in levels:
        reaching = [p for p, m in zip(points, margins_) if p[1] - m >= target - 1e-12]
        if reaching:
            return min(reaching, key=lambda p: (p[2], -p[1])), level
    return max(points, key=lambda p: (p[1], -p[2])), 0


def paired_margin(choice, correct, reference_right: torch.Tensor, z: float) -> float:
    """z standard errors of the difference, image by image, between a routing's accuracy and the reference
    expert's (reference_right: where it alone is right): the cheapest point that only just reaches the target on
    val is, on fresh images, as often below it. One disagreement more than seen, so that a point that never
    differs from the reference is not thereby shown to be better than it."""
    routed = correct.gather(1, choice[:, None].to(correct.device)).squeeze(1)
    return z * math.sqrt((routed != reference_right.to(routed.device)).sum().item() + 1) / len(routed)


def choose_cascade(conf, correct, costs, reference_right: torch.Tensor, max_drop: float, margin_z: float) -> tuple:
    """(thresholds, accuracy, cost), level: the cascade tuned on these images to reach the reference expert's
    accuracy on them (reference_right: where it alone is right), less max_drop (choose_point)."""
    target = reference_right.float().mean().item() - max_drop
    points = cascade_sweep(conf, correct, costs)
    return choose_point(points, target, [paired_margin(cascade_choice(conf, p[0]), correct, reference_right,
                                                       margin_z) for p in points])


def choose_routing(conf, scores, correct, costs, selector_cost_: float, max_drop: float, margin_z: float = 0.0,
                   cascade_tuning: tuple | None = None, alone=None) -> dict:
    """Both modes tuned to reach the best single expert's accuracy (best on val), less max_drop, as cheaply as
    they can: cleared by margin_z paired standard errors where some point can, else only reached. correct: where
    each expert's answer as routed is right (answer_logits); alone: where each expert alone is right, which sets
    the target (default: correct). The selector is tuned on val; the cascade on cascade_tuning, (conf, correct,
    alone) of other held-out images or None for val's (it trains nothing, so it may use the images the selector
    learned from). The default mode is the one that meets the target better on val, then the cheaper (or, if
    neither reaches it, the more accurate)."""
    alone = correct if alone is None else alone
    best = int(alone.mean(0).argmax())
    target = alone[:, best].mean().item() - max_drop
    extra = extra_costs(costs)
    selector_points = selector_sweep(scores, correct, costs, selector_cost_)
    selector_margins = [paired_margin(selector_choice(scores, extra, p[0]), correct, alone[:, best], margin_z)
                        for p in selector_points]
    tune_conf, tune_correct, tune_alone = cascade_tuning or (conf, correct, alone)
    chosen = {'cascade': choose_cascade(tune_conf, tune_correct, costs, tune_alone[:, best], max_drop, margin_z),
              'selector': choose_point(selector_points, target, selector_margins)}
    if cascade_tuning is not None:  # compared with the selector on val, where the selector was tuned
        point = chosen['cascade'][0][0]
        choice = cascade_choice(conf, point)
        chosen['cascade'] = choose_point([(point, *outcome(choice, correct, cascade_cost(choice, costs)))], target,
                                         [paired_margin(choice, correct, alone[:, best], margin_z)])

    return pick_mode({'thresholds': chosen['cascade'][0][0], 'cost_weight': chosen['selector'][0][0],
                      'reference': best, 'target_accuracy': target, 'margin_z': margin_z,
                      'levels': {m: chosen[m][1] for m in MODES}, 'val': {m: chosen[m][0][1:] for m in MODES}})


def pick_mode(routing: dict, seconds: dict | None = None) -> dict:
    """routing with its default mode: the one that meets the target better on val (levels, as choose_point);
    between equals the cheaper, by seconds per image where measured (seconds: mode -> time), else by the
    modelled cost on val; if neither reaches the target, the more accurate."""
    def merit(mode):
        level, (accuracy, cost) = routing['levels'][mode], routing['val'][mode]
        return level, -(seconds[mode] if seconds else cost) if level else accuracy
    mode = max(MODES, key=merit)
    return {**routing, 'mode': mode, 'cleared_margin': routing['levels'][mode] == 2}

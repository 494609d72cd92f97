"""Routing: which expert answers each image, and running each expert only on the images that need it.

Experts are ordered cheapest first by their cost, timed on the device that runs them (or MACs). Two
modes, both tuned on held-out images (the cascade on route and val, the selector on val) and reported
side by side:
- cascade (Wang et al., "Wisdom of Committees", ICLR 2022, https://arxiv.org/abs/2012.01988): expert k
  answers where its top softmax probability reaches threshold k; the other images go on to expert k+1,
  and the last expert answers whatever is left.
- selector: the cheapest expert runs on every image; the trained selector reads its sorted softmax
  probabilities, predicts for each expert the chance that it is right, and sends the image to
  argmax P(right) - w x extra cost. An image kept by the cheapest expert costs nothing more; any other
  runs on exactly one costlier expert.
selectorTrain.py, infer.py, evaluate.py and benchmarks/run.py all use these functions. To add a routing
baseline, add its decision here and a row in routing_report.
"""
import collections
import itertools
import math
import os

import torch
import torch.nn.functional as F

from . import UserError
from .checkpoint import check_classifier, check_compatible, linked_path, load_checkpoint, model_from_checkpoint
from .engine import predict_logits
from .metrics import count_macs, count_params, in_calls, time_in_turns, weights_mb
from .runtime import autocast, device_name, fast_inference, fuse_for_inference, place, read_later

MODES = ('cascade', 'selector')
COST_KINDS = ('time', 'macs')
# The selector's sweep. Below 0 the weight favours costlier experts when they are about as likely right.
COST_WEIGHTS = (-0.3, -0.2, -0.1, -0.05, -0.02, 0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
SELECTOR_INPUTS = 'sorted-probabilities'  # stored in a selector's checkpoint: what it was trained to read
# The cascade's thresholds on the top softmax probability; 1 passes every image on.
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0)


class Expert:
    """A classifier rebuilt from its checkpoint: its model (on the device, ready to infer), its size and
    MACs, and, once measured, its time per image on this device."""

    def __init__(self, path: str, device, reference: dict | None = None):
        self.path, self.device = path, torch.device(device)
        self.state = load_checkpoint(path, map_location='cpu')
        check_classifier(self.state, path)
        if reference is not None:  # every expert must see the same data, split and pixels
            check_compatible(self.state, path, num_classes=reference['num_classes'], split=reference['split'],
                             image_size=reference['image_size'])
            if self.state['mean'] != reference['mean'] or self.state['std'] != reference['std']:
                raise UserError(f"'{path}' normalises images differently from '{reference['path']}'; "
                                f"train all experts on the same data")
        model = place(model_from_checkpoint(self.state, path), self.device)
        self.params, self.weights_mb = count_params(model), weights_mb(model)  # as trained, before folding
        self.model = fuse_for_inference(model, self.device)
        self.name = os.path.basename(os.path.dirname(os.path.abspath(path))) or self.state['arch']
        self.macs = count_macs(self.model, self.state['image_size'], self.device)
        self.cost = {'macs': self.macs}
        self.forward = fast_inference(self.model, self.device)

    def __call__(self, images):
        return self.forward(images)

    def reference(self) -> dict:
        return {'path': self.path, **{k: self.state[k] for k in ('num_classes', 'split', 'image_size', 'mean', 'std')}}

    def describe(self) -> dict:
        """What a selector checkpoint stores of this expert."""
        return {'path': self.path, 'name': self.name, 'arch': self.state['arch'], **self.cost}


def load_experts(paths, device) -> list:
    if not paths:
        raise UserError('no experts given; pass --experts CKPT [CKPT ...]')
    first = Expert(paths[0], device)
    return [first] + [Expert(p, device, first.reference()) for p in paths[1:]]


def check_experts_distinct(experts: list):
    """Each expert once, under a name of its own: files, reports and --expert know it by that name."""
    seen = {}
    for expert in experts:
        real = os.path.realpath(expert.path)
        if real in seen:
            alias = f" (as '{seen[real]}' too)" if seen[real] != expert.path else ''
            raise UserError(f"'{expert.path}' is given twice as an expert{alias}; pass each student once")
        seen[real] = expert.path
    named = {}
    for expert in experts:
        if expert.name in named:
            raise UserError(f"'{named[expert.name]}' and '{expert.path}' are both named '{expert.name}' (after their "
                            f"run directories); rename one directory, e.g. to {expert.name}-2")
        named[expert.name] = expert.path


def check_routable(experts: list):
    """Routing needs two or more different experts."""
    check_experts_distinct(experts)
    if len(experts) < 2:
        raise UserError(f"routing needs two or more experts, got only '{experts[0].path}'; pass another student "
                        f"or add --include-teacher")


def check_route_split(data, experts: list, data_dir: str):
    """The data must give the split the experts were trained on, with images held out for routing."""
    if data.split != experts[0].state['split']:
        raise UserError(f"the data at '{data_dir}' no longer gives the split the experts were trained on; "
                        f"pass the data they were trained with")
    if len(data.parts['route']) == 0:
        raise UserError('the experts were trained with --route-size 0: no image was held out for the selector; '
                        'retrain them with a route split (default 10%)')


def teacher_of(experts: list) -> str:
    """The teacher every expert was distilled from (found from where the experts lie now)."""
    named = {e.state.get('teacher') and os.path.abspath(linked_path(e.state['teacher'], e.path, e.state)
                                                          or e.state['teacher']) for e in experts}
    if None in named or '' in named:
        no_teacher = next(e.path for e in experts if not e.state.get('teacher'))
        raise UserError(f"'{no_teacher}' was trained without a teacher, so there is no teacher to fall back to; "
                        f"drop --include-teacher or pass distilled students")
    if len(named) > 1:
        raise UserError(f"the experts were distilled from different teachers ({', '.join(sorted(named))}); "
                        f"drop --include-teacher or pass students of one teacher")
    return os.path.relpath(named.pop())


def load_selector(path: str) -> dict:
    """A selector checkpoint, with its experts' paths found from where it lies now; anything else is
    refused in one line."""
    state = load_checkpoint(path, map_location='cpu')
    if 'experts' not in state:
        raise UserError(f"'{path}' is a {state.get('arch', 'model')} checkpoint, not a selector; pass the "
                        "best.pt that selectorTrain.py wrote (default checkpoints/selector/best.pt)")
    if 'routing' not in state and 'optimizer' in state:  # routing is chosen after training, into best.pt only
        raise UserError(f"'{path}' is the selector's training state, for --resume; pass the best.pt beside it, or "
                        f"the run directory")
    if 'routing' not in state or state.get('selector_inputs') != SELECTOR_INPUTS:
        raise UserError(f"'{path}' was written by an older version of selectorTrain.py; retrain the selector")
    for expert in state['experts']:
        found = linked_path(expert['path'], path, state)
        if found is None:
            raise UserError(f"selector '{path}' routes to '{expert['path']}', which is neither where it "
                            f"lay beside the selector nor here; move run directories together, or retrain the selector")
        expert['path'] = found
    return state


# ---------------------------------------------------------------- costs

def measure_costs(experts: list, images: torch.Tensor, amp=None):
    """Time every expert on this device at this batch, stored with the device's name so that a cost is never
    reused on another device without saying so."""
    timings = time_in_turns({e: e for e in experts}, images, amp)
    for expert in experts:
        expert.cost = {'macs': expert.macs, **timings[expert], 'device': device_name(images.device)}


def cost_vector(experts_meta: list, kind: str) -> torch.Tensor:
    """Per-image cost of each expert: seconds on the measured device ('time') or MACs."""
    if kind not in COST_KINDS:
        raise UserError(f"unknown cost '{kind}'; choose one of {', '.join(COST_KINDS)}")
    key = 'seconds_per_image' if kind == 'time' else 'macs'
    return torch.tensor([float(e[key]) for e in experts_meta], dtype=torch.float64)


def check_cost_device(experts_meta: list, kind: str, device: torch.device, where: str):
    """A timed cost is only valid on the device it was timed on."""
    if kind != 'time':
        return
    here = device_name(device)
    measured = {e.get('device') for e in experts_meta}
    if measured != {here}:
        raise UserError(f"the experts' costs in '{where}' were timed on {', '.join(sorted(map(str, measured)))}, "
                        f"not on this device ({here}); pass --cost measure to time them here, or --cost macs")


# ---------------------------------------------------------------- decisions, from precomputed outputs

def expert_correctness(expert_logits: list, labels: torch.Tensor) -> torch.Tensor:
    """N x E float tensor: 1 where expert e classifies image n correctly."""
    return torch.stack([(logits.argmax(1) == labels).float() for logits in expert_logits], 1)


def confidences(expert_logits: list) -> torch.Tensor:
    """N x E: each expert's top softmax probability."""
    return torch.stack([F.softmax(logits.float(), 1).max(1).values for logits in expert_logits], 1)


def check_thresholds(thresholds, num_experts: int):
    if len(thresholds) != num_experts - 1:
        raise UserError(f'a cascade of {num_experts} experts takes {num_experts - 1} threshold(s), got {len(thresholds)}')
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


def selector_sweep(scores, correct, costs, selector_cost_=0.0, weights=COST_WEIGHTS) -> list:
    """[(cost weight, accuracy, cost)] of selector routing at each weight."""
    extra = extra_costs(costs)
    return [(w, *outcome(choice, correct, selector_cost(choice, costs, selector_cost_)))
            for w in weights for choice in [selector_choice(scores, extra, w)]]


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


def paired_margin(choice, correct, reference: int, z: float) -> float:
    """z standard errors of the difference, image by image, between a routing's accuracy and the reference
    expert's: the cheapest point that only just reaches the target on val is, on fresh images, as often below it.
    One disagreement more than seen, so that a point that never differs from the reference is not thereby
    shown to be better than it."""
    routed = correct.gather(1, choice[:, None].to(correct.device)).squeeze(1)
    return z * math.sqrt((routed != correct[:, reference]).sum().item() + 1) / len(routed)


def choose_cascade(conf, correct, costs, reference: int, max_drop: float, margin_z: float) -> tuple:
    """(thresholds, accuracy, cost), level: the cascade tuned on these images to reach the reference expert's
    accuracy on them, less max_drop (choose_point)."""
    target = correct[:, reference].mean().item() - max_drop
    points = cascade_sweep(conf, correct, costs)
    return choose_point(points, target, [paired_margin(cascade_choice(conf, p[0]), correct, reference, margin_z)
                                         for p in points])


def choose_routing(conf, scores, correct, costs, selector_cost_: float, max_drop: float, margin_z: float = 0.0,
                   cascade_tuning: tuple | None = None) -> dict:
    """Both modes tuned to reach the best single expert's accuracy (best on val), less max_drop, as cheaply as
    they can: cleared by margin_z paired standard errors where some point can, else only reached. The selector
    is tuned on val; the cascade on cascade_tuning, (conf, correct) of other held-out images or None for val's
    (it trains nothing, so it may use the images the selector learned from). The default mode is the one that
    meets the target better on val, then the cheaper (or, if neither reaches it, the more accurate)."""
    best = int(correct.mean(0).argmax())
    target = correct[:, best].mean().item() - max_drop
    extra = extra_costs(costs)
    selector_points = selector_sweep(scores, correct, costs, selector_cost_)
    selector_margins = [paired_margin(selector_choice(scores, extra, p[0]), correct, best, margin_z)
                        for p in selector_points]
    chosen = {'cascade': choose_cascade(*(cascade_tuning or (conf, correct)), costs, best, max_drop, margin_z),
              'selector': choose_point(selector_points, target, selector_margins)}
    if cascade_tuning is not None:  # compared with the selector on val, where the selector was tuned
        point = chosen['cascade'][0][0]
        choice = cascade_choice(conf, point)
        chosen['cascade'] = choose_point([(point, *outcome(choice, correct, cascade_cost(choice, costs)))], target,
                                         [paired_margin(choice, correct, best, margin_z)])

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


def measure_routing(routing: dict, experts: list, selector, extra: torch.Tensor, images: torch.Tensor,
                    batch_size: int, amp=None) -> dict:
    """routing with both modes timed at its operating points on held-out images, as infer.py routes a folder (calls
    of batch_size, the later experts on images gathered across calls), beside the reference expert alone in the
    same turns; the default mode picked again by those times, not by the modelled cost."""
    routers = {'cascade': Router(experts, 'cascade', thresholds=routing['thresholds']),
               'selector': Router(experts, 'selector', selector=selector, extra=extra.to(images.device),
                                  cost_weight=routing['cost_weight'])}
    fns = {mode: (lambda x, router=router: router.folder(x, batch_size)) for mode, router in routers.items()}
    fns['alone'] = in_calls(experts[routing['reference']], batch_size)
    timed = time_in_turns(fns, images, amp, rounds=3, warmup=1, latency=False)
    seconds = {name: t['seconds_per_image'] for name, t in timed.items()}
    measured = {'seconds_per_image': seconds, 'device': device_name(images.device), 'batch_size': batch_size,
                'images': len(images)}
    return {**pick_mode(routing, seconds), 'measured': measured}


def measured_ratios(routing: dict) -> str:
    """'cascade 0.65x, selector 0.52x': each mode's time on val, as measure_routing timed it, against the
    reference expert alone."""
    seconds = routing['measured']['seconds_per_image']
    return ', '.join(f"{mode} {seconds[mode] / seconds['alone']:.2f}x" for mode in MODES)


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
            f"on {' + '.join(routing['cascade_tuned_on'])}, selector cost weight {routing['cost_weight']:g}, target "
            f"accuracy {routing['target_accuracy']:.2%}, {cleared} {routing['margin_z']:g} standard errors)")


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


def cascade_inputs(outputs: dict, correct: dict, sizes: dict) -> tuple:
    """(confidences, correctness) of the first sizes[part] images of each part, as choose_routing's cascade_tuning:
    the held-out images themselves, not the augmented copies that follow them in routing_data's route."""
    return tuple(torch.cat(pair).cpu() for pair in zip(*[
        (confidences([logits[:n] for logits in outputs[part][0]]), correct[part][:n]) for part, n in sizes.items()]))


def selector_inputs(logits: torch.Tensor) -> torch.Tensor:
    """What the selector reads of the cheapest expert: its softmax probabilities, largest first, i.e. how sure
    it is and the shape of its doubt. Its 1,024 penultimate features and the predicted class were tried and
    did worse or no better on 5,000 route images (docs/routing.md)."""
    return F.softmax(logits.float(), 1).sort(1, descending=True).values


@torch.inference_mode()
def expert_outputs(experts: list, batches, device, amp=None):
    """([each expert's logits], labels) over (images, labels, indices) batches, in order, as float32."""
    logits, labels = [[] for _ in experts], []
    for images, batch_labels, _ in batches:
        with autocast(device, amp):
            for k, expert in enumerate(experts):
                logits[k].append(expert(images).float())
        labels.append(batch_labels)
    return [torch.cat(out) for out in logits], torch.cat(labels)


def routing_data(experts: list, loaders: dict, route_views: int, device, amp=None):
    """For each split, ([each expert's logits], labels), the experts' correctness and the selector's inputs. The
    experts run once on each split and on route_views cropped and flipped copies of the route images, as
    more examples for the selector."""
    sources = {part: [loader] for part, loader in loaders.items()}
    sources['route'] += [loaders['route'].augmented(view) for view in range(1, route_views + 1)]
    outputs = {part: expert_outputs(experts, itertools.chain(*batches), device, amp) for part, batches in sources.items()}
    correct = {part: expert_correctness(logits, labels) for part, (logits, labels) in outputs.items()}
    return outputs, correct, {part: selector_inputs(logits[0]) for part, (logits, _) in outputs.items()}


def selection_step(selector, disagreement_weight: float = 1.0):
    """The selector's training step: binary cross-entropy on 'is expert e right', per expert, with the
    images on which the experts disagree (where the choice matters) weighted by disagreement_weight."""
    def step(inputs, correct, indices):
        scores = selector(inputs).float()
        disagree = (correct.max(1).values != correct.min(1).values).float()
        weight = 1 + (disagreement_weight - 1) * disagree
        loss = F.binary_cross_entropy_with_logits(scores, correct, reduction='none').mean(1)
        return (loss * weight).sum() / weight.sum(), None
    return step


class SelectorScore:
    """evaluate_fn for the engine on a TensorLoader of (selector inputs, expert correctness):
    (mean BCE, accuracy of selector routing at cost_weight; 0, pure predicted accuracy, until tuned)."""

    def __init__(self):
        self.extra, self.cost_weight = None, 0.0

    def __call__(self, selector, loader, amp=None):
        scores, correct = predict_logits(selector, loader, amp)
        loss = F.binary_cross_entropy_with_logits(scores, correct).item()
        extra = self.extra if self.extra is not None else torch.zeros(correct.shape[1])
        choice = selector_choice(scores, extra, self.cost_weight)
        return loss, correct.gather(1, choice[:, None]).mean().item()


# ---------------------------------------------------------------- conditional compute

class Router:
    """images -> (logits, choice): each image answered by one expert, each expert run only where needed."""

    def __init__(self, experts: list, mode: str, thresholds=None, selector=None, extra=None, cost_weight=0.0):
        if mode not in MODES:
            raise UserError(f"unknown routing mode '{mode}'; choose one of {', '.join(MODES)}")
        if mode == 'cascade':
            check_thresholds(thresholds, len(experts))
        self.experts, self.mode, self.thresholds = experts, mode, thresholds
        self.selector, self.extra, self.cost_weight = selector, extra, cost_weight

    def __call__(self, images):
        """One batch on its own: (logits, choice), as stream() answers a single batch."""
        (_, logits, choice), = self.stream([(images, None)], max(len(images), 1))
        return logits, choice

    @torch.inference_mode()
    def stream(self, batches, batch_size: int = 256):
        """(images, tag) batches -> (tag, logits, choice) per batch, in input order. Each image's answer depends
        on it alone, but a later expert runs only once batch_size images have been passed on to it, gathered
        across input batches, instead of on the few images of each batch: on a GPU a cascade's second stage
        otherwise runs a few dozen images a call. About batch_size images wait at each later expert, at most.

        The host only ever reads how many images of each batch go to each expert. On a GPU it reads them for
        one batch while the GPU runs the first expert on the next, so that it never waits on an idle GPU;
        every index stays on the device. Answers come one input batch late."""
        last = len(self.experts) - 1
        jobs, queues, unread = collections.deque(), [[] for _ in self.experts], collections.deque()

        def launch(k, images, entries):  # entries: (job, positions in its batch) whose images these are, in order
            out = self.experts[k](images).float()
            target = self._targets(k, out)  # for each image: k where its answer stands, else the next expert
            sizes = [len(positions) for _, positions in entries]
            if k == last:  # every image stays: nothing to ask the GPU
                return settle(k, images, entries, out, target, lambda: [[0] * last + [n] for n in sizes])
            experts = torch.arange(len(self.experts), device=target.device)
            counts = read_later(torch.stack([(part[:, None] == experts).sum(0) for part in target.split(sizes)]))
            unread.append((k, images, entries, out, target, counts))

        def settle(k, images, entries, out, target, counts):
            start = 0
            for (job, positions), going in zip(entries, counts()):
                rows = slice(start, start + len(positions))
                start = rows.stop
                order = torch.argsort(target[rows], stable=True)  # by the expert each goes to, in input order
                kept = order[:going[k]]
                if job['logits'] is None:
                    job['logits'] = torch.empty(len(job['choice']), out.shape[1], device=out.device)
                job['logits'].index_copy_(0, positions[kept], out[rows].index_select(0, kept))
                job['choice'].index_fill_(0, positions[kept], k)
                job['waiting'] -= going[k]
                first = going[k]
                for later in range(k + 1, len(self.experts)):
                    if going[later]:
                        mine = order[first:first + going[later]]
                        first += going[later]
                        queues[later].append((job, positions[mine], images[rows].index_select(0, mine)))

        def settle_all(keep_newest=False):
            while len(unread) > keep_newest:
                settle(*unread.popleft())

        def flush(k, at_end=False):
            if sum(len(p) for _, p, _ in queues[k]) >= (1 if at_end else batch_size):
                entries, queues[k] = queues[k], []
                launch(k, torch.cat([x for _, _, x in entries]), [(job, p) for job, p, _ in entries])

        def finished(job):
            return job['tag'], job['logits'], job['choice']
        for images, tag in batches:
            job = {'tag': tag, 'logits': None, 'choice': torch.zeros(len(images), dtype=torch.long,
                                                                     device=images.device), 'waiting': len(images)}
            jobs.append(job)
            if len(images):
                launch(0, images, [(job, torch.arange(len(images), device=images.device))])
            settle_all(keep_newest=True)  # the GPU works on this batch while the host routes the one before
            for k in range(1, len(self.experts)):
                flush(k)
            while jobs and jobs[0]['waiting'] == 0:
                yield finished(jobs.popleft())
        for k in range(1, len(self.experts)):
            settle_all()
            flush(k, at_end=True)
        settle_all()
        while jobs:
            yield finished(jobs.popleft())

    def folder(self, images: torch.Tensor, batch_size: int = 256) -> list:
        """Each call's logits, with images routed as infer.py routes a folder: in calls of batch_size, the later
        experts on images gathered across the calls."""
        calls = ((images[i:i + batch_size], None) for i in range(0, len(images), batch_size))
        return [logits for _, logits, _ in self.stream(calls, batch_size)]

    def _targets(self, k: int, out: torch.Tensor) -> torch.Tensor:
        """For expert k's outputs: k where its answer stands, else the expert each image goes to next."""
        last = len(self.experts) - 1
        if self.mode == 'selector':
            return selector_choice(self.selector(selector_inputs(out)), self.extra, self.cost_weight) if k == 0 \
                else torch.full((len(out),), k, device=out.device)
        t = self.thresholds[k] if k < last else 0.0
        sure = F.softmax(out, 1).max(1).values >= t if t < 1 else torch.zeros(len(out), dtype=torch.bool,
                                                                              device=out.device)
        return torch.where(sure, k, k + 1)


def router_for(state: dict, experts: list, selector, *, mode=None, thresholds=None, cost_weight=None, cost='stored',
               amp=None, where: str = 'selector'):
    """The Router a selector checkpoint describes, with any of its val-chosen settings overridden.

    cost: 'stored' (the experts' times as selectorTrain.py measured them: refused on another device),
    'measure' (timed again here) or 'macs'. Without a mode, a setting that belongs to one mode picks it; settings
    that do not belong to the mode are refused."""
    routing = state['routing']
    if mode is None:
        selector_settings = cost_weight is not None or cost != 'stored'
        implied = {m for m, given in (('cascade', thresholds), ('selector', selector_settings)) if given}
        if len(implied) > 1:
            raise UserError('--threshold tunes the cascade, --cost-weight and --cost the selector; pass --route to '
                            'say which mode to run')
        mode = implied.pop() if implied else routing['mode']
    if mode == 'cascade':
        if cost_weight is not None or cost != 'stored':
            raise UserError('--cost-weight and --cost tune the selector mode; the cascade uses --threshold')
        return Router(experts, 'cascade', thresholds=thresholds or routing['thresholds'])
    if thresholds:
        raise UserError('--threshold tunes the cascade; the selector mode uses --cost-weight')
    kind, metas = ('macs' if cost == 'macs' else routing['cost']), state['experts']
    if cost == 'measure' and kind == 'time':
        size = state['image_size']
        device = next(selector.parameters()).device
        measure_costs(experts, torch.zeros(256, 3, size, size, device=device).contiguous(
            memory_format=torch.channels_last), amp)
        metas = [e.cost for e in experts]
    device = next(selector.parameters()).device
    check_cost_device(metas, kind, device, where)
    return Router(experts, 'selector', selector=selector, extra=extra_costs(cost_vector(metas, kind)).to(device),
                  cost_weight=routing['cost_weight'] if cost_weight is None else cost_weight)


# ---------------------------------------------------------------- reports

def routing_report(expert_logits: list, labels, scores, costs_by_kind: dict, selector_costs: dict, routing: dict,
                   seed: int = 0, best: int | None = None) -> dict:
    """Accuracy and cost per image (time and MACs) of both routing modes against their references, from
    precomputed outputs. Rows: each expert alone, cascade, selector, the default mode, oracle (any expert
    right), random routing, best single expert (pass `best`, chosen on val, when reporting on test) and
    max confidence (runs every expert). Also the share of images each mode sends to each expert."""
    correct = expert_correctness(expert_logits, labels).cpu()
    conf = confidences(expert_logits).cpu()
    n, e = correct.shape
    choices = {'cascade': cascade_choice(conf, routing['thresholds']),
               'selector': selector_choice(scores.cpu(), extra_costs(costs_by_kind[routing['cost']]),
                                           routing['cost_weight'])}
    rows = {}

    def add(name, choice, cost_fn):
        rows[name] = {'accuracy': outcome(choice, correct, torch.zeros(n))[0],
                      **{kind: cost_fn(choice, kind).double().mean().item() for kind in costs_by_kind}}
    for i in range(e):
        add(f'expert:{i}', torch.full((n,), i), lambda c, kind: costs_by_kind[kind][c])
    add('cascade', choices['cascade'], lambda c, kind: cascade_cost(c, costs_by_kind[kind]))
    add('selector', choices['selector'], lambda c, kind: selector_cost(c, costs_by_kind[kind], selector_costs[kind]))
    rows['routed'] = {**rows[routing['mode']], 'mode': routing['mode']}
    rows['oracle'] = {'accuracy': correct.max(1).values.mean().item(), **{k: math.nan for k in costs_by_kind}}
    random_choice = torch.randint(0, e, (n,), generator=torch.Generator().manual_seed(seed))
    add('random', random_choice, lambda c, kind: costs_by_kind[kind][c])
    best = int(correct.mean(0).argmax()) if best is None else best
    add('best single', torch.full((n,), best), lambda c, kind: costs_by_kind[kind][c])
    add('max confidence', conf.argmax(1), lambda c, kind: costs_by_kind[kind].sum().expand(n))
    share = {mode: (torch.bincount(c, minlength=e).float() / n).tolist() for mode, c in choices.items()}
    headroom = rows['oracle']['accuracy'] - rows['best single']['accuracy']
    gap_closed = {mode: (rows[mode]['accuracy'] - rows['best single']['accuracy']) / headroom if headroom > 0
                  else math.nan for mode in choices}
    return {'rows': rows, 'share': share, 'choice': choices[routing['mode']], 'gap_closed': gap_closed}


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
    lines.append('  of the gap between the best single expert and the oracle, closed: ' + gap_closed_text(report['gap_closed']))
    return '\n'.join(lines)


def gap_closed_text(gap_closed: dict) -> str:
    """'cascade 6%, selector -1%'; where the oracle is no better than the best single expert, says so."""
    if all(math.isnan(closed) for closed in gap_closed.values()):
        return 'no gap (no image has a right expert where the best single one is wrong)'
    return ', '.join(f'{mode} {closed:.0%}' for mode, closed in gap_closed.items())

"""The experts routing chooses among: rebuilt from their checkpoints (or found from the selector checkpoint that
names them), checked to belong together, and timed on the device that runs them. A cost is stored with that
device's name, so that it is never reused on another without saying so."""
import math
import os

import torch

from .. import UserError
from ..checkpoint import (check_classifier, check_compatible, linked_path, load_checkpoint, model_from_checkpoint,
                          weights_digest)
from ..metrics import count_macs, count_params, time_in_turns, weights_mb
from ..runtime import device_name, fast_inference, fuse_for_inference, place, precision_name
from .decisions import SELECTOR_INPUTS

COST_KINDS = ('time', 'macs')


def _same_normalisation(a: dict, b: dict) -> bool:
    """Equal up to rounding: the same pixels summed in another order (another version of channel_stats)."""
    return all(math.isclose(x, y, rel_tol=1e-9) for key in ('mean', 'std') for x, y in zip(a[key], b[key]))


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
            if not _same_normalisation(self.state, reference):
                raise UserError(f"'{path}' normalises images differently from '{reference['path']}'; "
                                f"train all experts on the same data")
        model = place(model_from_checkpoint(self.state, path), self.device)
        self.params, self.weights_mb = count_params(model), weights_mb(model)  # as trained, before folding
        self.model = fuse_for_inference(model, self.device)
        self.name = os.path.basename(os.path.dirname(os.path.abspath(path))) or self.state['arch']
        self.weights = weights_digest(self.state['model'])
        self.macs = count_macs(self.model, self.state['image_size'], self.device)
        self.cost = {'macs': self.macs}
        self.forward = fast_inference(self.model, self.device)

    def __call__(self, images):
        return self.forward(images)

    def reference(self) -> dict:
        return {'path': self.path, **{k: self.state[k] for k in ('num_classes', 'split', 'image_size', 'mean', 'std')}}

    def describe(self) -> dict:
        """What a selector checkpoint stores of this expert."""
        return {'path': self.path, 'name': self.name, 'arch': self.state['arch'], 'weights': self.weights, **self.cost}


def load_experts(paths, device) -> list:
    if not paths:
        raise UserError('no experts given; pass --experts CKPT [CKPT ...]')
    first = Expert(paths[0], device)
    return [first] + [Expert(p, device, first.reference()) for p in paths[1:]]


def selector_experts(state: dict, selector_path: str, device) -> list:
    """The experts a selector (from load_selector) routes to, refused where one has been retrained since: its
    thresholds, cost weight and timings were chosen for the weights it was trained with."""
    experts = load_experts([e['path'] for e in state['experts']], device)
    for expert, stored in zip(experts, state['experts']):
        if stored.get('weights', expert.weights) != expert.weights:  # selectors before the digest: unchecked
            raise UserError(f"'{expert.path}' has changed since selector '{selector_path}' was tuned on it; retrain "
                            f"the selector, or restore the checkpoint it was trained with")
    return experts


def check_experts_distinct(experts: list, role: str = 'an expert'):
    """Each expert once, under a name of its own: files, reports and --expert know it by that name."""
    seen = {}
    for expert in experts:
        real = os.path.realpath(expert.path)
        if real in seen:
            alias = f" (as '{seen[real]}' too)" if seen[real] != expert.path else ''
            raise UserError(f"'{expert.path}' is given twice as {role}{alias}; pass each once")
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


def fallback_teacher(experts: list, given: str | None = None) -> str:
    """The last-resort expert: the teacher checkpoint given, else the one the experts were distilled from, which
    must then be where they name it (found from where they lie now)."""
    path = given or teacher_of(experts)
    if not os.path.isfile(path):
        raise UserError(f"the teacher '{path}' is not here; pass its checkpoint or run directory with --teacher PATH"
                        + ('' if given else ', or drop --include-teacher'))
    return path


def load_selector(path: str) -> dict:
    """A selector checkpoint, with its experts' paths found from where it lies now; anything else is
    refused in one line."""
    state = load_checkpoint(path, map_location='cpu')
    if 'experts' not in state:
        raise UserError(f"'{path}' is a {state.get('arch', 'model')} checkpoint, not a selector; pass the "
                        "best.pt that selectorTrain.py wrote (default checkpoints/selector/best.pt), or use this "
                        "model alone: infer.py --teacher PATH, evaluate.py --models PATH")
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


def measure_costs(experts: list, images: torch.Tensor, amp=None):
    """Time every expert on this device at this batch, stored with the device's name so that a cost is never
    reused on another device without saying so."""
    timings = time_in_turns({e: e for e in experts}, images, amp)
    for expert in experts:
        expert.cost = {'macs': expert.macs, **timings[expert], 'device': device_name(images.device),
                       'precision': precision_name(amp)}


def cost_vector(experts_meta: list, kind: str) -> torch.Tensor:
    """Per-image cost of each expert: seconds on the measured device ('time') or MACs."""
    if kind not in COST_KINDS:
        raise UserError(f"unknown cost '{kind}'; choose one of {', '.join(COST_KINDS)}")
    key = 'seconds_per_image' if kind == 'time' else 'macs'
    return torch.tensor([float(e[key]) for e in experts_meta], dtype=torch.float64)


AMP_FLAG = {'bfloat16': 'bf16', 'float16': 'fp16', 'float32': 'off'}  # --amp's value for each precision


def check_cost_device(experts_meta: list, kind: str, device: torch.device, where: str, amp=None):
    """A timed cost is only valid on the device, and at the precision, it was timed on."""
    if kind != 'time':
        return
    here = device_name(device)
    measured = {e.get('device') for e in experts_meta}
    if measured != {here}:
        raise UserError(f"the experts' costs in '{where}' were timed on {', '.join(sorted(map(str, measured)))}, "
                        f"not on this device ({here}); pass --cost measure to time them here, or --cost macs")
    timed_in = {e['precision'] for e in experts_meta if 'precision' in e}  # selectors before it: unchecked
    if timed_in and timed_in != {precision_name(amp)}:
        flags = ' or '.join(f'--amp {AMP_FLAG.get(p, p)}' for p in sorted(timed_in))
        raise UserError(f"the experts' costs in '{where}' were timed in {', '.join(sorted(timed_in))}, not in "
                        f"{precision_name(amp)} as here; pass --cost measure to time them at this precision, or "
                        f"{flags}")

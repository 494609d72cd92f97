"""Conditional compute: each image answered by one expert, each expert run only on the images routed to it,
as infer.py, evaluate.py, selectorTrain.py and benchmarks/run.py run a routing."""
import collections

import torch
import torch.nn.functional as F

from .. import UserError
from ..metrics import in_calls, round_ratios, time_in_turns
from ..runtime import device_name, read_later
from .decisions import (MODES, answer_of, check_thresholds, committee_logits, extra_costs, pick_mode,
                        selector_choice, selector_inputs, selector_scores)
from .experts import check_cost_device, cost_vector, measure_costs


class Router:
    """images -> (logits, choice): each image routed to one expert (answered by it, or by it and the cheapest as a
    committee), each expert run only where needed."""

    def __init__(self, experts: list, mode: str, thresholds=None, selector=None, extra=None, cost_weight=0.0,
                 answer: str = 'expert'):
        """answer: how an image sent on is answered (ANSWERS): by the expert it reaches, or by the committee of
        that expert and the cheapest one, whose probabilities travel with the image."""
        if mode not in MODES:
            raise UserError(f"unknown routing mode '{mode}'; choose one of {', '.join(MODES)}")
        if mode == 'cascade':
            check_thresholds(thresholds, len(experts))
        self.experts, self.mode, self.thresholds = experts, mode, thresholds
        self.selector, self.extra, self.cost_weight = selector, extra, cost_weight
        self.committee = answer == 'committee'

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

        def launch(k, images, entries, cheap_probs=None):
            """entries: (job, positions in its batch) whose images these are, in order; cheap_probs: the cheapest
            expert's probabilities of these images, for a committee's answer."""
            out = self.experts[k](images).float()
            target = self._targets(k, out)  # for each image: k where its answer stands, else the next expert
            if self.committee:
                cheap_probs = F.softmax(out, 1) if k == 0 else cheap_probs
                out = out if k == 0 else committee_logits(cheap_probs, out)
            sizes = [len(positions) for _, positions in entries]
            if k == last:  # every image stays: nothing to ask the GPU
                return settle(k, images, entries, out, target, lambda: [[0] * last + [n] for n in sizes], cheap_probs)
            experts = torch.arange(len(self.experts), device=target.device)
            counts = read_later(torch.stack([(part[:, None] == experts).sum(0) for part in target.split(sizes)]))
            unread.append((k, images, entries, out, target, counts, cheap_probs))

        def settle(k, images, entries, out, target, counts, cheap_probs):
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
                        queues[later].append((job, positions[mine], images[rows].index_select(0, mine),
                                              None if cheap_probs is None else cheap_probs[rows].index_select(0, mine)))

        def settle_all(keep_newest=False):
            while len(unread) > keep_newest:
                settle(*unread.popleft())

        def flush(k, at_end=False):
            if sum(len(p) for _, p, _, _ in queues[k]) >= (1 if at_end else batch_size):
                entries, queues[k] = queues[k], []
                cheap_probs = torch.cat([probs for *_, probs in entries]) if self.committee else None
                launch(k, torch.cat([x for _, _, x, _ in entries]), [(job, p) for job, p, _, _ in entries], cheap_probs)

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
            if k > 0:
                return torch.full((len(out),), k, device=out.device)
            return selector_choice(selector_scores(self.selector, selector_inputs(out)), self.extra, self.cost_weight)
        t = self.thresholds[k] if k < last else 0.0
        sure = F.softmax(out, 1).max(1).values >= t if t < 1 else torch.zeros(len(out), dtype=torch.bool,
                                                                              device=out.device)
        return torch.where(sure, k, k + 1)


def router_for(state: dict, experts: list, selector, *, mode=None, thresholds=None, cost_weight=None, cost='stored',
               amp=None, where: str = 'selector', batch_size: int = 256):
    """The Router a selector checkpoint describes, with any of its val-chosen settings overridden.

    cost: 'stored' (the experts' times as selectorTrain.py measured them: refused on another device),
    'measure' (timed again here, at the batch the routing will run at) or 'macs'. Without a mode, a setting that
    belongs to one mode picks it; settings that do not belong to the mode are refused."""
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
        if thresholds:  # checked here too, to name the experts they are for
            check_thresholds(thresholds, len(experts), [meta.get('name', '?') for meta in state['experts']])
        return Router(experts, 'cascade', thresholds=thresholds or routing['thresholds'], answer=answer_of(routing))
    if thresholds:
        raise UserError('--threshold tunes the cascade; the selector mode uses --cost-weight')
    kind, metas = ('macs' if cost == 'macs' else routing['cost']), state['experts']
    device = next(selector.parameters()).device
    if cost == 'measure' and kind == 'time':
        size = state['image_size']
        measure_costs(experts, torch.zeros(batch_size, 3, size, size, device=device).contiguous(
            memory_format=torch.channels_last), amp)
        metas = [e.cost for e in experts]
    check_cost_device(metas, kind, device, where, amp)
    return Router(experts, 'selector', selector=selector, extra=extra_costs(cost_vector(metas, kind)).to(device),
                  cost_weight=routing['cost_weight'] if cost_weight is None else cost_weight, answer=answer_of(routing))


def measure_routing(routing: dict, experts: list, selector, extra: torch.Tensor, images: torch.Tensor,
                    batch_size: int, amp=None) -> dict:
    """routing with both modes timed at its operating points on held-out images, as infer.py routes a folder (calls
    of batch_size, the later experts on images gathered across calls), beside the reference expert alone in the
    same turns; the default mode picked again by those times, not by the modelled cost."""
    routers = {'cascade': Router(experts, 'cascade', thresholds=routing['thresholds'], answer=answer_of(routing)),
               'selector': Router(experts, 'selector', selector=selector, extra=extra.to(images.device),
                                  cost_weight=routing['cost_weight'], answer=answer_of(routing))}
    fns = {mode: (lambda x, router=router: router.folder(x, batch_size)) for mode, router in routers.items()}
    fns['alone'] = in_calls(experts[routing['reference']], batch_size)
    timed = time_in_turns(fns, images, amp, rounds=3, warmup=1, latency=False)
    seconds = {name: t['seconds_per_image'] for name, t in timed.items()}
    ranges = {}
    for mode in routers:
        per_round = round_ratios(timed[mode], timed['alone'])
        ranges[mode] = [min(per_round), max(per_round)]
    measured = {'seconds_per_image': seconds, 'device': device_name(images.device), 'batch_size': batch_size,
                'images': len(images), 'ratio_ranges': ranges}
    return {**pick_mode(routing, seconds), 'measured': measured}

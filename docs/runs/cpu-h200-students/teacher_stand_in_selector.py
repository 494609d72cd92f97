"""The selector mode of the H200 teacher-as-fallback on this CPU: the selector learns from the exported logits
(GoogLeNet's sorted probabilities, and where GoogLeNet and the committee of GoogLeNet and teacher are right on the
5,000 route images; no cropped copies, which the logits lack), is tuned on val by selectorTrain.py's own code
(RoutingTuning), and is scored on test from the logits. Its routing is GoogLeNet's outputs read by the selector,
so, as in teacher_stand_in_routed.py, an untrained ResNet50 in the teacher's place times it: both modes at their
val operating points on 2,048 test images of every class, in turns with the teacher alone, best of 3 rounds.

    PYTHONPATH=. python docs/runs/cpu-h200-students/teacher_stand_in_selector.py   # about 5 minutes
"""
import tempfile
from types import SimpleNamespace

import torch

from distill.checkpoint import load_checkpoint
from distill.data import prepare_data
from distill.engine import TrainSettings, fit
from distill.loaders import TensorLoader, split_loader
from distill.metrics import in_calls, time_in_turns
from distill.routing.decisions import answer_logits, expert_correctness, extra_costs, selector_inputs
from distill.routing.experts import cost_vector, load_experts, measure_costs
from distill.routing.router import Router
from distill.routing.selection import RoutingTuning, selection_step
from distill.runtime import amp_dtype
from models import build_model
from teacher_stand_in import print_against_teacher, stand_in_teacher  # beside this script
from h200_run import require  # beside this script
require('checkpoints/h200d/googlenet/best.pt', 'results/h200d/gpu-check/logits')

LOGITS = 'results/h200d/gpu-check/logits/'
device = torch.device('cpu')
amp = amp_dtype('auto', device)
googlenet, = load_experts(['checkpoints/h200d/googlenet/best.pt'], device)
teacher = stand_in_teacher(googlenet, device)
experts = [googlenet, teacher]
data = prepare_data(SimpleNamespace(**googlenet.state['config'])).to(device)
loaders = {part: split_loader(data, part, 256, device) for part in ('route', 'val', 'test')}
measure_costs(experts, loaders['val'].classes_in_turn(256), amp)
costs = {kind: cost_vector([e.cost for e in experts], kind) for kind in ('time', 'macs')}

exported = [load_checkpoint(LOGITS + f'{name}-logits.pt') for name in ('googlenet', 'teacher')]
outputs = {part: ([e[part].float() for e in exported], exported[0]['labels'][part]) for part in loaders}
correct = {part: expert_correctness(answer_logits(logits, 'committee'), labels) for part, (logits, labels) in
           outputs.items()}
alone = {part: expert_correctness(logits, labels) for part, (logits, labels) in outputs.items()}
inputs = {part: selector_inputs(logits[0]) for part, (logits, _) in outputs.items()}
selector_loaders = {'train' if part == 'route' else part: TensorLoader(inputs[part], correct[part], 256,
                                                                       train=part == 'route') for part in inputs}
torch.manual_seed(0)
selector = build_model('selector', 2, in_features=inputs['route'].shape[1])
tuning = RoutingTuning(experts, (outputs, correct, alone, inputs), selector_loaders['val'],
                       loaders['val'].classes_in_turn(2048), costs, 0.0, cost='time',
                       tune_on={'route': len(data.parts['route']), 'val': len(data.parts['val'])}, max_drop=0.0,
                       val_margin=1.645, answer='committee', batch_size=256, amp=amp)
with tempfile.TemporaryDirectory() as folder:
    summary = fit(TrainSettings(out=folder, epochs=30, batch_size=256, lr=0.05, device='cpu'), 'selector', selector,
                  selection_step, data, train_part='route', loaders=selector_loaders, evaluate_fn=tuning.score,
                  num_outputs=2, device=device, calibrate=tuning)
routing = summary['routing']
print(f"on test, from the logits: selector {100 * summary['test_acc']:.2f}% against the teacher's "
      f"{100 * alone['test'][:, 1].mean().item():.2f}% (cost weight {routing['cost_weight']:.4g}); "
      f"cascade threshold {routing['thresholds']}")

images = loaders['test'].classes_in_turn(2048)
routers = {'cascade': Router(experts, 'cascade', thresholds=routing['thresholds'], answer='committee'),
           'selector': Router(experts, 'selector', selector=selector.eval(), extra=extra_costs(costs['time']),
                              cost_weight=routing['cost_weight'], answer='committee')}
fns = {'teacher alone': in_calls(teacher, 256)}
for mode, router in routers.items():
    fns[f'{mode}, calls of 256'] = in_calls(router, 256)
    fns[f'{mode}, gathered'] = lambda x, router=router: router.folder(x, 256)
timed = time_in_turns(fns, images, amp, rounds=3, warmup=1, latency=False)
with torch.autocast('cpu', amp):
    for mode, router in routers.items():
        print(f'{mode}: {router(images)[1].float().mean().item():.1%} of the {len(images)} test images sent on')
print_against_teacher(timed, 'teacher alone')

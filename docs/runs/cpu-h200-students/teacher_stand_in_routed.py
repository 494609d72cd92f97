"""The cascade GoogLeNet → H200 teacher on this CPU, its time measured: which images go on is GoogLeNet's own
decision (its real weights), so a routed run with an untrained ResNet50 standing in for the teacher costs
what the real one would; only the stand-in's answers are meaningless, so accuracy comes from the teacher's
exported logits (teacher_stand_in.py and route_from_logits.py). Timed as evaluate.py times a routing: 2,048
test images of every class, in calls of 256 and gathered as infer.py routes a folder, in turns with the
teacher alone, best of 3 rounds.

    PYTHONPATH=. python docs/runs/cpu-h200-students/teacher_stand_in_routed.py 0.95   # the threshold route + val chose
"""
import sys
from types import SimpleNamespace

import torch

from distill.data import prepare_data
from distill.loaders import split_loader
from distill.metrics import in_calls, time_in_turns
from distill.routing.experts import load_experts
from distill.routing.router import Router
from distill.runtime import amp_dtype
from teacher_stand_in import print_against_teacher, stand_in_teacher  # beside this script
from h200_run import require  # beside this script
require('checkpoints/h200d/googlenet/best.pt')

if len(sys.argv) != 2:
    sys.exit('usage: teacher_stand_in_routed.py THRESHOLD (the one route_from_logits.py chose, e.g. 0.95)')
threshold = float(sys.argv[1])
device = torch.device('cpu')
amp = amp_dtype('auto', device)
googlenet, = load_experts(['checkpoints/h200d/googlenet/best.pt'], device)
teacher = stand_in_teacher(googlenet, device)
data = prepare_data(SimpleNamespace(**googlenet.state['config'])).to(device)
images = split_loader(data, 'test', 256, device).classes_in_turn(2048)
router = Router([googlenet, teacher], 'cascade', thresholds=[threshold], answer='committee')
fns = {'teacher alone': in_calls(teacher, 256), 'cascade, calls of 256': in_calls(router, 256),
       'cascade, gathered': lambda x: router.folder(x, 256)}
timed = time_in_turns(fns, images, amp, rounds=3, warmup=1, latency=False)
with torch.autocast('cpu', amp):
    sent = router(images)[1].float().mean().item()
print(f'threshold {threshold}: {sent:.1%} of the {len(images)} images sent on to the teacher')
print_against_teacher(timed, 'teacher alone')

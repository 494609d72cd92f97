"""The two H200 students timed again as evaluate.py times them (bf16, calls of 256, best of 5 rounds in turns),
twice in one process: how much a measured ratio moves between repeats on this machine."""
#   PYTHONPATH=. python docs/runs/cpu-h200-students/retime_students.py   # needs checkpoints/h200d (about 5 minutes)
import torch
from distill.metrics import in_calls, time_in_turns
from distill.routing.experts import load_experts
from distill.runtime import amp_dtype, device_name
from h200_run import require  # beside this script
require('checkpoints/h200d')
device = torch.device('cpu')
amp = amp_dtype('auto', device)
experts = load_experts([f'checkpoints/h200d/{name}/best.pt' for name in ('densenet121', 'googlenet')], 'cpu')
images = torch.randn(2048, 3, 32, 32)  # one model's time does not depend on the pixels
print(device_name(device), amp)
for repeat in range(2):
    timed = time_in_turns({e.name: in_calls(e, 256) for e in experts}, images, amp, latency=False)
    densenet, googlenet = (1000 * timed[e.name]['seconds_per_image'] for e in experts)
    print(f'repeat {repeat}: DenseNet121 {densenet:.2f} ms, GoogLeNet {googlenet:.2f} ms per image, '
          f'ratio {googlenet / densenet:.3f}')

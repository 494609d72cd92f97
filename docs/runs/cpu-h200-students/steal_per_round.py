"""Each student timed round by round (bf16, calls of 256, 2,048 images, in turns, 12 rounds), with the CPU time
the hypervisor took from this VM during each timing (steal, from /proc/stat): is the timing noise stolen time?

    PYTHONPATH=. python docs/runs/cpu-h200-students/steal_per_round.py   # needs checkpoints/h200d (about 5 minutes)
"""
import time, torch
from distill.metrics import in_calls
from distill.routing.experts import load_experts
from distill.runtime import amp_dtype, autocast
from h200_run import require  # beside this script
require('checkpoints/h200d')
def stat():
    f = open('/proc/stat').readline().split()[1:]
    return [int(x) for x in f]
device = torch.device('cpu'); amp = amp_dtype('auto', device)
experts = load_experts([f'checkpoints/h200d/{n}/best.pt' for n in ('densenet121', 'googlenet')], 'cpu')
images = torch.randn(2048, 3, 32, 32)
runs = {e.name: in_calls(e, 256) for e in experts}
with torch.inference_mode(), autocast(device, amp):
    for run in runs.values(): run(images[:256])
    for r in range(12):
        row = []
        for name, run in runs.items():
            s0, t0 = stat(), time.perf_counter()
            run(images)
            t, s1 = time.perf_counter() - t0, stat()
            d = [b - a for a, b in zip(s0, s1)]
            row.append(f'{name} {1000*t/len(images):.2f} ms steal {d[7]} of {sum(d)} jiffies')
        print(f'round {r}: ' + '; '.join(row), flush=True)

"""Time per image by batch size on this CPU, for the experts of two systems (whole calls, before CpuChunks).

    python docs/runs/cpu-chunks/batch_sweep.py   # from the repository root, at commit 01cadf4
"""
import sys; sys.path.insert(0, '.')
import torch
from distill.routing.experts import Expert
from distill.runtime import amp_dtype
from distill.metrics import time_in_turns, in_calls
dev = torch.device('cpu'); amp = amp_dtype('auto', dev)
missing = [p for p in ('checkpoints/h100b', 'checkpoints/cpu16') if not __import__('os').path.isdir(p)]
if missing:  # the experts of two earlier runs, not in the repository
    sys.exit(f"error: '{missing[0]}' is not here: this script times the experts of H100 run 2 and of the 16-px CPU "
             f"run (docs/results-cpu.md says where they came from)")
for px, paths in ((32, ['checkpoints/h100b/googlenet/best.pt', 'checkpoints/h100b/densenet121/best.pt']),
                  (16, ['checkpoints/cpu16/teacher/best.pt', 'checkpoints/cpu16/googlenet/best.pt', 'checkpoints/cpu16/densenet121/best.pt'])):
    x = torch.randn(1024, 3, px, px).contiguous(memory_format=torch.channels_last)
    fns = {}
    for p in paths:
        e = Expert(p, dev)
        for b in (16, 32, 64, 128, 256):
            fns[f'{px}px {e.name} b{b}'] = in_calls(e, b)
    t = time_in_turns(fns, x, amp, rounds=3, latency=False, warmup=1)
    for k, v in t.items():
        print(k, round(1000 * v['seconds_per_image'], 3), flush=True)

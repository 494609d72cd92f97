"""Does torch.compile (inductor, frozen weights) change GoogLeNet's time relative to DenseNet121's on this CPU?
Calls of 64 images, bf16, best of 5 rounds in turns, 2048 images; eager (folded) against compiled.

    PYTHONPATH=. python docs/runs/cpu-h200-students/compile_students.py   # needs checkpoints/h200d (about 5 minutes, 80 s of it compiling)
"""
import time, torch
import torch._inductor.config as inductor_config
from distill.metrics import in_calls, time_in_turns
from distill.routing.experts import load_experts
from distill.runtime import amp_dtype, autocast, device_name
from h200_run import require  # beside this script
require('checkpoints/h200d')
inductor_config.freezing = True
device = torch.device('cpu'); amp = amp_dtype('auto', device)
experts = load_experts([f'checkpoints/h200d/{n}/best.pt' for n in ('densenet121', 'googlenet')], 'cpu')
images = torch.randn(2048, 3, 32, 32).contiguous(memory_format=torch.channels_last)
fns = {}
for e in experts:
    fns[e.name] = in_calls(e, 256)
    model = e.model
    compiled = torch.compile(model)
    t0 = time.time()
    with torch.inference_mode(), autocast(device, amp):
        compiled(images[:64]); compiled(images[:64])
    print(f'{e.name}: compiled in {time.time() - t0:.0f} s', flush=True)
    def run(x, compiled=compiled):
        return torch.cat([compiled(c) for c in x.split(64)])
    fns[e.name + '-compiled'] = run
    with torch.inference_mode(), autocast(device, amp):
        a = e.model(images[:64]).float(); b = compiled(images[:64]).float()
    print(f'{e.name}: max |compiled - eager| logit {(a - b).abs().max():.3g}, argmax agree {(a.argmax(1) == b.argmax(1)).float().mean():.3f}')
print(device_name(device), amp)
with torch.inference_mode():
    for rep in range(2):
        t = time_in_turns(fns, images, amp, latency=False)
        ms = {k: 1000 * v['seconds_per_image'] for k, v in t.items()}
        print(f'repeat {rep}: ' + ', '.join(f'{k} {v:.2f} ms' for k, v in ms.items()))
        print(f"  GoogLeNet/DenseNet121 eager {ms['googlenet'] / ms['densenet121']:.3f}, compiled "
              f"{ms['googlenet-compiled'] / ms['densenet121-compiled']:.3f}; compiled speed-up DenseNet121 "
              f"{ms['densenet121'] / ms['densenet121-compiled']:.2f}x, GoogLeNet {ms['googlenet'] / ms['googlenet-compiled']:.2f}x", flush=True)

"""Where the selector routing's time goes on this CPU, beyond its two experts: the routed folder (calls of 256,
DenseNet121 on images gathered across calls) timed in turns with GoogLeNet alone on every image and
DenseNet121 alone on exactly the images the routing sends it; 2,048 test images, every class in turn.

    PYTHONPATH=. python docs/runs/cpu-h200-students/routing_overhead.py   # needs checkpoints/h200d (about 6 minutes)
"""
import torch
from distill.data import load_dataset
from distill.loaders import normalise
from distill.metrics import in_calls, time_in_turns
from distill.routing.experts import load_experts, load_selector
from distill.routing.router import router_for
from distill.runtime import amp_dtype, device_name, inference_model
from h200_run import require  # beside this script
require('checkpoints/h200d/selector-s20/best.pt')
device = torch.device('cpu'); amp = amp_dtype('auto', device)
path = 'checkpoints/h200d/selector-s20/best.pt'
state = load_selector(path)
experts = load_experts([e['path'] for e in state['experts']], device)
router = router_for(state, experts, inference_model(state, path, device), amp=amp, mode='selector', cost='measure')
test = load_dataset('folder', 'data/cifar10-jpeg.tar.gz', False, 32, 'data/cache')
order = torch.argsort(test.labels, stable=True).view(10, -1).t().reshape(-1)[:2048]  # classes in turn
images = normalise(test.images[order], state['mean'], state['std'])
with torch.inference_mode():
    with torch.autocast('cpu', dtype=amp):
        _, choice = router(images)
sent = images[choice == 1].clone()
print(device_name(device), amp, f'{[e.name for e in experts]}; {len(sent)} of {len(images)} sent on ({len(sent) / len(images):.1%})')
fns = {'routed': lambda x: router.folder(x, 256), 'googlenet-all': in_calls(experts[0], 256),
       'densenet-sent': lambda x: in_calls(experts[1], 256)(sent), 'densenet-all': in_calls(experts[1], 256)}
for rep in range(2):
    t = time_in_turns(fns, images, amp, rounds=5, warmup=1, latency=False)
    s = {k: v['seconds_per_image'] * len(images) for k, v in t.items()}  # seconds for the 2,048 images
    parts = s['googlenet-all'] + s['densenet-sent']
    print(f"repeat {rep}: routed {s['routed']:.2f} s, GoogLeNet on all {s['googlenet-all']:.2f} s + DenseNet121 on "
          f"those sent {s['densenet-sent']:.2f} s = {parts:.2f} s; routing's own cost {s['routed'] - parts:.2f} s "
          f"({(s['routed'] - parts) / s['densenet-all']:.3f} of DenseNet121 on all, {s['densenet-all']:.2f} s); "
          f"routed/DenseNet121 {s['routed'] / s['densenet-all']:.3f}, parts/DenseNet121 {parts / s['densenet-all']:.3f}",
          flush=True)

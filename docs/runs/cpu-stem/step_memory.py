"""Peak memory of one ResNet50 training step on 4 images at 248 px in bf16, with a given stem stride.

    PYTHONPATH=. python docs/runs/cpu-stem/step_memory.py 1    # the 32-px stem: every pixel kept
    PYTHONPATH=. python docs/runs/cpu-stem/step_memory.py 4    # torchvision's ImageNet stem
"""
import resource
import sys

import torch

from models import build_model

if len(sys.argv) != 2 or sys.argv[1] not in ('1', '2', '4'):
    sys.exit('usage: step_memory.py STEM_STRIDE (1, 2 or 4)')
model = build_model('resnet50', 10, stem_stride=int(sys.argv[1]))
with torch.autocast('cpu', torch.bfloat16):
    loss = model(torch.randn(4, 3, 248, 248)).float().sum()
loss.backward()
print(f'stem stride {sys.argv[1]}: max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB')

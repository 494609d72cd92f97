"""Seconds channel_stats takes for the mean and std of a training split as prepare_data asks for them: 40,000 of
50,000 random uint8 images (CIFAR-10's training set less val and route), at 32 and 96 px, best of 3. Run it with
each version of the code first on PYTHONPATH, in turns (docs/runs/cpu-data/channel-stats.log):

    for turn in 1 2; do for code in /tmp/before /path/to/repo; do
        PYTHONPATH=$code python docs/runs/cpu-data/channel_stats_time.py; done; done
"""
import time

import torch

import distill.data
from distill.data import channel_stats

generator = torch.Generator().manual_seed(0)
for size in (32, 96):
    images = torch.randint(0, 256, (50000, 3, size, size), dtype=torch.uint8, generator=generator)
    chosen = torch.randperm(50000, generator=generator)[:40000]
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        mean, std = channel_stats(images, chosen)
        seconds.append(time.perf_counter() - start)
    print(f'{distill.data.__file__}: {size} px, {min(seconds):.2f} s; mean {mean[0]:.12f}, std {std[0]:.12f}')

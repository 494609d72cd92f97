"""The teacher's logits for a student's batch: computed online, or read from a per-epoch cache.

Both give the logits of exactly the augmented images the student sees, because augmentation
is a function of (seed, epoch, sample index). The cache pays the teacher's forward passes once
per (teacher, split, seed, epoch) and lets a second student or a sweep over T and alpha reuse them.
"""
import hashlib
import os

import torch

from .checkpoint import save_checkpoint
from .engine import autocast


class OnlineTeacher:
    """Runs the teacher (eval mode, no grad) on the student's batch."""

    def __init__(self, teacher, amp=None):
        self.teacher, self.amp = teacher.eval(), amp

    def start_epoch(self, loader):
        pass

    @torch.no_grad()  # not inference_mode: kd_loss saves these logits for the student's backward
    def __call__(self, images, indices):
        with autocast(images.device, self.amp):
            return self.teacher(images).float()


class CachedTeacher:
    """Teacher logits of every training image under one epoch's augmentation, stored on disk as fp16."""

    def __init__(self, teacher, teacher_path: str, split: dict, seed: int, cache_dir: str, amp=None,
                 batch_size: int = 512):
        self.teacher, self.amp, self.batch_size = teacher.eval(), amp, batch_size
        digest = hashlib.sha1()
        with open(teacher_path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                digest.update(chunk)
        digest.update(f"{split['digest']}|{seed}".encode())
        self.dir = os.path.join(cache_dir, digest.hexdigest()[:16])
        self.logits = None
        self.computed_epochs = 0

    def start_epoch(self, loader):
        """Load this epoch's logits, computing and saving them first if no earlier run did."""
        path = os.path.join(self.dir, f'epoch{loader.epoch}.pt')
        try:
            self.logits = torch.load(path, map_location=loader.device, weights_only=True)
            return
        except Exception:  # absent or cut short: compute again
            pass
        augmentation = loader.epoch_augmentation()
        indices = loader.indices.to(loader.device)
        logits = None
        with torch.inference_mode(), autocast(loader.device, self.amp):
            for chunk in indices.split(self.batch_size):
                out = self.teacher(loader.make_batch(chunk, augmentation)).half()
                if logits is None:
                    logits = torch.zeros(len(loader.labels), out.shape[1], dtype=torch.float16, device=loader.device)
                logits[chunk] = out
        save_checkpoint(logits.cpu(), path)
        self.logits = logits
        self.computed_epochs += 1

    def __call__(self, images, indices):
        return self.logits[indices].float()

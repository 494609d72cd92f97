"""The teacher's logits for a student's batch: computed online, or read from a per-epoch cache.

Both give the logits of exactly the augmented images the student sees, because augmentation
is a function of (seed, epoch, sample index). The cache pays the teacher's forward passes once
per (teacher, split, seed, precision, epoch) and lets a second student or a sweep over T and alpha reuse them.
"""
import hashlib
import os

import torch

from .checkpoint import save_checkpoint
from .runtime import autocast


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

    def __init__(self, teacher, teacher_path: str, split: dict, images: torch.Tensor, seed: int, cache_dir: str,
                 amp=None, batch_size: int = 512):
        self.teacher, self.amp, self.batch_size = teacher.eval(), amp, batch_size
        digest = hashlib.sha1()
        with open(teacher_path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                digest.update(chunk)
        # The pixels too: images edited or reordered in a folder, with the same labels and split, would
        # otherwise be served the logits of the images that stood at their index before.
        digest.update(images.cpu().contiguous().numpy())
        digest.update(f"{split['digest']}|{seed}|{amp}".encode())  # bf16 and fp32 logits differ: never mix them
        self.dir = os.path.join(cache_dir, digest.hexdigest()[:16])
        self.logits = None
        self.computed_epochs = 0

    def start_epoch(self, loader):
        """Load this epoch's logits, computing and saving them first if no earlier run did. Under torchrun
        each rank computes its share of the images and the shares are all-gathered; rank 0 saves."""
        path = os.path.join(self.dir, f'epoch{loader.epoch}.pt')
        try:
            self.logits = torch.load(path, map_location=loader.device, weights_only=True)
        except Exception:  # absent or cut short: compute again
            self.logits = None
        if loader.world > 1:  # all ranks must agree, or the all_gather below would wait forever
            missing = torch.tensor([float(self.logits is None)], device=loader.device)
            torch.distributed.all_reduce(missing, op=torch.distributed.ReduceOp.MAX)
            if missing.item() == 0:
                return
        elif self.logits is not None:
            return
        self.logits = self._compute(loader)
        if loader.rank == 0:
            save_checkpoint(self.logits.cpu(), path)
        self.computed_epochs += 1

    @torch.inference_mode()
    def _compute(self, loader) -> torch.Tensor:
        augmentation = loader.epoch_augmentation()
        indices = loader.indices.to(loader.device)
        shares = [indices[r::loader.world] for r in range(loader.world)]
        if len(indices) < loader.world:  # too few images to share out: every rank computes all of them
            shares = [indices] * loader.world
        with autocast(loader.device, self.amp):
            mine = [self.teacher(loader.make_batch(chunk, augmentation)).float()
                    for chunk in shares[loader.rank].split(self.batch_size)]
        mine = torch.cat(mine)
        if loader.world > 1:  # all_gather wants equal sizes: pad every share to the largest
            padded = torch.zeros(len(shares[0]), mine.shape[1], device=loader.device)
            padded[:len(mine)] = mine
            gathered = [torch.empty_like(padded) for _ in shares]
            torch.distributed.all_gather(gathered, padded)
        else:
            gathered = [mine]
        logits = torch.zeros(len(loader.labels), mine.shape[1], dtype=torch.float16, device=loader.device)
        for share, out in zip(shares, gathered):
            logits[share] = out[:len(share)].half()
        return logits

    def __call__(self, images, indices):
        return self.logits[indices].float()

"""Batches from uint8 tensors on the device: crop and flip of a whole batch at once, normalisation.

Keeping the data as one tensor (as airbench does) makes a batch an index tensor: augmentation is a
function of (seed, epoch, sample index), so a teacher's logits can be matched to exactly the augmented
image a student sees, cached or not.
"""
import torch
import torch.nn.functional as F

from .data import ImageSet, interleave_classes


def augmentation_params(seed: int, epoch: int, n: int, pad: int = 4):
    """Crop offsets (n x 2) and flips (n) for every sample index of one epoch: a pure function of its inputs."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    return offsets, flips


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding plus horizontal flip of a whole batch, as one gather."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = offsets[:, :1] + torch.arange(h, device=images.device)
    cols = offsets[:, 1:] + torch.arange(w, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indices around a slice put the batch dims first: B x H x W x C, i.e. channels_last.
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class Loader:
    """Yields (normalised images, labels, sample indices) batches from uint8 tensors on `device`.

    train=True shuffles and augments (crop + flip) with parameters drawn from (seed, epoch), and
    drops a ragged last batch. With world > 1 each rank takes its share of every global batch.
    """

    def __init__(self, data: ImageSet, indices: torch.Tensor, batch_size: int, mean, std, device='cpu',
                 train: bool = False, seed: int = 0, channels_last: bool = True, rank: int = 0, world: int = 1):
        placed = data.to(device)
        self.images, self.labels = placed.images, placed.labels
        self.indices = indices
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        n = len(self.indices)
        if self.train and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def batch_indices(self):
        """The global sample indices of each batch of this epoch, in order, on the device: one copy an epoch,
        not one per batch, so that no step waits on a host-to-device transfer."""
        indices = self.indices
        if self.train:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_919)
            indices = indices[torch.randperm(len(indices), generator=gen)]
        indices = indices.to(self.device, non_blocking=True)
        for i in range(len(self)):
            yield indices[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world]

    def epoch_augmentation(self, epoch: int | None = None):
        """This (or that) epoch's crop offsets and flips for every sample index, on the device."""
        offsets, flips = augmentation_params(self.seed, self.epoch if epoch is None else epoch, len(self.labels))
        return offsets.to(self.device), flips.to(self.device)

    def make_batch(self, idx: torch.Tensor, augmentation=None) -> torch.Tensor:
        """Normalised images of sample indices idx, augmented when given this epoch's augmentation."""
        if self.images.device == idx.device:
            images = self.images[idx]
        else:  # a set larger than the GPU's memory, kept in host memory
            images = self.images[idx.cpu()].to(self.device, non_blocking=True)
        if augmentation is not None:
            offsets, flips = augmentation
            images = crop_flip(images, offsets[idx], flips[idx])
        return self.normalise(images)

    def __iter__(self):
        return self._batches(self.epoch_augmentation() if self.train else None)

    def augmented(self, view: int):
        """The batches once more, in order, each image cropped and flipped as epoch `view` would crop and
        flip it: more examples of how the models behave on images none of them was trained on."""
        return self._batches(self.epoch_augmentation(view))

    def classes_in_turn(self, n: int) -> torch.Tensor:
        """Normalised images of the first n samples, visiting the classes in turn: what timing a routing needs, since
        a batch of one class (a test split stored class by class) would time that class's routing mix."""
        indices = self.indices.cpu()
        return self.make_batch(indices[interleave_classes(self.labels.cpu()[indices])][:n].to(self.device))

    def _batches(self, augmentation):
        for idx in self.batch_indices():
            yield self.make_batch(idx, augmentation), self.labels[idx], idx

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=self.memory_format)
        return (images.float() - self.mean) / self.std


class TensorLoader:
    """Batches (inputs, labels, positions) of tensors already on the device, shuffled per epoch when train=True:
    what the engine trains the selector on (the cheap expert's outputs, computed once)."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, train: bool = False, seed: int = 0):
        self.inputs, self.labels, self.batch_size, self.train, self.seed = inputs, labels, batch_size, train, seed
        self.indices = torch.arange(len(labels))
        self.device, self.rank, self.world, self.epoch = inputs.device, 0, 1, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        n = len(self.indices)
        return n // self.batch_size if self.train and n >= self.batch_size else -(-n // self.batch_size)

    def __iter__(self):
        order = self.indices
        if self.train:
            order = order[torch.randperm(len(order), generator=torch.Generator().manual_seed(self.seed + self.epoch))]
        order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.inputs[idx], self.labels[idx], idx


def split_loader(data, part: str, batch_size: int, device, **options) -> Loader:
    """A Loader over one part of a Prepared split ('train', 'val', 'route') or, for 'test', the whole test set."""
    images, indices = (data.test, torch.arange(len(data.test))) if part == 'test' else (data.train, data.parts[part])
    return Loader(images, indices, batch_size, data.mean, data.std, device, **options)


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 N x 3 x S x S to the float input a model was trained on (mean/std as stored in its checkpoint)."""
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255
    return ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)

"""distill/loaders.py: augmentation as a pure function of (seed, epoch, index), batches in order."""
import torch

from distill.data import ImageSet, Prepared
from distill.loaders import Loader, augmentation_params, crop_flip, split_loader
from conftest import needs_cuda


def test_crop_flip_matches_per_image_reference():
    images = torch.randint(0, 256, (5, 3, 6, 7), dtype=torch.uint8)
    offsets, flips = augmentation_params(seed=1, epoch=2, n=5, pad=4)
    out = crop_flip(images, offsets, flips)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(5):
        dy, dx = offsets[i].tolist()
        expected = padded[i, :, dy:dy + 6, dx:dx + 7]
        assert torch.equal(out[i], expected.flip(2) if flips[i] else expected)


def test_loader_augmentation_is_a_function_of_seed_epoch_and_index():
    data = ImageSet(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40) % 4, list('abcd'))
    make = lambda: Loader(data, torch.arange(40), 16, [0.5] * 3, [0.25] * 3, train=True, seed=5)
    a, b = make(), make()
    batches_a, batches_b = list(a), list(b)
    assert len(batches_a) == 2  # the ragged last batch is dropped in training
    for (xa, ya, ia), (xb, yb, ib) in zip(batches_a, batches_b):
        assert torch.equal(xa, xb) and torch.equal(ia, ib) and torch.equal(ya, data.labels[ia])
    a.set_epoch(1)
    assert not torch.equal(next(iter(a))[2], batches_a[0][2])  # a new permutation each epoch
    evaluation = Loader(data, torch.arange(40), 16, [0.5] * 3, [0.25] * 3)
    assert torch.cat([i for _, _, i in evaluation]).tolist() == list(range(40))


def test_an_augmented_view_is_every_image_in_order_cropped_and_flipped_as_that_epoch_would():
    data = ImageSet(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20) % 4, list('abcd'))
    loader = Loader(data, torch.arange(3, 20), 8, [0.0] * 3, [1 / 255] * 3, seed=5)
    images, labels, indices = (torch.cat(parts) for parts in zip(*loader.augmented(view=2)))
    assert indices.tolist() == list(range(3, 20)) and torch.equal(labels, data.labels[3:])  # ragged batch kept
    offsets, flips = augmentation_params(seed=5, epoch=2, n=20)
    assert torch.equal(images, crop_flip(data.images, offsets, flips)[3:].float())
    assert not torch.equal(images, torch.cat([x for x, _, _ in loader]))  # not the plain images


def test_images_for_timing_visit_the_loaders_classes_in_turn():
    # stored class by class, as the JPEG archive stores its test split; the loader holds every other image
    data = ImageSet(torch.arange(24, dtype=torch.uint8).view(24, 1, 1, 1).expand(24, 3, 2, 2).contiguous(),
                    torch.arange(24) // 8, list('abc'))
    loader = Loader(data, torch.arange(0, 24, 2), 4, [0.0] * 3, [1 / 255] * 3)
    firsts = loader.classes_in_turn(6)[:, 0, 0, 0].long().tolist()  # mean 0, std 1/255: the pixel is the index
    assert firsts == [0, 8, 16, 2, 10, 18]


def test_a_split_loader_reads_its_part_of_the_training_set_or_the_whole_test_set():
    train = ImageSet(torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8), torch.arange(30) % 3, list('abc'))
    test = ImageSet(torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8), torch.arange(7) % 3, list('abc'))
    parts = {'train': torch.arange(0, 20), 'val': torch.arange(20, 25), 'route': torch.arange(25, 30)}
    data = Prepared(train, test, parts, {}, [0.0] * 3, [1 / 255] * 3, 8)
    route = list(split_loader(data, 'route', 4, 'cpu'))
    assert torch.cat([i for _, _, i in route]).tolist() == list(range(25, 30))  # in order, ragged batch kept
    assert torch.equal(torch.cat([x for x, _, _ in route]), train.images[25:].float())  # not augmented
    images, labels, _ = (torch.cat(parts) for parts in zip(*split_loader(data, 'test', 4, 'cpu')))
    assert torch.equal(images, test.images.float()) and torch.equal(labels, test.labels)
    assert len(split_loader(data, 'train', 8, 'cpu', train=True)) == 2  # training drops the ragged batch


@needs_cuda
def test_batches_from_images_kept_in_host_memory_match_those_from_the_gpu(monkeypatch):
    data = ImageSet(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40) % 4, list('abcd'))
    on_gpu = Loader(data, torch.arange(40), 16, [0.5] * 3, [0.25] * 3, 'cuda', train=True, seed=5)
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (0, 10**9))
    on_host = Loader(data, torch.arange(40), 16, [0.5] * 3, [0.25] * 3, 'cuda', train=True, seed=5)
    assert on_host.images.device.type == 'cpu' and on_gpu.images.device.type == 'cuda'
    for (xa, ya, ia), (xb, yb, ib) in zip(on_gpu, on_host):
        assert xb.device.type == 'cuda' and torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)

import pytest
import torch

from distill.data import ImageSet
from distill.loaders import Loader
from distill.losses import kd_loss
from distill.teachers import CachedTeacher, OnlineTeacher


class Spy(torch.nn.Module):
    """A teacher whose logits are a known function of the exact pixels it is shown."""

    def forward(self, images):
        return torch.stack([images.mean((1, 2, 3)), images[:, 0, 0, 0], images[:, :, :, -1].mean((1, 2))], 1)


def test_teacher_logits_belong_to_the_augmented_images_the_student_sees(tmp_path):
    data = ImageSet(torch.randint(0, 256, (48, 3, 8, 8), dtype=torch.uint8), torch.arange(48) % 3, list('abc'))
    loader = Loader(data, torch.arange(6, 48), 8, [0.5] * 3, [0.2] * 3, train=True, seed=11)
    teacher = Spy()
    checkpoint = tmp_path / 'teacher.pt'
    torch.save({'any': 'bytes'}, checkpoint)
    online = OnlineTeacher(teacher)
    cached = CachedTeacher(teacher, str(checkpoint), {'digest': 'd'}, data.images, 11, str(tmp_path / 'cache'))
    student = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(4, 3))
    for epoch in range(2):  # shuffled and augmented differently each epoch
        loader.set_epoch(epoch)
        cached.start_epoch(loader)
        for images, labels, indices in loader:
            expected = teacher(images)
            torch.testing.assert_close(online(images, indices), expected)
            torch.testing.assert_close(cached(images, indices), expected, atol=2e-3, rtol=2e-3)  # stored as fp16
            logits = student(images)
            assert kd_loss(logits, cached(images, indices), labels).item() == pytest.approx(
                kd_loss(logits, online(images, indices), labels).item(), rel=1e-3)
    assert cached.computed_epochs == 2

    again = CachedTeacher(teacher, str(checkpoint), {'digest': 'd'}, data.images, 11, str(tmp_path / 'cache'))
    loader.set_epoch(1)
    again.start_epoch(loader)
    assert again.computed_epochs == 0  # a second student pays no teacher passes
    other_seed = CachedTeacher(teacher, str(checkpoint), {'digest': 'd'}, data.images, 12, str(tmp_path / 'cache'))
    other_precision = CachedTeacher(teacher, str(checkpoint), {'digest': 'd'}, data.images, 11, str(tmp_path / 'cache'),
                                    amp=torch.bfloat16)
    swapped = data.images.clone()
    swapped[[6, 9]] = data.images[[9, 6]]  # two images of one class renamed: labels and split as they were
    other_images = CachedTeacher(teacher, str(checkpoint), {'digest': 'd'}, swapped, 11, str(tmp_path / 'cache'))
    assert len({other_seed.dir, other_precision.dir, other_images.dir, again.dir}) == 4

"""Training under torchrun (gloo on CPU) matches a single process with the same global batch."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from conftest import ROOT, TINY, make_image_folder, run_script
from distill.data import ImageSet, Prepared, make_split
from distill.engine import TrainSettings, fit
from distill.losses import classification_step, distillation_step
from distill.teachers import CachedTeacher, OnlineTeacher


def _data():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 4, 4), dtype=torch.uint8, generator=gen)
    train = ImageSet(images, torch.arange(60) % 3, ['a', 'b', 'c'])
    parts, split = make_split(train.labels, 0, 6, 6)
    return Prepared(train, train.select(torch.arange(12)), parts, split, [0.5] * 3, [0.25] * 3, 4)


def _linear(seed):  # no BN: CPU ranks keep their own BN statistics (SyncBatchNorm is CUDA only)
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))


def _run(rank, out, teacher_logits='none', teacher_path='', world=1, port=0):
    if world > 1:
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
    model, teacher, on_epoch_start, seen = _linear(0), None, None, []
    if teacher_logits != 'none':  # a student: the teacher's logits must follow each rank's shard of the batch
        teacher = _linear(1)
        teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
        teacher.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
        teacher = (OnlineTeacher(teacher) if teacher_logits == 'online' else
                   CachedTeacher(teacher, teacher_path, {'digest': 'test'}, _data().train.images, 0, f'{out}-cache'))
        on_epoch_start = teacher.start_epoch
    step = (lambda m: distillation_step(m, teacher, 4.0, 0.5)) if teacher else classification_step
    settings = TrainSettings(out=out, epochs=2, batch_size=8, lr=0.1, device='cpu', amp='off')
    fit(settings, 'linear', model, step, _data(), on_epoch_start=on_epoch_start)
    with open(f'{out}-rank{rank}-teacher-images', 'w') as f:  # how many images this rank's teacher ran on
        f.write(str(sum(seen)))
    if world > 1:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize('teacher_logits', ['none', 'online', 'cache'])
def test_two_gloo_ranks_match_one_process(tmp_path, teacher_logits):
    teacher_path = str(tmp_path / 'teacher.pt')
    torch.save(_linear(1).state_dict(), teacher_path)
    _run(0, str(tmp_path / 'single'), teacher_logits, teacher_path)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_run, args=(str(tmp_path / 'ddp'), teacher_logits, teacher_path, 2, port), nprocs=2)
    single = torch.load(tmp_path / 'single' / 'last.pt', weights_only=True)
    ddp = torch.load(tmp_path / 'ddp' / 'last.pt', weights_only=True)
    for key in single['model']:
        torch.testing.assert_close(ddp['model'][key], single['model'][key], rtol=1e-5, atol=1e-6)
    for a, b in zip(single['history'], ddp['history']):
        assert abs(a['train_loss'] - b['train_loss']) < 1e-4 and a['val_acc'] == b['val_acc']
    teacher_images = [int((tmp_path / name).read_text()) for name in
                      ('single-rank0-teacher-images', 'ddp-rank0-teacher-images', 'ddp-rank1-teacher-images')]
    if teacher_logits != 'none':  # each rank runs the teacher on its half of the images only, cached or not
        assert teacher_images[1] == teacher_images[2] == teacher_images[0] // 2 > 0


def test_torchrun_trains_a_teacher_and_a_student_and_only_rank_zero_writes(tmp_path):
    folder = make_image_folder(tmp_path / 'dataset')
    torchrun = ('-m', 'torch.distributed.run', '--nproc_per_node=2')
    result = run_script(*torchrun, ROOT / 'teacherTrain.py', *TINY, '--arch', 'googlenet', '--data-dir', folder,
                        '--epochs', '2', threads=1)
    assert result.stdout.count('googlenet epoch 2/2') == 1
    assert len((tmp_path / 'checkpoints' / 'teacher' / 'metrics.csv').read_text().splitlines()) == 3
    assert (tmp_path / 'checkpoints' / 'teacher' / 'summary.json').exists()
    result = run_script(*torchrun, ROOT / 'studentTrain.py', *TINY, '--arch', 'googlenet', '--data-dir', folder,
                        '--teacher-logits', 'cache', threads=1)
    assert result.stdout.count('googlenet epoch 1/1') == 1
    student = torch.load(tmp_path / 'checkpoints' / 'googlenet' / 'last.pt', weights_only=True)
    assert student['teacher'] == 'checkpoints/teacher/best.pt' and len(student['history']) == 1

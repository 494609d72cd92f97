"""The scripts as a user runs them: subprocesses on a tiny image folder."""
import json

import pytest

from conftest import ROOT, make_image_folder, run_script

TINY = ['--dataset', 'folder', '--image-size', '8', '--val-size', '6', '--route-size', '6', '--batch-size', '8',
        '--epochs', '1', '--lr', '0.05']


@pytest.fixture(scope='module')
def teacher_run(tmp_path_factory):
    work = tmp_path_factory.mktemp('e2e')
    folder = make_image_folder(work / 'images')
    run_script(ROOT / 'teacherTrain.py', *TINY, '--data-dir', folder, cwd=work)
    return work, folder


def test_teacher_writes_the_run_directory(teacher_run):
    work, _ = teacher_run
    run = work / 'checkpoints' / 'teacher'
    assert {p.name for p in run.iterdir()} >= {'last.pt', 'best.pt', 'metrics.csv', 'config.json', 'summary.json'}
    summary = json.loads((run / 'summary.json').read_text())
    assert summary['arch'] == 'resnet50' and 0 <= summary['test_acc'] <= 1 and summary['macs'] > 0


@pytest.mark.parametrize('arch, extra', [('densenet121', []), ('googlenet', ['--teacher-logits', 'cache'])])
def test_student_distils_from_the_teacher_checkpoint(teacher_run, arch, extra):
    work, folder = teacher_run
    run_script(ROOT / 'studentTrain.py', *TINY, '--data-dir', folder, '--arch', arch, *extra, cwd=work)
    summary = json.loads((work / 'checkpoints' / arch / 'summary.json').read_text())
    assert summary['arch'] == arch


def test_no_kd_baseline_needs_no_teacher_and_has_its_own_directory(teacher_run):
    work, folder = teacher_run
    run_script(ROOT / 'studentTrain.py', *TINY, '--data-dir', folder, '--arch', 'googlenet', '--alpha', '0',
               '--teacher', 'nowhere.pt', cwd=work)
    assert (work / 'checkpoints' / 'googlenet-nokd' / 'best.pt').exists()


def test_teacher_of_another_split_is_refused(teacher_run):
    work, folder = teacher_run
    result = run_script(ROOT / 'studentTrain.py', *TINY, '--data-dir', folder, '--seed', '1', '--out', 'x',
                        cwd=work, check=False)
    assert result.returncode == 2 and 'has split=' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('args, message', [
    (['--data-dir', 'missing-dir'], 'does not exist'),
    (['--arch', 'vgg'], 'invalid choice'),
    (['--epochs', '0'], '--epochs must be at least 1'),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    result = run_script(ROOT / 'teacherTrain.py', '--dataset', 'folder', *args, check=False)
    assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr


def test_student_with_a_missing_teacher_is_one_clear_line(image_folder):
    result = run_script(ROOT / 'studentTrain.py', *TINY, '--data-dir', image_folder, '--teacher', 'no.pt', check=False)
    assert result.returncode == 2 and "checkpoint 'no.pt' does not exist" in result.stderr

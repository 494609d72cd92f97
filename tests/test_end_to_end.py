"""The scripts as a user runs them: subprocesses on a tiny image folder (see conftest.tiny_runs)."""
import json

import pytest
import torch

from conftest import ROOT, TINY, run_script


@pytest.mark.parametrize('name, arch', [('teacher', 'resnet50'), ('densenet121', 'densenet121'),
                                        ('googlenet', 'googlenet'), ('googlenet-nokd', 'googlenet'),
                                        ('selector', 'selector')])
def test_every_stage_writes_its_run_directory(tiny_runs, name, arch):
    work, _ = tiny_runs
    run = work / 'checkpoints' / name
    assert {p.name for p in run.iterdir()} >= {'last.pt', 'best.pt', 'metrics.csv', 'config.json', 'summary.json'}
    summary = json.loads((run / 'summary.json').read_text())
    assert summary['arch'] == arch and 0 <= summary['test_acc'] <= 1 and summary['macs'] > 0
    state = torch.load(run / 'best.pt', weights_only=True)
    assert state['split'] == torch.load(work / 'checkpoints' / 'teacher' / 'best.pt', weights_only=True)['split']


def test_students_record_their_teacher_and_the_selector_its_experts(tiny_runs):
    work, _ = tiny_runs
    student = torch.load(work / 'checkpoints' / 'googlenet' / 'best.pt', weights_only=True)
    assert student['teacher'] == 'checkpoints/teacher/best.pt' and student['alpha'] == 0.9
    baseline = torch.load(work / 'checkpoints' / 'googlenet-nokd' / 'best.pt', weights_only=True)
    assert baseline['teacher'] is None and baseline['alpha'] == 0
    selector = torch.load(work / 'checkpoints' / 'selector' / 'best.pt', weights_only=True)
    assert [e['name'] for e in selector['experts']] == ['densenet121', 'googlenet']
    assert selector['experts'][0]['macs'] > selector['experts'][1]['macs'] > selector['selector_macs']


def test_student_from_the_logit_cache(tiny_runs):
    work, folder = tiny_runs
    run_script(ROOT / 'studentTrain.py', *TINY, '--data-dir', folder, '--arch', 'googlenet', '--teacher-logits',
               'cache', '--out', 'checkpoints/googlenet-cached', cwd=work)
    assert list((work / 'checkpoints' / 'logit-cache').glob('*/epoch0.pt'))
    assert (work / 'checkpoints' / 'googlenet-cached' / 'summary.json').exists()


def test_selector_with_the_teacher_as_fallback(tiny_runs):
    work, folder = tiny_runs
    result = run_script(ROOT / 'selectorTrain.py', *TINY, '--data-dir', folder, '--include-teacher',
                        '--out', 'checkpoints/selector3', cwd=work)
    assert 'max confidence' in result.stdout and 'teacher' in result.stdout
    assert 'selector epoch 1/1  train loss' in result.stdout and 'nan' not in result.stdout  # no 'acc nan%' in the log
    state = torch.load(work / 'checkpoints' / 'selector3' / 'best.pt', weights_only=True)
    assert [e['name'] for e in state['experts']] == ['densenet121', 'googlenet', 'teacher']


def test_teacher_of_another_split_is_refused(tiny_runs):
    work, folder = tiny_runs
    result = run_script(ROOT / 'studentTrain.py', *TINY, '--data-dir', folder, '--seed', '1', '--out', 'x',
                        cwd=work, check=False)
    assert result.returncode == 2 and 'has split=' in result.stderr and 'Traceback' not in result.stderr
    assert not (work / 'x' / 'last.pt').exists()


@pytest.mark.parametrize('args, message', [
    (['--data-dir', 'missing-dir'], 'does not exist'),
    (['--arch', 'vgg'], 'invalid choice'),
    (['--epochs', '0'], '--epochs must be at least 1'),
])
def test_bad_input_is_one_clear_line(args, message):
    result = run_script(ROOT / 'teacherTrain.py', '--dataset', 'folder', *args, check=False)
    assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr


def test_student_with_a_missing_teacher_is_one_clear_line(image_folder):
    result = run_script(ROOT / 'studentTrain.py', *TINY, '--data-dir', image_folder, '--teacher', 'no.pt', check=False)
    assert result.returncode == 2 and "checkpoint 'no.pt' does not exist" in result.stderr


def test_auto_cost_weight_is_chosen_on_val_and_stored_with_the_selector(tiny_runs, monkeypatch):
    import selectorTrain
    from distill.routing import COST_WEIGHTS, cost_weight_sweep
    work, folder = tiny_runs
    experts = [str(work / 'checkpoints' / name / 'best.pt') for name in ('densenet121', 'googlenet')]
    swept, chosen = [], []
    monkeypatch.setattr(selectorTrain, 'cost_weight_sweep',
                        lambda logits, labels, *rest: swept.append(len(labels)) or cost_weight_sweep(logits, labels, *rest))
    monkeypatch.setattr(selectorTrain, 'choose_cost_weight', lambda sweep, drop: chosen.append((sweep, drop)) or 0.5)
    selectorTrain.main([*TINY, '--data-dir', str(folder), '--experts', *experts, '--max-accuracy-drop', '2',
                        '--out', 'auto'])
    assert swept == [6]  # the 6 val images (TINY's --val-size), never the test set
    (sweep, drop), = chosen
    assert drop == 0.02 and [w for w, _, _ in sweep] == list(COST_WEIGHTS)
    assert torch.load('auto/best.pt', weights_only=True)['cost_weight'] == 0.5
    assert json.loads(open('auto/summary.json').read())['cost_weight'] == 0.5

    selectorTrain.main([*TINY, '--data-dir', str(folder), '--experts', *experts, '--cost-weight', '0.3', '--out', 'fixed'])
    assert swept == [6] and torch.load('fixed/best.pt', weights_only=True)['cost_weight'] == 0.3


def test_a_selector_for_experts_without_a_route_split_is_one_clear_line(image_folder, capsys):
    import selectorTrain
    import teacherTrain
    tiny = [*TINY, '--data-dir', str(image_folder), '--route-size', '0']
    teacherTrain.main([*tiny, '--arch', 'googlenet', '--out', 'expert'])
    with pytest.raises(SystemExit) as exit_info:
        selectorTrain.main([*tiny, '--experts', 'expert/best.pt', 'expert/best.pt'])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err == [
        'error: the experts were trained with --route-size 0: no image was held out for the selector; retrain them '
        'with a route split (default 10%)']

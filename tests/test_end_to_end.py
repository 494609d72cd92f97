"""The scripts as a user runs them: subprocesses on a tiny image folder (see conftest.tiny_runs)."""
import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, run_main, run_script
from distill.runtime import device_name


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
    experts = selector['experts']
    assert {e['name'] for e in experts} == {'densenet121', 'googlenet'}
    times = [e['seconds_per_image'] for e in experts]
    assert times == sorted(times) and all(e['device'].startswith('CPU') and e['batch_size'] > 0 for e in experts)
    assert min(e['macs'] for e in experts) > selector['selector_macs']
    assert selector['routing']['mode'] in ('cascade', 'selector') and selector['routing']['cost'] == 'time'


def test_student_from_the_logit_cache(tiny_runs):
    work, folder = tiny_runs
    run_main(ROOT / 'studentTrain.py', *TINY, '--data-dir', folder, '--arch', 'googlenet', '--teacher-logits',
             'cache', '--out', 'checkpoints/googlenet-cached', cwd=work)
    assert list((work / 'checkpoints' / 'logit-cache').glob('*/epoch0.pt'))
    assert (work / 'checkpoints' / 'googlenet-cached' / 'summary.json').exists()


def test_twin_given_a_teacher_takes_its_split(tiny_runs):
    # No data flags: without the teacher's settings the twin would look for CIFAR-10 in data/.
    work, _ = tiny_runs
    run_main(ROOT / 'studentTrain.py', '--arch', 'googlenet', '--alpha', '0', '--teacher', 'checkpoints/teacher',
             '--epochs', '1', '--batch-size', '8', '--out', 'checkpoints/googlenet-twin', cwd=work)
    twin = torch.load(work / 'checkpoints' / 'googlenet-twin' / 'best.pt', weights_only=True)
    teacher = torch.load(work / 'checkpoints' / 'teacher' / 'best.pt', weights_only=True)
    assert twin['split'] == teacher['split'] and twin['image_size'] == teacher['image_size']
    assert twin['teacher'] is None and twin['alpha'] == 0


def test_selector_with_the_teacher_as_fallback(tiny_runs):
    work, folder = tiny_runs
    result = run_main(ROOT / 'selectorTrain.py', *TINY, '--data-dir', folder, '--include-teacher',
                      '--out', 'checkpoints/selector3', cwd=work)
    assert 'max confidence' in result.stdout and 'teacher' in result.stdout
    assert 'selector epoch 1/1  train loss' in result.stdout and 'nan' not in result.stdout  # no 'acc nan%' in the log
    state = torch.load(work / 'checkpoints' / 'selector3' / 'best.pt', weights_only=True)
    assert {e['name'] for e in state['experts']} == {'densenet121', 'googlenet', 'teacher'}


@pytest.mark.parametrize('script, args, overwritten', [
    ('selectorTrain.py', ['--experts', 'checkpoints/googlenet', 'checkpoints/densenet121'], 'googlenet'),
    ('selectorTrain.py', ['--experts', 'checkpoints/googlenet', 'checkpoints/densenet121', '--include-teacher'],
     'teacher'),
    ('studentTrain.py', ['--arch', 'googlenet', '--teacher', 'checkpoints/teacher'], 'teacher')])
def test_a_stage_never_writes_over_a_checkpoint_it_reads(tiny_runs, script, args, overwritten):
    work, folder = tiny_runs
    best = work / 'checkpoints' / overwritten / 'best.pt'
    before = best.read_bytes()
    result = run_main(ROOT / script, *args, '--data-dir', folder, '--out', f'checkpoints/{overwritten}',
                      '--overwrite', cwd=work, check=False)
    assert result.returncode == 2 and f"would write over 'checkpoints/{overwritten}/best.pt'" in result.stderr
    assert best.read_bytes() == before


@pytest.mark.parametrize('script, args', [
    ('infer.py', ['dataset/test', '--teacher', 'checkpoints/selector']),
    ('evaluate.py', ['--teacher', 'checkpoints/selector']),
    ('studentTrain.py', ['--teacher', 'checkpoints/selector', '--out', 'x']),
    ('selectorTrain.py', ['--experts', 'checkpoints/selector', 'checkpoints/googlenet', '--out', 'x']),
    ('benchmarks/export_logits.py', ['--experts', 'checkpoints/selector', '--out', 'x'])])
def test_a_selector_given_as_an_image_classifier_is_one_line(tiny_runs, script, args):
    work, _ = tiny_runs  # it ran on images and raised a traceback about tensor shapes
    result = run_main(ROOT / script, *args, cwd=work, check=False)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: 'checkpoints/selector/best.pt' is a selector, not an image classifier; pass a teacher or student "
        "checkpoint here (a selector goes to --selector)")


def test_teacher_of_another_split_is_refused(tiny_runs):
    work, folder = tiny_runs
    result = run_main(ROOT / 'studentTrain.py', *TINY, '--data-dir', folder, '--seed', '1', '--out', 'x',
                      cwd=work, check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert "--seed 1 differs from 'checkpoints/teacher/best.pt', trained with --seed 0;" in result.stderr
    assert not (work / 'x' / 'last.pt').exists()


def test_a_teachers_image_size_too_small_for_the_student_says_to_retrain_the_teacher(tiny_runs, tmp_path):
    work, folder = tiny_runs
    teacher = torch.load(work / 'checkpoints' / 'teacher' / 'best.pt', weights_only=True)
    teacher['config']['image_size'] = 2  # a ResNet50 takes 2 px; GoogLeNet's pooling does not
    torch.save(teacher, tmp_path / 'teacher.pt')
    result = run_main(ROOT / 'studentTrain.py', '--arch', 'googlenet', '--teacher', tmp_path / 'teacher.pt',
                      '--out', tmp_path / 'x', cwd=work, check=False)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: --image-size 2 is too small for googlenet, whose pooling needs at least 4 px; "
        f"retrain '{tmp_path / 'teacher.pt'}' with --image-size 4 or more")


@pytest.mark.parametrize('args, message', [
    (['--data-dir', 'missing-dir'], 'does not exist'),
    (['--arch', 'vgg'], 'invalid choice'),
    (['--epochs', '0'], '--epochs must be at least 1'),
])
def test_bad_input_is_one_clear_line(args, message):
    result = run_main(ROOT / 'teacherTrain.py', '--dataset', 'folder', *args, check=False)
    assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr


def test_student_with_a_missing_teacher_is_one_clear_line(image_folder):
    result = run_script(ROOT / 'studentTrain.py', *TINY, '--data-dir', image_folder, '--teacher', 'no.pt', check=False)
    assert result.returncode == 2 and "checkpoint 'no.pt' does not exist" in result.stderr


def test_routing_is_chosen_on_val_and_stored_with_the_selector(tiny_runs, monkeypatch):
    import selectorTrain
    from distill.routing import selection
    from distill.routing.decisions import choose_routing
    work, folder = tiny_runs
    experts = [str(work / 'checkpoints' / name) for name in ('densenet121', 'googlenet')]  # run directories
    seen = []
    monkeypatch.setattr(selection, 'choose_routing',
                        lambda conf, *rest: seen.append((len(conf), rest[-2] and len(rest[-2][0]))) or {
                            **choose_routing(conf, *rest), 'levels': {'cascade': 0, 'selector': 2}, 'cost_weight': 0.5})
    selectorTrain.main(['--experts', *experts, '--epochs', '1', '--out', 'val-only', '--cascade-tune-on', 'val'])
    selectorTrain.main(['--experts', *experts, '--epochs', '2', '--max-accuracy-drop', '2', '--out', 'auto'])
    # the 6 val images (TINY's --val-size), never the test set; data settings inherited; by default the
    # cascade is tuned on the 9 route images and val, without route's augmented copies
    assert seen == [(6, None), (6, 15)]
    state = torch.load('auto/best.pt', weights_only=True)
    assert state['routing']['mode'] == 'selector' and state['routing']['cost_weight'] == 0.5
    assert state['routing']['cascade_tuned_on'] == ['route', 'val'] and state['routing']['answer'] == 'committee'
    measured = state['routing']['measured']  # both modes timed on val beside the best expert alone, on this device
    assert set(measured['seconds_per_image']) == {'cascade', 'selector', 'alone'} and measured['images'] == 6
    assert measured['device'] == device_name(torch.device('cpu'))
    assert json.loads(Path('auto/summary.json').read_text())['routing']['cost_weight'] == 0.5
    assert state['split'] == torch.load(experts[0] + '/best.pt', weights_only=True)['split']
    assert 'optimizer' not in state and 'rng' not in state  # best.pt: what inference needs


def test_a_teacher_fallback_needs_experts_that_name_a_teacher(tiny_runs, capsys):
    import selectorTrain
    work, _ = tiny_runs
    with pytest.raises(SystemExit) as exit_info:
        selectorTrain.main(['--experts', str(work / 'checkpoints' / 'googlenet-nokd'), str(work / 'checkpoints' /
                            'googlenet'), '--include-teacher', '--out', 'x'])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and 'trained without a teacher' in err[0]


def test_a_selector_with_the_teacher_as_last_resort(tiny_runs):
    import selectorTrain
    work, _ = tiny_runs
    experts = [str(work / 'checkpoints' / name) for name in ('densenet121', 'googlenet')]
    selectorTrain.main(['--experts', *experts, '--include-teacher', '--epochs', '1', '--cost', 'macs', '--out', 'fb'])
    state = torch.load('fb/best.pt', weights_only=True)
    assert [e['arch'] for e in state['experts']][-1] == 'resnet50'  # ordered by MACs: the teacher last
    classes = torch.load(f'{experts[0]}/best.pt', weights_only=True)['num_classes']
    assert len(state['routing']['thresholds']) == 2
    assert state['model_args']['in_features'] == classes  # the cheapest expert's probabilities


def test_students_moved_away_from_their_teacher_take_it_as_teacher(tiny_runs, capsys):
    import shutil

    import selectorTrain
    work, _ = tiny_runs
    for name in ('densenet121', 'googlenet'):  # without the teacher beside them
        shutil.copytree(work / 'checkpoints' / name, f'moved/{name}')
    students = ['moved/densenet121', 'moved/googlenet']
    with pytest.raises(SystemExit) as exit_info:
        selectorTrain.main(['--experts', *students, '--include-teacher', '--epochs', '1', '--out', 'lost'])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert "is not here; pass its checkpoint or run directory with --teacher PATH, or drop --include-teacher" in err[0]
    selectorTrain.main(['--experts', *students, '--teacher', str(work / 'checkpoints' / 'teacher'), '--epochs', '1',
                        '--cost', 'macs', '--out', 'found'])
    assert torch.load('found/best.pt', weights_only=True)['experts'][-1]['arch'] == 'resnet50'


def test_a_selector_for_experts_without_a_route_split_is_one_clear_line(image_folder, capsys):
    import selectorTrain
    import teacherTrain
    tiny = [*TINY, '--data-dir', str(image_folder), '--route-size', '0']
    for out in ('expert', 'another'):
        teacherTrain.main([*tiny, '--arch', 'googlenet', '--out', out])
    with pytest.raises(SystemExit) as exit_info:
        selectorTrain.main([*tiny, '--experts', 'expert/best.pt', 'another/best.pt'])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err == [
        'error: the experts were trained with --route-size 0: no image was held out for the selector; retrain them '
        'with a route split (default 10%)']

"""pipeline.py: every stage once (conftest.tiny_runs), then skipped, resumed or retrained as its settings say."""
import json
import os
import statistics

import pytest
import torch
from PIL import Image

import pipeline
import selectorTrain
import teacherTrain
from conftest import TINY, make_image_folder, run_tiny_pipeline
from distill.data import export_sample_images
from distill.stages import run_stages

STAGES = {'teacher', 'densenet121', 'densenet121-nokd', 'googlenet', 'googlenet-nokd', 'selector'}


def _mtimes(root):
    return {d: os.path.getmtime(root / d / 'best.pt') for d in STAGES}


def test_pipeline_runs_every_stage(tiny_runs):
    work, _ = tiny_runs
    assert all((work / 'checkpoints' / d / 'summary.json').exists() for d in STAGES)
    assert (work / 'results' / 'quick.md').exists() and (work / 'results' / 'quick' / 'accuracy_vs_time.png').exists()
    assert len((work / 'results' / 'quick-predictions.csv').read_text().splitlines()) == 1 + 2 * 3
    # both students read one cache: the teacher's logits exist once per epoch, not once per student
    assert [p.name for p in (work / 'checkpoints' / 'logit-cache').glob('*/*.pt')] == ['epoch0.pt']
    assert all(json.loads((work / 'checkpoints' / d / 'config.json').read_text())['teacher_logits'] == 'cache'
               for d in ('densenet121', 'googlenet'))


def test_a_second_run_trains_nothing(tiny_runs, capsys):
    work, folder = tiny_runs
    before = _mtimes(work / 'checkpoints')
    capsys.readouterr()
    run_tiny_pipeline(work, folder)
    assert _mtimes(work / 'checkpoints') == before
    assert capsys.readouterr().out.count('skip ') == len(STAGES)


def test_an_interrupted_stage_resumes_and_a_changed_one_retrains(tiny_runs, capsys, monkeypatch):
    work, folder = tiny_runs
    monkeypatch.chdir(work)
    def argv(epochs):  # what the pipeline passes the selector stage
        return TINY[:8] + ['--data-dir', str(folder), '--epochs', str(epochs), '--experts',
                           'checkpoints/densenet121/best.pt', 'checkpoints/googlenet/best.pt', '--out',
                           'checkpoints/selector']
    os.remove('checkpoints/selector/summary.json')  # as if killed after its last epoch
    best = os.path.getmtime('checkpoints/selector/best.pt')
    weights = torch.load('checkpoints/selector/best.pt', weights_only=True)['model']
    run_stages([(selectorTrain, argv(2))], force=False)
    out = capsys.readouterr().out
    assert 'resume checkpoints/selector' in out and 'resumed' in out and 'epoch 1/2' not in out
    resumed = torch.load('checkpoints/selector/best.pt', weights_only=True)['model']  # routing is re-timed, not retrained
    assert all(torch.equal(weights[k], resumed[k]) for k in weights) and os.path.exists('checkpoints/selector/summary.json')
    run_stages([(selectorTrain, argv(3))], force=False)
    assert 'retrain (settings changed) checkpoints/selector' in capsys.readouterr().out
    assert os.path.getmtime('checkpoints/selector/best.pt') > best


def test_two_seeds_train_two_systems_and_report_mean_and_std(tmp_path):
    folder = make_image_folder(tmp_path / 'dataset')  # one student, routed with the teacher as its fallback
    run_tiny_pipeline(tmp_path, folder, '--seeds', '0', '1', '--no-baselines', '--students', 'googlenet')
    for seed in (0, 1):
        selector = torch.load(tmp_path / 'checkpoints' / f'seed{seed}' / 'selector' / 'best.pt', weights_only=True)
        assert selector['config']['seed'] == seed and f'seed{seed}' in selector['experts'][0]['path']
        assert [expert['arch'] for expert in selector['experts']] == ['googlenet', 'resnet50']
        assert (tmp_path / 'results' / f'quick-seed{seed}' / 'accuracy_vs_time.png').exists()
    per_seed = [json.loads((tmp_path / 'results' / f'quick-seed{s}.json').read_text()) for s in (0, 1)]
    summary = json.loads((tmp_path / 'results' / 'quick.json').read_text())
    assert summary['seeds'] == [0, 1] and {'teacher', 'googlenet', 'routed', 'oracle'} <= set(summary['accuracy'])
    for row, agg in summary['accuracy'].items():
        accs = [r['accuracy'][row][0] for r in per_seed]
        assert agg['per_seed'] == accs and abs(agg['mean'] - statistics.mean(accs)) < 1e-12
        assert abs(agg['std'] - statistics.stdev(accs)) < 1e-12
    assert '| teacher |' in (tmp_path / 'results' / 'quick.md').read_text() and ' ± ' in (
        tmp_path / 'results' / 'quick.md').read_text()


def test_repeated_seeds_are_refused_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(['--data-dir', str(tmp_path), '--seeds', '1', '1'])
    assert exit_info.value.code == 2 and not (tmp_path / 'checkpoints').exists()
    assert capsys.readouterr().err.strip() == 'error: --seeds repeats a value (1, 1); give each once'


@pytest.mark.parametrize('name', list(pipeline.PRESETS))
def test_every_preset_trains_the_teacher_longer_than_its_students(name):
    preset = pipeline.PRESETS[name]
    assert preset['teacher_epochs'] >= preset['epochs'] and (name == 'full' or preset['teacher_epochs'] > preset['epochs'])
    for stage in (preset['data'], preset['train'], preset.get('teacher', [])):
        pipeline.parse_args([])  # the preset's flags are real flags of the stages they go to
        teacherTrain.parse_args(stage + ['--dataset', 'folder'])


def test_a_bad_device_or_student_is_refused_before_any_training(tmp_path, capsys):
    for argv, message in ((['--device', 'gpu0'], "unknown --device 'gpu0'"),
                          (['--students', 'vgg'], "argument --students: invalid choice: 'vgg'"),
                          (['--students', 'googlenet', 'googlenet'], '--students repeats a value')):
        with pytest.raises(SystemExit):
            pipeline.main(['--data-dir', str(tmp_path), *argv])
        assert message in capsys.readouterr().err and not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('students', [['googlenet'], ['densenet121', 'googlenet']])
def test_one_student_is_routed_with_the_teacher_as_its_fallback(students, tmp_path, monkeypatch):
    stages = []
    monkeypatch.setattr(pipeline, 'run_stages', lambda batch, *rest: stages.extend(batch))
    args = pipeline.parse_args(['--students', *students, '--root', str(tmp_path), '--no-baselines'])
    pipeline.train_system(args, [], pipeline.PRESETS['quick'], None)
    (selector_argv,) = [argv for module, argv in stages if module is selectorTrain]
    experts = selector_argv[selector_argv.index('--experts') + 1:selector_argv.index('--out')]
    fallback = ['--include-teacher'] if len(students) == 1 else []
    assert experts == [str(tmp_path / s / 'best.pt') for s in students] + fallback


@pytest.mark.parametrize('flags, given', [
    (['--init', 'imagenet', '--stem-stride', '1', '--lr', '0.01'], ['imagenet', '1', '0.01']),
    ([], ['random', None, '0.05'])])
def test_the_init_stem_and_lr_reach_the_teacher_and_every_student_and_twin_not_the_selector(
        flags, given, tmp_path, monkeypatch):
    stages = []
    monkeypatch.setattr(pipeline, 'run_stages', lambda batch, *rest: stages.extend(batch))
    args = pipeline.parse_args(flags + ['--root', str(tmp_path)])
    pipeline.train_system(args, [], pipeline.PRESETS['quick'], None)

    def value(argv, flag):  # as argparse reads it: the last one given
        return argv[len(argv) - 1 - argv[::-1].index(flag) + 1] if flag in argv else None
    reached = {argv[argv.index('--out') + 1]: [value(argv, flag) for flag in ('--init', '--stem-stride', '--lr')]
               for module, argv in stages}
    trained = ('teacher', 'densenet121', 'densenet121-nokd', 'googlenet', 'googlenet-nokd')
    assert reached == {str(tmp_path / run): given for run in trained} | {str(tmp_path / 'selector'): [None] * 3}


@pytest.mark.parametrize('preset, noted', [('fast', True), ('full', True), ('quick', False)])
def test_a_gpu_preset_on_a_cpu_says_so_before_it_trains(monkeypatch, capsys, image_folder, preset, noted):
    def stop(*args):
        raise KeyboardInterrupt  # main_guard's one line, before any stage
    monkeypatch.setattr(pipeline, 'train_system', stop)
    with pytest.raises(SystemExit):
        pipeline.main(['--preset', preset, '--device', 'cpu', '--data-dir', str(image_folder)])
    assert (f'note: --preset {preset} is sized for a GPU' in capsys.readouterr().err) == noted


def test_an_image_size_reaches_every_stage_over_the_presets_and_the_sample_images(monkeypatch, image_folder, tmp_path):
    seen = {}
    def stop(args, common, preset, seed):
        seen['common'] = common
        raise KeyboardInterrupt  # main_guard's one line, before any stage
    monkeypatch.setattr(pipeline, 'train_system', stop)
    with pytest.raises(SystemExit):
        pipeline.main(['--preset', 'smoke', '--image-size', '24', '--device', 'cpu', '--data-dir', str(image_folder)])
    assert teacherTrain.parse_args(seen['common']).image_size == 24  # smoke's own 16 given first, then this
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(['--image-size', '0', '--data-dir', str(image_folder)])
    assert exit_info.value.code == 2
    export_sample_images('folder', str(image_folder), str(tmp_path / 'sample'), 24, per_class=1)
    samples = sorted((tmp_path / 'sample').iterdir())
    assert len(samples) == 3  # one of each class
    for path in samples:
        with Image.open(path) as image:
            assert image.size == (24, 24)

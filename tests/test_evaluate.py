"""evaluate.py on the tiny system of conftest.tiny_runs: tables, JSON and every figure."""
import json
import re
import shutil

import pytest

from conftest import ROOT, TINY, make_image_folder, needs_cuda, run_main, run_script


FIGURES = {'training_curves.png', 'confusion.png', 'per_class_accuracy.png', 'routing_share.png',
           'accuracy_vs_time.png', 'selector_curve.png'}


def test_evaluate_writes_the_report_and_every_figure(tiny_runs):
    work, _ = tiny_runs  # the pipeline ran evaluate.py as `--name quick`
    report = json.loads((work / 'results' / 'quick.json').read_text())
    assert {'teacher', 'densenet121', 'googlenet', 'cascade', 'selector', 'routed', 'oracle', 'random',
            'best single', 'max confidence'} <= set(report['accuracy'])
    oracle = report['accuracy']['oracle'][0]
    assert all(report['accuracy'][name][0] <= oracle + 1e-9 for name in ('densenet121', 'googlenet', 'routed'))
    assert report['compression']['teacher']['macs'] > report['compression']['googlenet']['macs']
    assert all(abs(sum(share.values()) - 1) < 1e-6 for share in report['share'].values())
    assert {'routed (cascade)', 'routed (selector)', 'teacher'} <= set(report['speed'])  # both modes timed here
    weights = report['sweeps']['selector']
    assert weights[-1][2] <= weights[0][2]  # a higher cost weight never costs more
    assert '| routed (' in (work / 'results' / 'quick.md').read_text()
    speed = report['speed']  # every model and mode timed on the whole (tiny) test split; each mode also gathered
    assert {'routed (cascade), gathered', 'routed (selector), gathered'} <= set(speed)
    assert all(row['batch_size'] == report['test_images'] for row in speed.values())
    assert f"time vs best single ({report['best_single']})" in (work / 'results' / 'quick.md').read_text()
    assert f"best of {report['timing_rounds']} rounds" in (work / 'results' / 'quick.md').read_text()
    assert re.search(r'\| routed \(\w+, default\) \|.*\| [\d.]+x \([\d.]+-[\d.]+\) \|',
                     (work / 'results' / 'quick.md').read_text())  # the ratio with its range over the rounds
    assert re.search(r'selectorTrain.py timed both on \d+ val images .* cascade [\d.]+x \([\d.]+-[\d.]+\), '
                     r'selector [\d.]+x \([\d.]+-[\d.]+\)',
                     (work / 'results' / 'quick.md').read_text())  # what picked the default mode
    figures = work / 'results' / 'quick'  # beside the report, not in the tracked images/ folder
    assert {p.name for p in figures.iterdir()} == FIGURES
    assert all((figures / f).stat().st_size > 5000 for f in FIGURES)
    assert report['accuracy']['densenet121 (no KD)'] and report['accuracy']['googlenet (no KD)']
    references = json.loads((work / 'checkpoints' / 'selector' / 'summary.json').read_text())['ranking_references']
    assert set(references) == {'chance', 'confidence', 'best possible'}  # the selector's val curve is read by these
    assert references['chance'] <= references['best possible']
    assert "The selector ranks val images at" in (work / 'results' / 'quick.md').read_text()
    for mode, (points, error) in report['lead'].items():  # the lead is the rows' difference, with its noise
        assert points == pytest.approx(report['accuracy'][mode][0] - report['accuracy']['best single'][0])
        assert f'{mode} {100 * points:+.2f} ± {100 * error:.2f}' in (work / 'results' / 'quick.md').read_text()
    assert set(report['kd_gain']) == {'densenet121', 'googlenet'}  # each distilled student against its twin
    for student, (points, _) in report['kd_gain'].items():
        assert points == pytest.approx(report['accuracy'][student][0] - report['accuracy'][f'{student} (no KD)'][0])
    assert "What distillation gained over each student's no-KD twin" in (work / 'results' / 'quick.md').read_text()


def test_route_picks_the_mode_of_the_routed_row_and_the_report_says_so(tiny_runs, tmp_path):
    work, folder = tiny_runs
    chosen = json.loads((work / 'results' / 'quick.json').read_text())['mode']
    other = 'cascade' if chosen == 'selector' else 'selector'
    run_main(ROOT / 'evaluate.py', '--selector', 'checkpoints/selector', '--data-dir', folder, '--route', other,
             '--results-dir', tmp_path, '--name', 'other', cwd=work)
    report = json.loads((tmp_path / 'other.json').read_text())
    assert report['mode'] == other and report['mode_on_val'] == chosen and report['rows']['routed']['mode'] == other
    assert report['rows']['routed']['accuracy'] == report['rows'][other]['accuracy']
    table = (tmp_path / 'other.md').read_text()
    assert f'Routing mode (--route): {other}; selectorTrain.py chose {chosen} on val' in table
    assert f'| routed ({other}, --route) |' in table


def test_models_alone_are_scored_as_the_system_report_scores_them_and_timed_against_the_first(tiny_runs, tmp_path):
    work, _ = tiny_runs
    run_main(ROOT / 'evaluate.py', '--models', 'checkpoints/teacher', 'checkpoints/googlenet/best.pt',
             '--results-dir', tmp_path, cwd=work)
    report = json.loads((tmp_path / 'models.json').read_text())  # its own default name: not the system's report
    system = json.loads((work / 'results' / 'quick.json').read_text())
    assert list(report['rows']) == ['teacher', 'googlenet'] and report['reference'] == 'teacher'
    for name, row in report['rows'].items():  # the same models on the same stored test split
        assert row['accuracy'] == system['accuracy'][name][0] and row['macs'] == system['accuracy'][name][1]
    lead, error = report['rows']['googlenet']['lead']
    assert lead == pytest.approx(report['rows']['googlenet']['accuracy'] - report['rows']['teacher']['accuracy'])
    assert set(report['speed']) == {'teacher', 'googlenet'} and report['test_images'] == system['test_images']
    accuracy = report['rows']['googlenet']['accuracy']
    row = f"| googlenet | {100 * accuracy:.2f}% | {100 * lead:+.2f} ± {100 * error:.2f} |"
    assert row in (tmp_path / 'models.md').read_text()
    figures = {'training_curves.png', 'confusion.png', 'per_class_accuracy.png'}
    assert {p.name for p in (tmp_path / 'models').iterdir()} == figures


def test_models_of_one_run_name_are_told_apart_by_where_they_lie(tiny_runs, tmp_path):
    work, _ = tiny_runs
    shutil.copytree(work / 'checkpoints' / 'teacher', tmp_path / 'copy' / 'teacher')
    run_main(ROOT / 'evaluate.py', '--models', 'checkpoints/teacher', tmp_path / 'copy' / 'teacher',
             '--results-dir', tmp_path, '--timing-images', '8', cwd=work)
    rows = json.loads((tmp_path / 'models.json').read_text())['rows']
    here, copy = rows.values()
    assert list(rows)[0] == 'checkpoints/teacher' and list(rows)[1].endswith('copy/teacher')
    assert here['accuracy'] == copy['accuracy'] and copy['lead'] == [0.0, 0.0]  # the same weights


def test_models_alone_on_a_new_test_set_of_some_of_their_classes(tiny_runs, tmp_path):
    work, _ = tiny_runs
    new = make_image_folder(tmp_path / 'mine', classes=('Dog', 'cat'), train_per_class=0, test_per_class=3)
    run_main(ROOT / 'evaluate.py', '--models', 'checkpoints/googlenet', '--data-dir', new / 'test',
             '--results-dir', tmp_path, '--name', 'mine', cwd=work)
    report = json.loads((tmp_path / 'mine.json').read_text())
    assert report['test_images'] == 6 and report['data_dir'] == str(new / 'test')
    assert [c is not None for c in report['per_class']['googlenet']] == [c in ('cat', 'dog') for c in report['classes']]
    table = (tmp_path / 'mine.md').read_text().splitlines()
    rows = [line.split(' |')[0] for line in table if line.startswith(('| cat', '| dog', '| ship'))]
    assert rows == ['| cat', '| dog']  # no row for a class it has no images of


@pytest.mark.parametrize('flags, message', [
    (['--models', 'checkpoints/selector'], "'checkpoints/selector/best.pt' is a selector, not an image classifier"),
    (['--models', 'checkpoints/teacher', '--teacher', 'checkpoints/teacher'],
     "--teacher belongs to a routed system's report; --models scores each model alone"),
    (['--models', 'checkpoints/teacher', '--route', 'cascade'], "--route belongs to a routed system's report"),
    (['--models', 'checkpoints/teacher', '--selector', 'checkpoints/selector'],
     'argument --selector: not allowed with argument --models'),
    (['--models', 'checkpoints/teacher', 'checkpoints/teacher/best.pt'],
     "'checkpoints/teacher/best.pt' is given twice as a model; pass each once"),
    (['--models', 'checkpoints/teacher', 'other/googlenet'], "'other/googlenet/best.pt' has other classes than "
                                                             "'checkpoints/teacher/best.pt'; score together only"),
])
def test_bad_models_are_one_clear_line(tiny_runs, flags, message):
    work, _ = tiny_runs
    if 'other/googlenet' in flags and not (work / 'other' / 'googlenet' / 'best.pt').exists():
        folder = make_image_folder(work / 'other-classes', classes=('cat', 'dog'))
        run_main(ROOT / 'teacherTrain.py', *TINY, '--data-dir', folder, '--arch', 'googlenet', '--out',
                 'other/googlenet', cwd=work)
    result = run_main(ROOT / 'evaluate.py', *flags, cwd=work, check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.startswith(f'error: {message}') and result.stderr.count('\n') == 1


def test_a_checkpoint_that_is_not_a_selector_is_one_clear_line(tiny_runs):
    work, folder = tiny_runs
    for script, extra in (('evaluate.py', []), ('infer.py', [folder])):
        result = run_main(ROOT / script, *extra, '--selector', 'checkpoints/teacher/best.pt', cwd=work, check=False)
        assert result.returncode == 2 and 'Traceback' not in result.stderr
        assert result.stderr.strip() == ("error: 'checkpoints/teacher/best.pt' is a resnet50 checkpoint, not a "
                                         "selector; pass the best.pt that selectorTrain.py wrote (default "
                                         "checkpoints/selector/best.pt), or use this model alone: infer.py "
                                         "--teacher PATH, evaluate.py --models PATH")


def test_test_data_of_other_classes_is_one_clear_line(tiny_runs, tmp_path):
    work, _ = tiny_runs
    other = make_image_folder(tmp_path / 'other', classes=('apple', 'cat'), train_per_class=2, test_per_class=2)
    result = run_main(ROOT / 'evaluate.py', '--data-dir', other, '--results-dir', tmp_path / 'results', cwd=work,
                      check=False)  # a reshape error deep in the routing
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: the test images at '{other}' include the classes apple, which the models did not learn (they "
        f"learned cat, dog, ship); leave those classes out of --data-dir")


def test_a_new_test_set_of_some_of_the_classes_is_scored_by_their_names(tiny_runs, tmp_path):
    work, folder = tiny_runs
    new = tmp_path / 'new-test-set'
    for cls in ('dog', 'ship'):  # test/ alone, without cat: a new test set, not data to train on
        shutil.copytree(folder / 'test' / cls, new / 'test' / cls)
    # the class folders alone, as torchvision's ImageFolder lays them out (the folder is test/ itself): read as
    # test/<class>/ is, image for image (tests/test_data.py)
    run_main(ROOT / 'evaluate.py', '--data-dir', new / 'test', '--name', 'new', '--results-dir', tmp_path / 'r',
             cwd=work)
    run_main(ROOT / 'evaluate.py', '--data-dir', folder, '--name', 'all', '--results-dir', tmp_path / 'r', cwd=work)
    new, whole = (json.loads((tmp_path / 'r' / f'{name}.json').read_text()) for name in ('new', 'all'))
    assert new['test_images'] == 8 and whole['test_images'] == 12  # every test image
    for model in ('teacher', 'densenet121', 'googlenet', 'routed'):  # each class scored as among all three
        assert new['per_class'][model][0] is None and new['per_class'][model][1:] == whole['per_class'][model][1:]


@pytest.mark.parametrize('args, message', [
    (['--test-subset', '0'], '--test-subset must be at least 1 (got 0)'),
    (['--timing-images', '0'], '--timing-images must be at least 1 (got 0)'),
    (['--batch-size', '-4'], '--batch-size must be at least 1 (got -4)'),
    (['--name', 'runs/a'], "--name 'runs/a' names the report's files, not a folder"),
    (['--selector', 'sel.pt', './sel.pt'], '--selector repeats a value')])
def test_settings_that_would_be_ignored_or_write_elsewhere_are_refused_before_anything_loads(args, message):
    import evaluate
    from distill import UserError
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate.parse_args(args)


def test_students_moved_without_their_teacher_are_evaluated_without_it(tiny_runs, tmp_path):
    work, folder = tiny_runs
    moved = tmp_path / 'moved'
    for run in ('densenet121', 'googlenet', 'selector'):
        shutil.copytree(work / 'checkpoints' / run, moved / 'checkpoints' / run)
    result = run_main(ROOT / 'evaluate.py', '--selector', 'checkpoints/selector', '--data-dir', folder,
                      '--name', 'moved', cwd=moved)
    assert "note: the experts' teacher 'checkpoints/teacher/best.pt' is not here" in result.stdout
    report = json.loads((moved / 'results' / 'moved.json').read_text())
    assert 'teacher' not in report['accuracy'] and {'densenet121', 'googlenet', 'routed'} <= set(report['accuracy'])


@needs_cuda
def test_evaluate_on_the_gpu_scores_what_the_cpu_scored(tiny_runs):
    work, folder = tiny_runs
    for device in ('cpu', 'cuda'):  # float32 on both (TF32 convolutions on the GPU): bf16 would flip near ties
        run_script(ROOT / 'evaluate.py', '--selector', 'checkpoints/selector', '--data-dir', folder,
                   '--name', f'on-{device}', '--device', device, '--amp', 'off', cwd=work)
    cpu, cuda = (json.loads((work / 'results' / f'on-{device}.json').read_text()) for device in ('cpu', 'cuda'))
    assert cuda['device'] != cpu['device'] and set(cuda['speed']) == set(cpu['speed'])
    one_image = 1 / cpu['test_images']
    assert all(abs(cuda['accuracy'][name][0] - cpu['accuracy'][name][0]) <= one_image + 1e-6 for name in cpu['accuracy'])


def test_a_full_disk_leaves_the_last_report_and_its_figures_whole(tiny_runs, tmp_path, monkeypatch, capsys):
    """The report was written before its figures, and each figure in turn: a disk that filled while drawing the
    last one left a new report beside the old figures, and some figures of each run. With room again, evaluate
    runs over the report and figures it wrote (the default --name, whose figures folder is results/report/)."""
    import errno
    import io
    import evaluate
    from distill import checkpoint
    work, folder = tiny_runs
    monkeypatch.chdir(work)
    results = tmp_path / 'results'
    args = ['--selector', 'checkpoints/selector', '--data-dir', str(folder), '--results-dir', str(results),
            '--device', 'cpu']
    shutil.copytree(work / 'results' / 'quick', results / 'report')  # what evaluate.py wrote in the pipeline
    for suffix in ('.json', '.md'):
        shutil.copy(work / 'results' / f'quick{suffix}', results / f'report{suffix}')

    def files():
        return {str(p.relative_to(results)): p.read_bytes() for p in results.rglob('*') if p.is_file()}
    before = files()
    assert {'report.json', 'report.md'} | {f'report/{name}' for name in FIGURES} == before.keys()

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, 'No space left on device')
    real_open = open
    monkeypatch.setattr(checkpoint, 'open', lambda name, mode, **kw: FullDisk(name, 'w')
                        if 'selector_curve.png' in name else real_open(name, mode, **kw), raising=False)
    with pytest.raises(SystemExit):
        evaluate.main(args)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: could not write '{results / 'report' / 'selector_curve.png'}' (No space left on device); "
                   f"free some space or choose another path, then run again (what was there before is unchanged)")
    assert files() == before  # and no staged figures are left beside them:
    assert sorted(p.name for p in results.iterdir()) == ['report', 'report.json', 'report.md']
    inodes = {name: (results / name).stat().st_ino for name in before}
    monkeypatch.undo()
    monkeypatch.chdir(work)
    evaluate.main(args)  # with room again, every file is replaced
    assert files().keys() == before.keys()
    assert f"images of `folder` in `{folder}`" in (results / 'report.md').read_text()  # the data read
    assert all((results / name).stat().st_ino != inode for name, inode in inodes.items())

"""infer.py on a folder of mixed, partly broken files, through the tiny selector of conftest.tiny_runs."""
import csv
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, needs_cuda, run_main, run_script

INFER = ROOT / 'infer.py'


@pytest.fixture
def messy_folder(tmp_path):
    folder = tmp_path / 'pictures'
    (folder / 'nested' / 'deeper').mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / 'photo.png')
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / 'nested' / 'photo.jpg')
    Image.new('L', (17, 9), 90).save(folder / 'gray.png')
    Image.new('RGBA', (8, 8), (0, 0, 255, 128)).save(folder / 'nested' / 'alpha.png')
    Image.fromarray(np.full((10, 10), 40000, np.uint16)).save(folder / 'nested' / 'deeper' / 'deep16.png')
    Image.new('P', (12, 12), 5).save(folder / 'palette.gif')
    (folder / 'empty.jpg').write_bytes(b'')
    (folder / 'readme.txt').write_text('not a picture')
    jpeg = io.BytesIO()
    Image.new('RGB', (64, 64), 'red').save(jpeg, 'JPEG')
    (folder / 'truncated.jpg').write_bytes(jpeg.getvalue()[:100])
    return folder


def _rows(path):
    with open(path) as f:
        return {row['path'].split('pictures/')[1]: row for row in csv.DictReader(f)}


def test_infer_predicts_readable_images_and_lists_the_rest(tiny_runs, messy_folder):
    work, _ = tiny_runs
    result = run_script(INFER, messy_folder, '--out', messy_folder.parent / 'p.csv', '--batch-size', '2',
                        cwd=work)
    rows = _rows(messy_folder.parent / 'p.csv')
    good = {'photo.png', 'nested/photo.jpg', 'gray.png', 'nested/alpha.png', 'nested/deeper/deep16.png', 'palette.gif'}
    bad = {'empty.jpg', 'readme.txt', 'truncated.jpg'}
    assert set(rows) == good | bad
    for name in good:
        assert rows[name]['error'] == '' and rows[name]['prediction'] in ('cat', 'dog', 'ship')
        assert rows[name]['expert'] in ('densenet121', 'googlenet') and 0 < float(rows[name]['confidence']) <= 1
    for name in bad:
        assert rows[name]['error'] and rows[name]['prediction'] == ''
        assert name in result.stderr
    assert '6 images classified, 3 unreadable' in result.stdout


def test_decoding_in_workers_gives_the_same_table_and_names_that_are_not_utf8_keep_their_bytes(
        tiny_runs, messy_folder, tmp_path):
    import os
    work, _ = tiny_runs
    latin1 = os.fsdecode(b'caf\xe9.png')  # a Latin-1 name from an old camera or archive
    try:
        Image.new('RGB', (8, 8)).save(messy_folder / latin1, format='PNG')
    except OSError:
        pytest.skip('this file system accepts only UTF-8 names')
    run_main(INFER, messy_folder, '--workers', 0, '--batch-size', 2, '--out', tmp_path / 'p.csv', cwd=work)
    written = (tmp_path / 'p.csv').read_bytes()
    assert b'/pictures/caf\xe9.png,' in written and len(written.splitlines()) == 1 + 10  # unreadable files too
    streamed = run_script(INFER, messy_folder, '--workers', 2, '--batch-size', 2, '--out', '-', cwd=work)
    assert os.fsencode(streamed.stdout) == written


@needs_cuda
def test_infer_on_the_gpu_with_decoding_workers_predicts_what_the_cpu_predicts(tiny_runs, messy_folder, tmp_path):
    work, _ = tiny_runs
    for device, workers in (('cpu', 0), ('cuda', 2)):  # float32 on both: bf16 would flip near ties
        run_script(INFER, messy_folder, '--device', device, '--amp', 'off', '--workers', workers,
                   '--batch-size', '2', '--out', tmp_path / f'{device}.csv', cwd=work)
    cpu, cuda = _rows(tmp_path / 'cpu.csv'), _rows(tmp_path / 'cuda.csv')
    assert set(cpu) == set(cuda) and {n for n in cpu if cpu[n]['error']} == {n for n in cuda if cuda[n]['error']}
    assert sum(cpu[n]['prediction'] != cuda[n]['prediction'] for n in cpu) <= 1


def test_single_expert_teacher_and_json_output(tiny_runs, messy_folder):
    work, _ = tiny_runs
    out = messy_folder.parent / 'p.json'
    run_main(INFER, messy_folder, '--expert', 'googlenet', '--out', out, cwd=work)
    rows = json.loads(out.read_text())
    assert len(rows) == 9 and {r['expert'] for r in rows if not r['error']} == {'googlenet'}
    run_main(INFER, messy_folder, '--teacher', 'checkpoints/teacher/best.pt', '--out', out, cwd=work)
    assert {r['expert'] for r in json.loads(out.read_text()) if not r['error']} == {'teacher'}


def test_runs_moved_together_infer_from_any_directory(tiny_runs, messy_folder, tmp_path):
    """A selector names its experts by the paths it was trained with; a copied tree must still find its own."""
    work, _ = tiny_runs
    run_main(INFER, messy_folder, '--out', tmp_path / 'here.csv', cwd=work)
    shutil.copytree(work / 'checkpoints', tmp_path / 'copy' / 'runs')
    shutil.move(work / 'checkpoints', tmp_path / 'hidden')  # so nothing can be found by the stored paths as given
    try:
        run_main(INFER, messy_folder, '--selector', tmp_path / 'copy' / 'runs' / 'selector' / 'best.pt',
                 '--out', tmp_path / 'moved.csv', cwd=messy_folder)
        assert _rows(tmp_path / 'moved.csv') == _rows(tmp_path / 'here.csv')
        shutil.rmtree(tmp_path / 'copy' / 'runs' / 'googlenet')
        result = run_main(INFER, messy_folder, '--selector', tmp_path / 'copy' / 'runs' / 'selector' /
                          'best.pt', cwd=messy_folder, check=False)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
        assert "routes to 'checkpoints/googlenet/best.pt'" in result.stderr
    finally:
        shutil.move(tmp_path / 'hidden', work / 'checkpoints')


def test_a_folder_with_no_readable_image_exits_non_zero_and_its_table_says_why(tiny_runs, tmp_path):
    work, _ = tiny_runs
    folder = tmp_path / 'not-pictures'
    folder.mkdir()
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'empty.jpg').write_bytes(b'')
    result = run_main(INFER, folder, '--out', tmp_path / 'p.csv', cwd=work, check=False)
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == (
        f"error: no file in '{folder}' could be read as an image; pass a folder of images")
    assert '0 images classified, 2 unreadable' in result.stdout
    with open(tmp_path / 'p.csv') as f:
        assert sorted(row['path'].rsplit('/', 1)[1] for row in csv.DictReader(f) if row['error']) == [
            'empty.jpg', 'notes.txt']


def test_a_folder_with_a_sidecar_file_per_photo_names_a_few_on_stderr_and_every_one_in_the_table(tiny_runs, tmp_path):
    work, _ = tiny_runs
    folder = tmp_path / 'takeout'
    folder.mkdir()
    for i in range(8):
        Image.new('RGB', (12, 12), (30 * i, 0, 0)).save(folder / f'{i}.jpg')
        (folder / f'{i}.jpg.json').write_text('{"title": "photo"}')
    result = run_main(INFER, folder, '--out', tmp_path / 'p.csv', cwd=work)
    named = [line for line in result.stderr.splitlines() if line.startswith('skipped /')]
    assert len(named) == 5 and 'skipped 3 more unreadable files; the table lists each' in result.stderr
    assert '8 images classified, 8 unreadable' in result.stdout
    with open(tmp_path / 'p.csv') as f:
        assert sum(bool(row['error']) for row in csv.DictReader(f)) == 8


def test_one_image_file_instead_of_a_folder(tiny_runs, messy_folder, tmp_path):
    work, _ = tiny_runs
    run_main(INFER, messy_folder / 'gray.png', '--out', tmp_path / 'one' / 'p.csv', cwd=work)
    assert list(_rows(tmp_path / 'one' / 'p.csv')) == ['gray.png']  # --out's folder is created


def test_several_folders_and_files_as_a_shell_expands_them_each_read_once(tiny_runs, messy_folder, tmp_path):
    work, _ = tiny_runs
    more = tmp_path / 'more'
    more.mkdir()
    Image.new('RGB', (9, 9), 'blue').save(more / 'sky.png')
    (messy_folder / 'moved.png').symlink_to('gone.png')  # a broken link: listed, as unreadable
    files = sorted(str(p) for p in messy_folder.glob('*.png'))  # what the shell makes of pictures/*.png
    run_main(INFER, *files, messy_folder / 'nested', f'{messy_folder}/./gray.png', more, '--out', tmp_path / 'p.csv',
             cwd=work)
    with open(tmp_path / 'p.csv') as f:
        rows = list(csv.DictReader(f))
    nested = ['alpha.png', 'deeper/deep16.png', 'photo.jpg']
    expected = files + [str(messy_folder / 'nested' / name) for name in nested] + [str(more / 'sky.png')]
    assert [row['path'] for row in rows] == expected  # each once, in the order given, the unreadable too
    assert [row['path'] for row in rows if row['error']] == [str(messy_folder / 'moved.png')]


def test_a_pattern_or_home_no_shell_expanded_is_expanded_as_a_shell_would(tiny_runs, messy_folder, tmp_path,
                                                                          monkeypatch):
    work, _ = tiny_runs
    monkeypatch.setenv('HOME', str(messy_folder))
    # what Windows' cmd, or a quoted argument, passes on as it is
    run_main(INFER, f'{messy_folder}/*.png', '~/nested/**/*.png', '--out', tmp_path / 'p.csv', cwd=work)
    shell = sorted(str(p) for p in messy_folder.glob('*.png')) + [str(messy_folder / 'nested' / name) for name in
                                                                  ('alpha.png', 'deeper/deep16.png')]
    with open(tmp_path / 'p.csv') as f:
        assert [row['path'] for row in csv.DictReader(f)] == shell
    result = run_main(INFER, f'{messy_folder}/*.webp', '--out', tmp_path / 'q.csv', cwd=work, check=False)
    assert result.returncode == 2 and result.stderr == f"error: no file matches '{messy_folder}/*.webp'; pass " \
                                                       f"folders or files of images\n"


def test_a_table_inside_the_folder_is_not_classified_and_an_image_is_never_overwritten(tiny_runs, messy_folder):
    work, _ = tiny_runs
    table = messy_folder / 'nested' / 'predictions.csv'
    for _ in range(2):  # the second run finds the first run's table among the files, and leaves it out
        run_main(INFER, messy_folder, '--out', table, cwd=work)
        assert len(_rows(table)) == 9 and 'nested/predictions.csv' not in _rows(table)
    image = messy_folder / 'gray.png'
    before = image.read_bytes()
    for folder in (messy_folder, image):  # the folder, or the one file
        result = run_main(INFER, folder, '--out', image, cwd=work, check=False)
        assert result.returncode == 2 and f"--out '{image}' is one of the images to classify" in result.stderr
        assert image.read_bytes() == before


@pytest.mark.parametrize('fmt', ['csv', 'json'])
def test_a_file_infer_did_not_write_is_never_replaced_by_its_table(tiny_runs, messy_folder, tmp_path, fmt):
    work, _ = tiny_runs
    table = tmp_path / f'predictions.{fmt}'
    for _ in range(2):  # a table of an earlier run is replaced
        run_main(INFER, messy_folder, '--out', table, cwd=work)
    assert len(_rows(table) if fmt == 'csv' else json.loads(table.read_text())) == 9
    for theirs in (b'name,score\nmine,1\n', b'{"mine": 1}\n', (messy_folder / 'gray.png').read_bytes()):
        table.write_bytes(theirs)  # replaced without a word before
        result = run_main(INFER, messy_folder, '--out', table, cwd=work, check=False)
        assert result.returncode == 2 and 'already holds a file that infer.py did not write' in result.stderr
        assert table.read_bytes() == theirs


@pytest.mark.parametrize('case, message', [
    ('missing_dir', 'does not exist'), ('empty_dir', 'no file found in'),
    ('missing_selector', 'does not exist'), ('unknown_expert', "no expert named 'vgg'"),
    ('teacher_as_expert', 'the teacher too, runs alone with --teacher and its checkpoint'),
    ('out_is_a_folder', 'is a folder, not a file name'), ('archive', 'is an archive; unpack it')])
def test_infer_bad_input_is_one_clear_line(tiny_runs, tmp_path, case, message):
    work, _ = tiny_runs
    folder = tmp_path / 'imgs'
    folder.mkdir()
    if case != 'empty_dir':
        Image.new('RGB', (8, 8)).save(folder / 'a.png')
    args = {'missing_dir': [tmp_path / 'nope'], 'empty_dir': [folder],
            'missing_selector': [folder, '--selector', 'gone.pt'], 'unknown_expert': [folder, '--expert', 'vgg'],
            'teacher_as_expert': [folder, '--expert', 'teacher'],
            'out_is_a_folder': [folder], 'archive': [shutil.make_archive(tmp_path / 'imgs', 'zip', folder)]}[case]
    out = folder if case == 'out_is_a_folder' else tmp_path / 'p.csv'
    result = run_main(INFER, *args, '--out', out, cwd=work, check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / 'p.csv').exists() and not list(tmp_path.rglob('*.tmp*'))


def test_standard_output_json_types_and_each_routing_mode(tiny_runs, messy_folder):
    work, _ = tiny_runs
    result = run_main(INFER, messy_folder, '--out', '-', '--format', 'json', cwd=work)
    rows = json.loads(result.stdout)
    assert len(rows) == 9 and not (work / '-').exists()
    assert all(r['confidence'] is None for r in rows if r['error'])  # null, not ""
    assert all(isinstance(r['confidence'], float) for r in rows if not r['error'])
    assert '6 images classified' in result.stderr
    for mode in ('cascade', 'selector'):
        out = run_main(INFER, messy_folder / 'gray.png', '--route', mode, '--out', '-', cwd=work)
        assert out.stdout.startswith('path,prediction') and '1 image classified' in out.stderr


@pytest.mark.parametrize('args, message', [
    (['--route', 'mixture'], "invalid choice: 'mixture'"),
    (['--route', 'cascade', '--threshold', '1.5'], '--threshold must be between 0 and 1 (got 1.5)'),
    (['--route', 'cascade', '--cost-weight', '0.2'], 'the cascade uses --threshold'),
    (['--threshold', '0.5', '0.9'], 'takes 1 threshold(s), one for each expert but the last; got 2'),
    (['--teacher', 'checkpoints/teacher', '--cost-weight', '5'], '--teacher runs one model on every image'),
    (['--route', 'selector', '--cost', 'measure', '--expert', 'googlenet'], '--expert runs one model'),
])
def test_routing_flags_that_would_do_nothing_or_are_out_of_range_are_one_line(tiny_runs, messy_folder, args, message):
    work, _ = tiny_runs
    result = run_main(INFER, messy_folder, *args, '--out', '-', cwd=work, check=False)
    assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('out, given, written', [
    ('p.json', None, 'json'), ('P.JSON', None, 'json'), ('p.csv', None, 'csv'), ('-', None, 'csv'),
    ('p.json', 'csv', 'csv')])
def test_the_table_format_follows_the_out_files_extension_unless_given(out, given, written):
    import infer
    assert infer.parse_args(['pictures', '--out', out, *(['--format', given] if given else [])]).format == written


@pytest.mark.parametrize('args, message', [
    (['--route', 'selector', '--cost-weight', '-1'], '--cost-weight must be at least 0 (got -1.0)'),
    (['--workers', '-1'], '--workers must be at least 0 (got -1)')])
def test_negative_settings_are_refused_before_anything_loads(args, message):
    import infer
    from distill import UserError
    with pytest.raises(UserError, match=re.escape(message)):
        infer.parse_args(['pictures', *args])


def test_a_cost_timed_on_another_device_is_refused_until_measured_here(tiny_runs, messy_folder, tmp_path,
                                                                       monkeypatch):
    import torch
    from distill.routing import router
    timed_at = []  # each expert is timed again in calls of the batch it will run at: the 9 files, not 256
    measure = router.measure_costs
    monkeypatch.setattr(router, 'measure_costs', lambda experts, images, amp: timed_at.append(len(images)) or
                        measure(experts, images, amp))
    work, _ = tiny_runs
    state = torch.load(work / 'checkpoints' / 'selector' / 'best.pt', weights_only=True)
    for expert in state['experts']:
        expert['device'] = 'NVIDIA H100 80GB HBM3'
    moved = work / 'checkpoints' / 'selector-gpu'
    moved.mkdir(exist_ok=True)
    torch.save({**state, 'config': {**state['config'], 'out': 'checkpoints/selector-gpu'}}, moved / 'best.pt')
    result = run_main(INFER, messy_folder, '--selector', moved, '--route', 'selector', '--out', '-',
                      cwd=work, check=False)
    assert result.returncode == 2 and 'timed on NVIDIA H100 80GB HBM3, not on this device' in result.stderr
    assert '--cost measure' in result.stderr
    for cost in ('measure', 'macs'):
        run_main(INFER, messy_folder, '--selector', moved, '--route', 'selector', '--cost', cost,
                 '--out', tmp_path / f'{cost}.csv', cwd=work)
    assert timed_at == [9]
    run_main(INFER, messy_folder, '--selector', moved, '--route', 'cascade', '--out', '-', cwd=work)


@pytest.mark.parametrize('routed_seconds, noted', [(0.5, False), (1.2, True)])
def test_infer_notes_where_selector_train_timed_routing_slower_than_the_best_expert_alone(
        tiny_runs, messy_folder, routed_seconds, noted):
    import torch
    from distill.runtime import device_name
    work, _ = tiny_runs
    state = torch.load(work / 'checkpoints' / 'selector' / 'best.pt', weights_only=True)
    seconds = {'cascade': routed_seconds, 'selector': routed_seconds, 'alone': 1.0}
    state['routing']['measured'] = {**state['routing']['measured'], 'seconds_per_image': seconds,
                                    'device': device_name(torch.device('cpu'))}
    timed = work / 'checkpoints' / f'selector-timed-{routed_seconds}'
    timed.mkdir(exist_ok=True)
    torch.save({**state, 'config': {**state['config'], 'out': f'checkpoints/{timed.name}'}}, timed / 'best.pt')
    result = run_main(INFER, messy_folder, '--selector', timed, '--out', '-', '--device', 'cpu', cwd=work)
    best = state['experts'][state['routing']['reference']]['name']
    assert (f'the time of {best} alone; --expert {best}' in result.stderr) == noted
    result = run_main(INFER, messy_folder, '--selector', timed, '--route', 'cascade', '--threshold',
                      '0.5', '--out', '-', '--device', 'cpu', cwd=work)
    assert 'note: selectorTrain.py timed' not in result.stderr  # another operating point than the one timed


def test_the_python_example_in_docs_usage_predicts_what_infer_does(tiny_runs, messy_folder, monkeypatch):
    work, _ = tiny_runs
    (work / 'my_pictures').mkdir(exist_ok=True)
    shutil.copy(messy_folder / 'nested' / 'photo.jpg', work / 'my_pictures' / 'cat.jpg')
    shutil.copy(messy_folder / 'photo.png', work / 'my_pictures' / 'ship.png')
    example = (ROOT / 'docs' / 'usage.md').read_text().split('```python\n')[1].split('```')[0]
    monkeypatch.chdir(work)
    names = {}
    exec(example, names)
    out = work / 'my_pictures.csv'
    run_main(INFER, work / 'my_pictures', '--expert', 'googlenet', '--amp', 'off', '--device', 'cpu', '--out', out,
             cwd=work)
    with open(out) as f:
        by_infer = {row['path'].rsplit('/', 1)[1]: row for row in csv.DictReader(f)}
    rows = [by_infer['cat.jpg'], by_infer['ship.png']]
    assert names['predicted'] == [row['prediction'] for row in rows]
    confidences = names['probabilities'].max(1).values.tolist()
    assert confidences == pytest.approx([float(row['confidence']) for row in rows], abs=1e-4)

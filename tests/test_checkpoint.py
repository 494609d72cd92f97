import errno
import io
import json
import os
import signal
import stat
import threading
from pathlib import Path

import pytest
import torch

from distill import UserError
from distill import checkpoint
from distill.checkpoint import (CLASSIFIER_KEYS, check_classifier, check_compatible, linked_path, load_checkpoint,
                                model_from_checkpoint, save_checkpoint, write_json)
from models import build_model


def _state(arch='googlenet'):
    model = build_model(arch, 3)
    return model, {'arch': arch, 'num_classes': 3, 'class_names': ['a', 'b', 'c'], 'image_size': 8,
                   'mean': [0.5] * 3, 'std': [0.2] * 3, 'split': {'seed': 0, 'digest': 'abc'},
                   'model': model.state_dict(), 'epoch': 1, 'best_val_acc': 0.5, 'config': {}}


def test_round_trip_with_weights_only(tmp_path):
    model, state = _state()
    path = tmp_path / 'run' / 'best.pt'
    save_checkpoint(state, str(path))
    loaded = load_checkpoint(str(path))  # torch.load(weights_only=True) inside
    rebuilt = model_from_checkpoint(loaded).eval()
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(rebuilt(images), model.eval()(images))
    assert [p.name for p in path.parent.iterdir()] == ['best.pt']  # no temporary file left


@pytest.mark.parametrize('key', CLASSIFIER_KEYS)
def test_weights_saved_by_other_code_are_refused_naming_what_they_lack(key):
    _, state = _state()
    check_classifier(state, 'best.pt')
    del state[key]
    with pytest.raises(UserError, match=f"'mine.pt' lacks {key}, which every checkpoint of this project holds"):
        check_classifier(state, 'mine.pt')  # a KeyError traceback before, wherever the key was first read


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    _, state = _state()
    path = tmp_path / 'last.pt'
    save_checkpoint(state, str(path))
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b'partial')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(OSError):
        save_checkpoint({**state, 'epoch': 2}, str(path))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['last.pt']


@pytest.mark.parametrize('save', [save_checkpoint, lambda state, path: write_json(path, {'epoch': state['epoch']})])
def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, save):
    _, state = _state()
    path = tmp_path / 'last.pt'
    save({'epoch': 1}, str(path))
    before = path.read_bytes()

    class FullDisk(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, 'No space left on device')
    # torch's own writer turned this into "RuntimeError: unexpected pos"; every writer goes through open here
    monkeypatch.setattr(checkpoint, 'open', lambda name, mode, **kw: io.TextIOWrapper(FullDisk(name, 'w'), **kw)
                        if 'b' not in mode else FullDisk(name, 'w'), raising=False)
    with pytest.raises(UserError, match=r"could not write '.*last.pt' \(No space left on device\); free some space"):
        save({**state, 'epoch': 2}, str(path))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['last.pt']


def test_a_link_is_written_through_and_kept(tmp_path):
    target = tmp_path / 'runs' / 'summary.json'
    target.parent.mkdir()
    target.write_text('old')
    link = tmp_path / 'latest.json'
    link.symlink_to(target)
    write_json(str(link), {'epoch': 2})
    assert link.is_symlink() and json.loads(target.read_text()) == {'epoch': 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ['summary.json']  # no temporary left


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='needs named pipes')
def test_a_pipe_is_written_directly_not_replaced(tmp_path):
    pipe = tmp_path / 'table'
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(Path(pipe).read_text()), daemon=True)
    reader.start()
    write_json(str(pipe), {'epoch': 3})
    reader.join(timeout=10)
    assert json.loads(received[0]) == {'epoch': 3} and stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ['table']


@pytest.mark.parametrize('damage, message', [
    ('missing', 'does not exist; train that stage first'),
    ('only_last', r"does not exist, but '.*last.pt' does; pass that to use it"),
    ('truncated', 'truncated or not a checkpoint'),
    ('text', 'truncated or not a checkpoint'), ('foreign', 'not a checkpoint of this project')])
def test_bad_checkpoints_are_one_line_errors(tmp_path, damage, message):
    path = tmp_path / 'best.pt'
    if damage == 'truncated':
        save_checkpoint(_state()[1], str(path))
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == 'text':
        path.write_text('hello')
    elif damage == 'foreign':
        torch.save({'weights': torch.zeros(2)}, path)
    elif damage == 'only_last':  # a run directory copied without its best.pt
        save_checkpoint(_state()[1], str(tmp_path / 'last.pt'))
    with pytest.raises(UserError, match=message):
        load_checkpoint(str(path))


def test_mismatched_checkpoints_are_refused():
    _, state = _state()
    check_compatible(state, 'x.pt', arch='googlenet', num_classes=3, split=state['split'], image_size=8)
    for field in ({'arch': 'resnet50'}, {'num_classes': 10}, {'split': {'seed': 1, 'digest': 'def'}},
                  {'image_size': 32}):
        key = next(iter(field))
        with pytest.raises(UserError, match=f"has {key}="):
            check_compatible(state, 'x.pt', **field)


def test_weights_that_do_not_fit_their_architecture_say_which_and_what_to_do():
    _, state = _state()
    with pytest.raises(UserError, match=r'cannot rebuild the model in .* \(Missing key\(s\) in state_dict: .*\.\.\.\); '
                                        r'retrain that stage'):  # not only "Error(s) in loading state_dict for"
        model_from_checkpoint({**state, 'arch': 'densenet121'})
    with pytest.raises(UserError, match=r'\(size mismatch for fc.weight: .*\); retrain that stage'):
        model_from_checkpoint({**state, 'num_classes': 5})


def test_a_linked_checkpoint_is_found_beside_its_owner_first_then_as_given(tmp_path, monkeypatch):
    """A selector trained with --out runs/selector stored its expert as runs/densenet121/best.pt."""
    def touch(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'')
        return path
    owner, state = touch(tmp_path / 'moved' / 'runs' / 'selector' / 'best.pt'), {'config': {'out': 'runs/selector'}}
    beside = touch(tmp_path / 'moved' / 'runs' / 'densenet121' / 'best.pt')
    touch(tmp_path / 'runs' / 'densenet121' / 'best.pt')  # a same-named run where the user stands: not it
    monkeypatch.chdir(tmp_path)
    assert os.path.samefile(linked_path('runs/densenet121/best.pt', str(owner), state), beside)
    assert linked_path('runs/googlenet/best.pt', str(owner), state) is None
    touch(tmp_path / 'runs' / 'googlenet' / 'best.pt')  # the stored path, still valid from here
    assert linked_path('runs/googlenet/best.pt', str(owner), state) == os.path.join('runs', 'googlenet', 'best.pt')


def not_deferred(signum, frame):  # in place of the default, which would end the test session itself
    raise RuntimeError(f'signal {signum} reached the process during the save')


@pytest.mark.parametrize('stop', [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; kill, timeout or a scheduler
def test_a_stop_signal_during_a_save_finishes_the_file_then_stops(tmp_path, monkeypatch, stop):
    _, state = _state()
    path = tmp_path / 'last.pt'
    real_save = torch.save

    def interrupted(obj, f):
        os.kill(os.getpid(), stop)  # in the middle of writing
        real_save(obj, f)
    monkeypatch.setattr(torch, 'save', interrupted)
    before = signal.signal(signal.SIGTERM, not_deferred)
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(state, str(path))
        assert signal.getsignal(signal.SIGTERM) is not_deferred  # restored
    finally:
        signal.signal(signal.SIGTERM, before)
    assert load_checkpoint(str(path))['epoch'] == 1  # written whole before the interrupt was let through
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_a_real_training_run_is_one_line_and_resume_continues(image_folder, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    argv = [sys.executable, str(ROOT / 'teacherTrain.py'), '--dataset', 'folder', '--data-dir', str(image_folder),
            '--image-size', '8', '--val-size', '6', '--route-size', '6', '--batch-size', '8', '--arch', 'googlenet',
            '--epochs', '8', '--out', str(tmp_path / 'run')]
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '2'}
    process = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    while not (tmp_path / 'run' / 'last.pt').exists() and time.time() < deadline:  # interrupt mid-run, saves included
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=300)[1]
    assert process.returncode == 130 and err.strip().splitlines()[-1].startswith('interrupted;')
    assert 'Traceback' not in err
    resumed = subprocess.run(argv[:-4] + ['--epochs', '8', '--out', str(tmp_path / 'run'), '--resume'], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and 'resumed' in resumed.stdout


def test_a_run_made_before_a_setting_existed_was_made_with_its_first_value():
    before_init = {'lr': 0.1, 'epochs': 3}
    assert checkpoint.changed_settings(before_init, {'lr': 0.1, 'init': 'random'}) == []
    assert checkpoint.changed_settings(before_init, {'lr': 0.1, 'init': 'imagenet'}) == ['init']
    assert checkpoint.changed_settings({'init': 'imagenet'}, {'init': 'random', 'out': 'there'}) == ['init']

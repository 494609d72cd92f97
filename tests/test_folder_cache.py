"""distill/folder_cache.py: a decoded folder kept on disk as it is decoded, mapped when read, decoded once."""
import io
import os
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distill.data
import distill.folder_cache
from distill import UserError
from distill.data import load_dataset, prepare_data
from conftest import make_image_folder


def test_a_later_run_from_the_cache_says_again_which_files_were_skipped(tmp_path, capsys, monkeypatch):
    root = make_image_folder(tmp_path / 'd', classes=('a', 'b'), train_per_class=2, test_per_class=1)
    (root / 'test' / 'b' / 'empty.jpg').write_bytes(b'')
    load_dataset('folder', str(root), train=True, image_size=8, cache_dir=str(tmp_path / 'cache'))
    said = capsys.readouterr().err
    monkeypatch.setattr(distill.folder_cache, 'WARNED', set())  # a new process
    monkeypatch.setattr(distill.data, '_decode_folder', None)  # read from the cache, not decoded
    load_dataset('folder', str(root), train=False, image_size=8, cache_dir=str(tmp_path / 'cache'))
    assert 'skipped 1 unreadable file(s)' in said and capsys.readouterr().err == said


@pytest.mark.skipif(not os.path.exists('/proc/self/maps'), reason='needs Linux to list mapped files')
def test_a_decoded_folder_is_mapped_from_its_cache_file_and_reads_the_same_from_it_later(image_folder, tmp_path):
    decoded = load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(tmp_path))
    cache_file = str(next(tmp_path.glob('folder-*/train.npy')))
    assert cache_file in Path('/proc/self/maps').read_text()  # not held in memory, even when first decoded
    cached = load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(tmp_path))
    assert torch.equal(cached.images, decoded.images) and torch.equal(cached.labels, decoded.labels)
    cached.images[0] = 0  # copy-on-write: a change stays in this process, the file is never written
    assert torch.equal(load_dataset('folder', str(image_folder), train=True, image_size=8,
                                    cache_dir=str(tmp_path)).images, decoded.images)


def test_a_cache_on_a_file_system_that_cannot_map_files_is_read_not_decoded_again(image_folder, tmp_path, monkeypatch):
    decoded = load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(tmp_path))
    load = np.load

    def unmappable(*args, mmap_mode=None, **kwargs):
        if mmap_mode:
            raise OSError(19, 'No such device')
        return load(*args, **kwargs)
    monkeypatch.setattr(np, 'load', unmappable)
    monkeypatch.setattr(distill.data, '_decode_folder', None)  # decoding again would fail
    cached = load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(tmp_path))
    assert torch.equal(cached.images, decoded.images)


def test_the_decoded_folder_cache_goes_where_data_cache_says(image_folder, tmp_path):
    args = SimpleNamespace(dataset='folder', data_dir=str(image_folder), image_size=8, subset=None, test_subset=None,
                           seed=0, val_size=3, route_size=3, data_cache=str(tmp_path / 'elsewhere'))
    prepare_data(args)
    assert len(list((tmp_path / 'elsewhere').glob('folder-*/meta.pt'))) == 1 and not (tmp_path / 'data').exists()


def _left_in(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_folder_that_would_outgrow_the_free_disk_is_refused_while_decoding_and_leaves_nothing(
        image_folder, tmp_path, monkeypatch):
    # Room for 10 images at 8 px: the 7th (test/dog's 3rd) needs 11, as test/cat's 4 are written twice for a while.
    monkeypatch.setattr(distill.folder_cache, 'free_disk', lambda folder: 10 * 3 * 8 * 8)
    with pytest.raises(UserError, match=r"the first 7 images of .* at --image-size 8 .* free on the disk at '.*'; "
                                        r"free some space, point --data-cache \(or \$DISTILL_CACHE\) at a disk with "
                                        r"room, or pass a smaller --image-size"):
        load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(tmp_path / 'c'))
    assert _left_in(tmp_path / 'c') == []
    monkeypatch.undo()
    one_image = distill.data.RESIZE_COPIES * 3 * 8 * 8  # the memory needed: one image is held at a time
    monkeypatch.setattr(distill.data, 'free_memory', lambda: one_image)
    assert len(load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(tmp_path / 'c')))


def test_an_image_size_whose_one_resized_image_would_not_fit_in_memory_is_one_line(
        image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(distill.data, 'free_memory', lambda: distill.data.RESIZE_COPIES * 3 * 8 * 8 - 1)
    with pytest.raises(UserError, match=r"one image of '.*' at --image-size 8 \(192 B each\) need 960 B, more than "
                                        r"the 959 B of free memory, and the OS would kill this run; pass a smaller "
                                        r"--image-size"):
        load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(tmp_path / 'c'))
    assert _left_in(tmp_path / 'c') == []


def test_a_disk_that_fills_while_decoding_ends_in_one_line_and_leaves_nothing(image_folder, tmp_path, monkeypatch):
    written = []

    class FillingFile(io.FileIO):
        def write(self, data):
            written.append(len(data))
            if len(written) > 5:
                raise OSError(28, 'No space left on device')
            return super().write(data)
    monkeypatch.setattr(distill.folder_cache, 'open', lambda name, mode='r': FillingFile(name, mode.replace('b', '')),
                        raising=False)
    with pytest.raises(UserError, match=r"could not write the decoded images in '.*' \(No space left on device\); "
                                        r"free some space there, or point --data-cache"):
        load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(tmp_path / 'c'))
    assert _left_in(tmp_path / 'c') == []


def test_a_cache_folder_that_cannot_be_written_decodes_into_a_temporary_one_and_removes_it(
        image_folder, tmp_path, monkeypatch, capsys):
    (tmp_path / 'a-file').write_text('')
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'tmp'))
    (tmp_path / 'tmp').mkdir()
    data = load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(tmp_path / 'a-file' / 'c'))
    assert len(data) == 36 and data.images[:, 0].float().mean() > 0  # still readable: mapped files outlive removal
    assert "warning: could not cache the decoded images in '" in capsys.readouterr().err
    assert _left_in(tmp_path / 'tmp') == []


def test_what_a_killed_decoding_of_the_folder_left_is_removed_by_the_next_decoding(image_folder, tmp_path,
                                                                                     monkeypatch):
    cache = tmp_path / 'c'
    cache.mkdir()
    name = f"folder-{distill.data._fingerprint(str(image_folder), 8)}.part-"
    (cache / f'{name}4194999-abc').mkdir()  # past Linux's largest pid: no such process
    (cache / f'{name}{os.getpid()}-def').mkdir()  # a live decoding's (this process stands in for it)
    before_an_edit = name.rsplit('-', 2)[0] + '-0000000000000000.part-4194999-ghi'  # killed before its files changed
    (cache / before_an_edit).mkdir()
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return torch.zeros(3, 8, 8, dtype=torch.uint8)
    monkeypatch.setattr(distill.data, 'read_image', interrupted)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C: its own part removed
        load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(cache))
    assert _left_in(cache) == [f'{name}{os.getpid()}-def']


def test_a_changed_folders_new_cache_replaces_its_old_one_and_earlier_versions_caches(image_folder, tmp_path):
    cache = tmp_path / 'c'
    other = make_image_folder(tmp_path / 'other')
    for folder in (image_folder, other):
        load_dataset('folder', str(folder), train=True, image_size=8, cache_dir=str(cache))
    load_dataset('folder', str(image_folder), train=True, image_size=4, cache_dir=str(cache))  # another size
    (cache / 'folder-0123456789abcdef').mkdir()  # as versions before this one named a cache
    (cache / 'folder-fedcba9876543210.pt').write_bytes(b'and before that')
    (cache / 'notes.txt').write_text('not ours')
    old = {path.name for path in cache.glob('folder-*-*') if '.' not in path.name}
    assert len(old) == 3
    (image_folder / 'train' / 'cat' / '000.png').unlink()  # the folder changes: decoded anew, the old cache goes
    data = load_dataset('folder', str(image_folder), train=True, image_size=8, cache_dir=str(cache))
    assert len(data) == 35
    new = {path.name for path in cache.glob('folder-*-*') if '.' not in path.name}
    (replaced,), (replacing,) = old - new, new - old  # same folder and size (source), other files (content)
    assert replaced.rsplit('-', 1)[0] == replacing.rsplit('-', 1)[0]
    assert sorted(path.name for path in cache.iterdir() if not path.name.startswith('folder-')) == ['notes.txt']
    assert not (cache / 'folder-0123456789abcdef').exists() and not (cache / 'folder-fedcba9876543210.pt').exists()


def test_processes_loading_one_folder_at_once_decode_it_once_and_say_why_one_waits(
        image_folder, tmp_path, monkeypatch, capsys):
    read, real_read = [], distill.data.read_image

    def slow_read(*args):  # long enough for the other to arrive while this one decodes
        read.append(1)
        time.sleep(0.01)
        return real_read(*args)
    monkeypatch.setattr(distill.data, 'read_image', slow_read)
    loaded = []
    loads = [threading.Thread(target=lambda: loaded.append(load_dataset(
        'folder', str(image_folder), train=True, image_size=8, cache_dir=str(tmp_path / 'c')))) for _ in range(2)]
    for load in loads:
        load.start()
    for load in loads:
        load.join()
    assert len(read) == 48 and torch.equal(loaded[0].images, loaded[1].images)  # as torchrun's processes would
    assert "waiting for another run to finish decoding into '" in capsys.readouterr().err


def test_an_archive_that_visits_more_classes_than_files_held_open_reads_as_its_folder(tmp_path):
    classes = [f'c{i:02d}' for i in range(70)]  # past the 64 class files held open at once
    root = make_image_folder(tmp_path / 'd', classes=classes, train_per_class=2, test_per_class=1)
    archive = tmp_path / 'd.tar'
    with tarfile.open(archive, 'w') as tar:  # class by class in turn: each class's file is closed, then reopened
        for i in range(2):
            for split in ('train', 'test'):
                for cls in classes:
                    if (root / split / cls / f'{i:03d}.png').exists():
                        tar.add(root / split / cls / f'{i:03d}.png', f'd/{split}/{cls}/{i:03d}.png')
    from_folder = load_dataset('folder', str(root), train=True, cache_dir=str(tmp_path / 'c1'))
    from_tar = load_dataset('folder', str(archive), train=True, cache_dir=str(tmp_path / 'c2'))
    assert from_tar.classes == classes and torch.equal(from_tar.labels, torch.arange(70).repeat_interleave(2))
    assert torch.equal(from_tar.images, from_folder.images)

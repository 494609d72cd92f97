import hashlib
import io
import os
import re
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets

import distill.data
import distill.folder_cache
from distill import UserError
from distill.data import (ImageSet, balanced_subset, channel_stats, default_dataset, interleave_classes, load_dataset,
                          load_test_set, make_split, resize_images, subset_of)
from conftest import HEIC_START, SHARED_ARCHIVE, make_image_folder, needs_cuda, write_cifar


def _md5_lists(base, files):
    return [[f, hashlib.md5((base / f).read_bytes()).hexdigest()] for f in files]


def _generated_cifar(root, monkeypatch, name='cifar10', **sizes):
    """A CIFAR written in torchvision's on-disk format, which torchvision then reads without downloading."""
    base = write_cifar(root, name, num_classes=10 if name == 'cifar10' else 100, **sizes)
    cls = datasets.CIFAR10 if name == 'cifar10' else datasets.CIFAR100
    # torchvision checks md5 sums of the real files; point it at the generated ones instead of downloading.
    train_files = ['data_batch_%d' % i for i in range(1, 6)] if name == 'cifar10' else ['train']
    monkeypatch.setattr(cls, 'train_list', _md5_lists(base, train_files))
    monkeypatch.setattr(cls, 'test_list', _md5_lists(base, ['test_batch' if name == 'cifar10' else 'test']))
    meta = cls.meta['filename']
    monkeypatch.setattr(cls, 'meta', {**cls.meta, 'md5': _md5_lists(base, [meta])[0][1]})
    return base / train_files[0]


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifar_on_disk_format_is_read_by_torchvision(tmp_path, monkeypatch, name):
    first_batch = _generated_cifar(tmp_path, monkeypatch, name, n_train=30, n_test=20)
    train = load_dataset(name, str(tmp_path), train=True)
    test = load_dataset(name, str(tmp_path), train=False, image_size=16)
    assert train.images.shape == (150 if name == 'cifar10' else 30, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (20, 3, 16, 16)
    assert train.classes[0] == 'class0' and len(train.classes) == (10 if name == 'cifar10' else 100)
    raw = np.frombuffer(__import__('pickle').loads(first_batch.read_bytes())['data'][0], np.uint8)
    assert torch.equal(train.images[0].flatten(), torch.from_numpy(raw.copy()))  # CHW order kept


def test_cifar_enlarged_is_resized_once_into_the_cache_and_mapped_from_there(tmp_path, monkeypatch):
    _generated_cifar(tmp_path, monkeypatch, n_train=30, n_test=20)
    cache = tmp_path / 'cache'
    cache.mkdir()
    resized = resize_images(load_dataset('cifar10', str(tmp_path), train=False).images, 48)
    (cache / 'cifar10-test-48px-0123456789abcdef.npy').write_bytes(b'from a CIFAR since replaced')
    (cache / 'cifar10-test-48px-0123456789abcdef.npy.part-4194999-x').write_bytes(b'a killed run')  # no such pid
    test = load_dataset('cifar10', str(tmp_path), train=False, image_size=48, cache_dir=str(cache))
    assert torch.equal(test.images, resized) and test.labels.tolist() == [i % 10 for i in range(20)]
    [file] = os.listdir(cache)  # the older file and the killed run's part are gone, and no lock is left
    assert re.fullmatch('cifar10-test-48px-[0-9a-f]{16}.npy', file)

    with open(cache / file, 'r+b') as f:  # the next run maps the file and resizes nothing
        f.seek(-1, os.SEEK_END)
        f.write(bytes([255 - resized[-1, -1, -1, -1].item()]))
    monkeypatch.setattr(F, 'interpolate', lambda *args, **kwargs: pytest.fail('resized again'))
    again = load_dataset('cifar10', str(tmp_path), train=False, image_size=48, cache_dir=str(cache))
    assert again.images[-1, -1, -1, -1] == 255 - resized[-1, -1, -1, -1] and torch.equal(again.images[0], resized[0])
    monkeypatch.undo()

    _generated_cifar(tmp_path, monkeypatch, n_train=30, n_test=20)
    with open(cache / file, 'r+b') as f:  # cut short, by a full disk say: resized again
        f.truncate(os.path.getsize(cache / file) // 2)
    assert torch.equal(load_dataset('cifar10', str(tmp_path), False, 48, str(cache)).images, resized)
    assert os.listdir(cache) == [file]


def test_a_cifar_subset_is_taken_before_enlarging_the_same_pixels_for_a_fraction_of_the_work(tmp_path, monkeypatch):
    _generated_cifar(tmp_path, monkeypatch, n_train=30, n_test=20)
    whole = load_dataset('cifar10', str(tmp_path), train=True)
    kept = balanced_subset(whole.labels, 40)
    cache = tmp_path / 'cache'
    subset = load_dataset('cifar10', str(tmp_path), train=True, image_size=48, cache_dir=str(cache), subset=40)
    assert torch.equal(subset.images, resize_images(whole.images, 48)[kept])
    assert torch.equal(subset.labels, whole.labels[kept])
    [file] = cache.glob('cifar10-train-48px-*.npy')
    assert np.load(file, mmap_mode='r').shape == (40, 3, 48, 48)  # the 40 images resized and kept, not all 150


def test_cifar_enlarged_beyond_the_disk_is_resized_in_memory_where_it_fits_there(tmp_path, monkeypatch, capsys):
    _generated_cifar(tmp_path, monkeypatch, n_train=30, n_test=20)
    resized = resize_images(load_dataset('cifar10', str(tmp_path), train=False).images, 64)
    monkeypatch.setattr(distill.folder_cache, 'free_disk', lambda folder: 20 * 3 * 64 * 64 - 1)  # 20 at 64 px, but 1 B
    test = load_dataset('cifar10', str(tmp_path), train=False, image_size=64, cache_dir=str(tmp_path / 'cache'))
    assert torch.equal(test.images, resized) and not list((tmp_path / 'cache').glob('*.npy*'))
    assert re.search(r"note: could not keep the 20 images of cifar10 at --image-size 64 in '.*cache' \(240.0 KiB "
                     r"needed, 240.0 KiB free\); resizing them in memory", capsys.readouterr().err)
    monkeypatch.setattr(distill.data, 'free_memory', lambda: 20 * 3 * 64 * 64 - 1)
    with pytest.raises(UserError, match=r'the 20 images of cifar10 at --image-size 64 \(12.0 KiB each\) need 240.0 '
                                        r'KiB, more than .* pass a smaller --image-size, or point --data-cache .* at a '
                                        r'disk with room'):
        load_dataset('cifar10', str(tmp_path), train=False, image_size=64, cache_dir=str(tmp_path / 'cache'))


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifars_own_archive_given_as_a_folder_says_how_to_read_it_and_that_works_offline(tmp_path, monkeypatch, name):
    base = write_cifar(tmp_path / 'extracted', name, num_classes=10 if name == 'cifar10' else 100)
    cls = datasets.CIFAR10 if name == 'cifar10' else datasets.CIFAR100
    archive = tmp_path / 'downloads' / cls.filename
    archive.parent.mkdir()
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(base, arcname=base.name)
    with pytest.raises(UserError, match=re.escape(f"'{archive}' is {name}'s own archive, not a folder of images; "
                                                  f"pass --dataset {name} --data-dir {archive.parent}")):
        load_dataset('folder', str(archive), train=True, cache_dir=str(tmp_path / 'cache'))
    # as advised: torchvision finds the archive beside it and unpacks it, with no network (sums of the generated files)
    monkeypatch.setattr(cls, 'tgz_md5', hashlib.md5(archive.read_bytes()).hexdigest())
    for attr in ('train_list', 'test_list'):
        monkeypatch.setattr(cls, attr, _md5_lists(base, [f for f, _ in getattr(cls, attr)]))
    monkeypatch.setattr(cls, 'meta', {**cls.meta, 'md5': _md5_lists(base, [cls.meta['filename']])[0][1]})
    monkeypatch.setattr(cls, 'url', 'http://unreachable.invalid/' + cls.filename)
    assert len(load_dataset(name, str(archive.parent), train=False)) == 20


def test_missing_cifar_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.CIFAR10, 'download', lambda self: (_ for _ in ()).throw(OSError('no network')))
    with pytest.raises(UserError, match='could not download or read cifar10'):
        load_dataset('cifar10', str(tmp_path), train=True)
    unpacked = write_cifar(tmp_path / 'data')  # the folder inside the archive, given instead of the one holding it
    with pytest.raises(UserError, match=re.escape(f"'{unpacked}' is cifar10 unpacked; pass the folder that holds it, "
                                                  f"--data-dir {tmp_path / 'data'}")):
        load_dataset('cifar10', str(unpacked), train=True)


def test_folder_accepts_any_mode_and_skips_unreadable_files(tmp_path, capsys):
    root = make_image_folder(tmp_path / 'd', classes=('a', 'b'), train_per_class=2, test_per_class=1)
    Image.new('L', (20, 10), 128).save(root / 'train' / 'a' / 'gray.png')
    Image.new('RGBA', (8, 8), (255, 0, 0, 0)).save(root / 'train' / 'a' / 'clear.png')
    Image.new('P', (8, 8), 3).save(root / 'train' / 'b' / 'palette.gif')
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(root / 'train' / 'b' / 'deep.png')
    (root / 'train' / 'b' / 'notes.txt').write_text('not an image')
    (root / 'train' / 'b' / 'empty.jpg').write_bytes(b'')
    jpeg = io.BytesIO()
    Image.new('RGB', (16, 16), 'blue').save(jpeg, 'JPEG')
    (root / 'train' / 'b' / 'cut.jpg').write_bytes(jpeg.getvalue()[:40])
    (root / 'train' / 'b' / 'gone.png').symlink_to(tmp_path / 'nowhere.png')  # a broken link
    data = load_dataset('folder', str(root), train=True, image_size=8, cache_dir=str(tmp_path / 'cache'))
    assert data.images.shape == (8, 3, 8, 8) and data.classes == ['a', 'b']
    assert data.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert 'skipped 4 unreadable file(s)' in capsys.readouterr().err
    assert (data.images[2] == 255).all()  # transparent RGBA composited on white
    assert (data.images[6] == 255).all()  # 16-bit white stays white (files are read in sorted order)
    load_dataset('folder', str(root), train=False, image_size=8, cache_dir=str(tmp_path / 'cache'))
    assert 'skipped' not in capsys.readouterr().err  # the same run's second load: said once


@pytest.mark.skipif(distill.data.HEIF_READABLE, reason='pillow-heif is installed here: HEIC photos are read')
def test_a_folders_heic_photos_without_pillow_heif_are_counted_with_what_to_install(tmp_path, capsys):
    folder = make_image_folder(tmp_path / 'photos')
    (folder / 'train' / 'cat' / 'IMG_0001.HEIC').write_bytes(HEIC_START + bytes(200))
    load_dataset('folder', str(folder), train=True, cache_dir=str(tmp_path / 'c'))
    assert '1 of them HEIC/HEIF photos: pip install pillow-heif to read them' in capsys.readouterr().err


def test_installing_pillow_heif_decodes_a_cached_folder_again(image_folder, monkeypatch):
    before = distill.data._fingerprint(str(image_folder), 8)  # the cache's key: its HEIC photos were skipped
    monkeypatch.setattr(distill.data, 'HEIF_READABLE', not distill.data.HEIF_READABLE)
    assert distill.data._fingerprint(str(image_folder), 8) != before


def test_a_data_set_resized_in_chunks_is_resized_as_a_whole():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    whole = F.interpolate(images.float(), size=(12, 12), mode='bilinear', antialias=True, align_corners=False)
    resized = resize_images(images, 12, chunk=2)
    assert resized.dtype == torch.uint8 and torch.equal(resized, whole.round().clamp(0, 255).byte())


@pytest.mark.parametrize('suffix', ['.tar.gz', '.tar', '.zip', '.windows.zip'])
def test_an_archive_matches_its_folder_and_is_cached(tmp_path, suffix, capsys):
    root = make_image_folder(tmp_path / 'd')
    (root / 'test' / 'cat' / 'Thumbs.db').write_bytes(b'\xd0\xcf\x11\xe0')  # Windows' own: no image, no warning
    archive = tmp_path / f'd{suffix}'
    if suffix == '.zip':
        with zipfile.ZipFile(archive, 'w') as zipped:
            for path in sorted(root.rglob('*')):  # a top-level folder above train/ and test/ is fine
                zipped.write(path, 'mydata/' + str(path.relative_to(root)))
            zipped.writestr('__MACOSX/mydata/train/cat/._0.png', b'resource fork')  # skipped: a dot file
    elif suffix == '.windows.zip':  # PowerShell 5's Compress-Archive writes backslashes, folders included
        with zipfile.ZipFile(archive, 'w') as zipped:
            for path in sorted(root.rglob('*')):
                name = '\\'.join(('mydata',) + path.relative_to(root).parts)
                zipped.writestr(name + '\\' if path.is_dir() else name, b'' if path.is_dir() else path.read_bytes())
    else:
        with tarfile.open(archive, 'w:gz' if suffix == '.tar.gz' else 'w') as tar:
            tar.add(root, arcname='mydata')
    assert default_dataset(str(archive)) == default_dataset(str(root)) == 'folder'
    from_folder = load_dataset('folder', str(root), train=False, cache_dir=str(tmp_path / 'c1'))
    from_tar = load_dataset('folder', str(archive), train=False, cache_dir=str(tmp_path / 'c2'))
    assert torch.equal(from_folder.images, from_tar.images) and from_folder.classes == from_tar.classes
    assert sorted(p.name for p in (tmp_path / 'c2').glob('folder-*/*')) == ['meta.pt', 'test.npy', 'train.npy']
    again = load_dataset('folder', str(archive), train=False, cache_dir=str(tmp_path / 'c2'))
    assert torch.equal(again.images, from_tar.images)
    assert 'skipped' not in capsys.readouterr().err


@pytest.mark.parametrize('tool', ['python', 'info-zip', 'cp437'])
def test_class_names_in_a_zip_read_as_its_tool_wrote_them(tmp_path, tool):
    root = make_image_folder(tmp_path / 'd', classes=('café', 'dog'))
    archive = tmp_path / 'd.zip'
    with zipfile.ZipFile(archive, 'w') as zipped:  # Python's zipfile flags a non-ASCII name as UTF-8
        for path in sorted(root.rglob('*.png')):
            name = str(path.relative_to(root))
            zipped.writestr(name if tool == 'python' else name.replace('café', 'cafXY'), path.read_bytes())
    if tool != 'python':  # the same bytes as Info-ZIP or an old DOS tool writes them: no UTF-8 flag
        raw = 'café'.encode('utf-8' if tool == 'info-zip' else 'cp437')
        archive.write_bytes(archive.read_bytes().replace(b'cafXY', raw.ljust(5, b'_')))
    expected = {'python': 'café', 'info-zip': 'café', 'cp437': 'café_'}[tool]
    data = load_dataset('folder', str(archive), train=True, cache_dir=str(tmp_path / 'c'))
    assert data.classes == [expected, 'dog'] and len(data) == 24


@pytest.mark.parametrize('fault, message', [
    ('password', r"'.*d.zip' is password-protected \('test/cat/000.png' is encrypted\); unzip it with its password"),
    ('deflate64', r"'.*d.zip' holds 'test/cat/000.png' compressed in a way Python cannot read .*; unzip it with "
                  r"another tool"),
])
def test_a_zip_that_zipfile_cannot_read_is_one_line(tmp_path, fault, message):
    root = make_image_folder(tmp_path / 'd')
    archive = tmp_path / 'd.zip'
    with zipfile.ZipFile(archive, 'w') as zipped:
        for path in sorted(root.rglob('*.png')):
            zipped.write(path, str(path.relative_to(root)))
    raw = bytearray(archive.read_bytes())
    # Each member's headers as an encrypting tool or Windows' Deflate64 writes them: a flag bit, or method 9.
    for signature, flags in ((b'PK\x03\x04', 6), (b'PK\x01\x02', 8)):
        at = raw.find(signature)
        while at >= 0:
            if fault == 'password':
                raw[at + flags] |= 1
            else:
                raw[at + flags + 2:at + flags + 4] = (9).to_bytes(2, 'little')
            at = raw.find(signature, at + 4)
    archive.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=message):  # a RuntimeError or NotImplementedError traceback before
        load_dataset('folder', str(archive), train=True, cache_dir=str(tmp_path / 'c'))


def test_a_test_class_folder_spelled_in_another_case_is_the_training_class(tmp_path):
    root = make_image_folder(tmp_path / 'd', classes=('cat', 'dog'))
    os.rename(root / 'test' / 'cat', root / 'test' / 'Cat')
    test = load_dataset('folder', str(root), train=False, cache_dir=str(tmp_path / 'c'))
    train = load_dataset('folder', str(root), train=True, cache_dir=str(tmp_path / 'c'))
    assert test.classes == train.classes == ['cat', 'dog'] and test.labels.tolist() == [0] * 4 + [1] * 4


@pytest.mark.parametrize('source', ['folder', 'tar'])
def test_a_class_folder_whose_name_is_not_utf8_is_read_with_its_bytes_escaped(tmp_path, source):
    root = make_image_folder(tmp_path / 'd', classes=('cafe', 'dog'))
    try:
        for split in ('train', 'test'):
            os.rename(root / split / 'cafe', os.path.join(os.fsencode(root / split), b'caf\xe9'))  # Latin-1
    except OSError:
        pytest.skip('this file system takes UTF-8 names only')
    path = root
    if source == 'tar':
        path = tmp_path / 'd.tar'
        with tarfile.open(path, 'w') as tar:
            tar.add(root, arcname='d')
    data = load_dataset('folder', str(path), train=True, cache_dir=str(tmp_path / 'c'))
    assert data.classes == ['caf\\xe9', 'dog'] and len(data) == 24


@pytest.mark.parametrize('problem, message', [
    ('missing', 'does not exist'), ('empty', 'no readable images'), ('corrupt', 'not a readable archive'),
    ('text_only', 'no readable images'), ('class_only_in_test', r"test classes \['b'\] .* have no training images"),
    ('one_class', r"holds one class \('a'\); a classifier needs two or more")])
def test_bad_folders_are_clear_errors(tmp_path, problem, message):
    path = tmp_path / 'data'
    if problem == 'empty':
        path.mkdir()
    elif problem == 'corrupt':
        path = tmp_path / 'data.tar.gz'
        path.write_bytes(b'\x1f\x8b' + b'garbage' * 100)
    elif problem == 'text_only':
        for split in ('train', 'test'):
            (path / split / 'a').mkdir(parents=True)
            (path / split / 'a' / 'x.txt').write_text('hello')
    elif problem in ('class_only_in_test', 'one_class'):
        pairs = (('train', 'a'), ('test', 'a')) + ((('train', 'c'), ('test', 'b')) if problem != 'one_class' else ())
        for split, cls in pairs:
            (path / split / cls).mkdir(parents=True)
            Image.new('RGB', (4, 4)).save(path / split / cls / 'x.png')
        (path / 'train' / 'b').mkdir(exist_ok=True)  # an empty folder is no training images
    with pytest.raises(UserError, match=message):
        load_dataset('folder', str(path), train=True, cache_dir=str(tmp_path / 'cache'))


def test_the_dataset_left_out_is_cifar10_unless_the_data_is_an_archive_or_laid_out_as_a_folder(tmp_path):
    assert default_dataset(None) == default_dataset('data') == 'cifar10'  # torchvision downloads into data/
    (tmp_path / 'cifar' / 'cifar-10-batches-py').mkdir(parents=True)
    assert default_dataset(str(tmp_path / 'cifar')) == 'cifar10'
    assert default_dataset(str(tmp_path / 'not-yet.TGZ')) == 'folder'
    (tmp_path / 'images.bin').write_bytes(b'')
    assert default_dataset(str(tmp_path / 'images.bin')) == 'folder'  # a file: read, and refused if unreadable
    make_image_folder(tmp_path / 'unpacked' / 'mydata', train_per_class=1, test_per_class=1)
    assert default_dataset(str(tmp_path / 'unpacked')) == 'folder'  # an archive unpacked into its own folder


def test_class_folders_without_train_and_test_are_refused_not_taken_for_cifar(tmp_path):
    make_image_folder(tmp_path, train_per_class=1, test_per_class=1)
    with pytest.raises(UserError, match=r"'.*train' holds folders of images but no train/ and test/"):
        default_dataset(str(tmp_path / 'train'))
    (tmp_path / 'train' / 'cache').mkdir()  # as in data/: CIFAR's download folder beside a folder of pictures
    assert default_dataset(str(tmp_path / 'train')) == 'cifar10'
    with pytest.raises(UserError, match=r"'.*test' holds folders of images but no train/ and test/"):  # named folder
        load_dataset('folder', str(tmp_path / 'test'), train=True, cache_dir=str(tmp_path / 'c'))


@pytest.mark.parametrize('source', ['folder', 'tar'])
def test_a_test_set_without_train_is_labelled_by_the_models_classes_but_cannot_train(tmp_path, source):
    full = make_image_folder(tmp_path / 'full', classes=('cat', 'dog', 'ship'), train_per_class=1, test_per_class=2)
    shutil.rmtree(full / 'train')
    shutil.rmtree(full / 'test' / 'dog')
    data = str(full)
    if source == 'tar':
        data = str(tmp_path / 'new.tar')
        with tarfile.open(data, 'w') as archive:
            archive.add(full / 'test', 'test')
    test = load_test_set('folder', data, ['ship', 'dog', 'cat'], 8, str(tmp_path / 'c'))
    assert test.classes == ['ship', 'dog', 'cat'] and test.labels.tolist() == [2, 2, 0, 0]  # cat, then ship
    assert default_dataset(data, test_only=True) == 'folder'
    with pytest.raises(UserError, match="holds test/ but no train/" if source == 'folder' else 'under .*/train/'):
        load_dataset('folder', data, train=True, image_size=8, cache_dir=str(tmp_path / 'c'))
    with pytest.raises(UserError, match=r"include the classes cat, which the models did not learn \(they learned "
                                        r"dog, ship\)"):
        load_test_set('folder', data, ['dog', 'ship'], 8, str(tmp_path / 'c'))
    assert load_test_set('folder', data, ['SHIP', 'dog', 'Cat'], 8, str(tmp_path / 'c')).labels.tolist() == [2, 2, 0, 0]


@pytest.mark.parametrize('test_only, layout', [(False, 'train/<class>/ and test/<class>/'), (True, 'test/<class>/')])
def test_loose_images_say_to_put_each_in_the_folder_of_its_class(tmp_path, test_only, layout):
    Image.new('RGB', (8, 8)).save(tmp_path / 'IMG_0001.jpg')
    load = (lambda: load_test_set('folder', str(tmp_path), ['cat', 'dog'], 8, str(tmp_path / 'c'))) if test_only \
        else (lambda: load_dataset('folder', str(tmp_path), True, 8, str(tmp_path / 'c')))
    for refuse in (load, lambda: default_dataset(str(tmp_path), test_only)):  # not a folder to download CIFAR into
        with pytest.raises(UserError, match=re.escape(f"'{tmp_path}' holds images but no {layout} folders; put "
                                                      f"each image in the folder of its class there")) as refused:
            refuse()
    hint = ('; to classify pictures that have no labels, pass them to infer.py' if test_only
            else ' (or pass --dataset cifar10 to download CIFAR-10 into it)')  # data/ with a stray picture in it
    assert str(refused.value).endswith('there' + hint)


def test_class_folders_alone_are_a_test_set_as_imagefolder_lays_them_out_but_not_data_to_train_on(tmp_path):
    pictures = make_image_folder(tmp_path, classes=('cat', 'ship'), train_per_class=0, test_per_class=2) / 'test'
    (pictures / 'ship').rename(pictures / 'Ship')  # any case, as in test/<class>/
    (pictures / 'cat' / 'notes.txt').write_text('not a picture')  # skipped, with a warning
    assert default_dataset(str(pictures), test_only=True) == 'folder'
    test = load_test_set('folder', str(pictures), ['cat', 'dog', 'ship'], 8, str(tmp_path / 'c'))
    assert test.classes == ['cat', 'dog', 'ship'] and sorted(test.labels.tolist()) == [0, 0, 2, 2]
    laid_out = load_test_set('folder', str(tmp_path), ['cat', 'dog', 'ship'], 8, str(tmp_path / 'c'))  # test/ in it
    assert torch.equal(test.images, laid_out.images) and torch.equal(test.labels, laid_out.labels)
    for refuse in (lambda: default_dataset(str(pictures)),
                   lambda: load_dataset('folder', str(pictures), True, 8, str(tmp_path / 'c'))):
        with pytest.raises(UserError, match=r"'.*test' holds folders of images but no train/ and test/; move them "
                                            r"into train/<class>/ and test/<class>/"):
            refuse()


def test_a_test_set_of_class_folders_one_not_filled_yet_one_in_subfolders_is_read(tmp_path, capsys):
    pictures = make_image_folder(tmp_path, classes=('cat', 'ship'), train_per_class=0, test_per_class=2) / 'test'
    (pictures / 'frog').mkdir()  # made and not filled yet: 'no readable images under' the whole set before
    (pictures / 'dog').mkdir()
    (pictures / 'dog' / 'broken.png').write_bytes(b'not a picture')
    (pictures / 'ship' / '2023').mkdir()  # a class's pictures in a subfolder of it, as train/<class>/ may hold them
    for image in (pictures / 'ship').glob('*.png'):
        image.rename(pictures / 'ship' / '2023' / image.name)
    assert default_dataset(str(pictures), test_only=True) == 'folder'
    test = load_test_set('folder', str(pictures), ['cat', 'dog', 'frog', 'ship'], 8, str(tmp_path / 'c'))
    assert sorted(test.labels.tolist()) == [0, 0, 3, 3] and 'skipped 1 unreadable file' in capsys.readouterr().err


def test_a_test_set_with_nothing_readable_says_which_layouts_are_read(tmp_path):
    pictures = make_image_folder(tmp_path / 'd', classes=('cat', 'ship'), train_per_class=0, test_per_class=2) / 'test'
    archive = shutil.make_archive(str(tmp_path / 'pictures'), 'zip', pictures)  # cat/ and ship/ at its top
    with pytest.raises(UserError, match=re.escape(f"no readable images under test/<class>/ in '{archive}'; put the "
                                                  f"class folders in test/ there, or unpack it and pass the folder "
                                                  f"of <class>/ folders")):
        load_test_set('folder', archive, ['cat', 'ship'], 8, str(tmp_path / 'c'))
    for image in pictures.rglob('*.png'):
        image.write_bytes(b'not a picture any more')
    with pytest.raises(UserError, match=re.escape(f"no readable images under '{pictures}'; a test set is "
                                                  f"test/<class>/ or <class>/ folders of images")):
        load_test_set('folder', str(pictures), ['cat', 'ship'], 8, str(tmp_path / 'c'))


def test_split_folders_in_capitals_are_read_as_train_and_test(tmp_path):
    root = make_image_folder(tmp_path / 'd')
    for split in ('train', 'test'):
        (root / split).rename(root / split.capitalize())  # as Windows users name them
    assert default_dataset(str(root)) == 'folder'
    data = load_dataset('folder', str(root), train=False, cache_dir=str(tmp_path / 'c'))
    assert data.classes == ['cat', 'dog', 'ship'] and len(data) == 12


@pytest.mark.parametrize('source', ['folder', 'tar'])
def test_a_folder_named_test_above_train_and_test_is_a_prefix_not_the_split(tmp_path, source):
    root = make_image_folder(tmp_path / 'unpacked' / 'Test')
    path = tmp_path / 'unpacked'
    if source == 'tar':
        path = tmp_path / 'd.tar'
        with tarfile.open(path, 'w') as tar:
            tar.add(root, arcname='Test')
    assert default_dataset(str(path)) == 'folder'
    data = load_dataset('folder', str(path), train=True, cache_dir=str(tmp_path / 'c'))
    assert data.classes == ['cat', 'dog', 'ship'] and len(data) == 36


@pytest.mark.parametrize('kept, message', [
    (('train', 'val'), r"holds train/ but no test/; .* test/<class>/, e.g. rename val/ to test/"),
    (('train',), r"holds train/ but no test/; put the images held out for the final test in test/<class>/$"),
    (('test',), r"holds test/ but no train/; put the training images in train/<class>/")])
@pytest.mark.parametrize('dataset', [None, 'folder'])
def test_a_folder_with_one_of_train_and_test_says_what_to_add(tmp_path, kept, message, dataset):
    root = make_image_folder(tmp_path / 'd')
    if 'val' in kept:
        (root / 'test').rename(root / 'val')  # ImageNet's layout
    elif kept == ('train',):
        shutil.rmtree(root / 'test')
    else:
        shutil.rmtree(root / 'train')
    with pytest.raises(UserError, match=message):  # never a CIFAR download into the user's folder
        load_dataset(dataset or default_dataset(str(root)), str(root), train=True, cache_dir=str(tmp_path / 'c'))


def test_subset_is_the_first_images_class_balanced():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    chosen = balanced_subset(labels, 12)
    assert torch.bincount(labels[chosen]).tolist() == [4, 4, 4]
    assert chosen.tolist()[:4] == [0, 1, 2, 3]  # each class's first images, in order
    assert torch.bincount(labels[balanced_subset(labels, 30)]).tolist() == [13, 12, 5]


def test_a_subset_copy_that_would_not_fit_in_memory_is_refused_in_one_line(monkeypatch):
    images = ImageSet(torch.arange(85 * 3 * 4 * 4).to(torch.uint8).view(85, 3, 4, 4),
                      torch.tensor([0] * 50 + [1] * 30 + [2] * 5), ['a', 'b', 'c'])
    monkeypatch.setattr(distill.data, 'free_memory', lambda: 12 * 3 * 4 * 4)
    chosen = subset_of(images, 12, '--subset')
    assert torch.equal(chosen.images, images.images[balanced_subset(images.labels, 12)])
    assert chosen.images.data_ptr() != images.images.data_ptr()
    with pytest.raises(UserError, match=r'the 13 images of --test-subset 13 at --image-size 4 .* more than the .* '
                                        r'pass a smaller --test-subset, or none'):
        subset_of(images, 13, '--test-subset')
    assert subset_of(images, 100, '--subset') is images  # the whole set: as it is, no copy, no check


def test_a_folders_subset_is_mapped_from_a_file_of_its_cache_not_copied(image_folder, tmp_path, monkeypatch):
    whole = load_dataset('folder', str(image_folder), True, cache_dir=str(tmp_path / 'cache'))
    monkeypatch.setattr(distill.data, 'free_memory', lambda: 0)  # a copy would be refused
    subset = load_dataset('folder', str(image_folder), True, cache_dir=str(tmp_path / 'cache'), subset=9)
    chosen = balanced_subset(whole.labels, 9)
    assert torch.equal(subset.images, whole.images[chosen]) and torch.equal(subset.labels, whole.labels[chosen])
    kept = list((tmp_path / 'cache').glob('folder-*/train-subset-*.npy'))
    assert len(kept) == 1
    monkeypatch.setattr(distill.folder_cache, 'write_array', None)  # a second run maps the file the first wrote
    assert torch.equal(load_dataset('folder', str(image_folder), True, cache_dir=str(tmp_path / 'cache'),
                                    subset=9).images, subset.images)
    monkeypatch.undo()
    assert len(load_test_set('folder', str(image_folder), whole.classes, cache_dir=str(tmp_path / 'cache'),
                             subset=6)) == 6
    load_dataset('folder', str(image_folder), True, cache_dir=str(tmp_path / 'cache'), subset=12)
    kept = {p.name.split('-')[0]: p for p in (tmp_path / 'cache').glob('folder-*/*-subset-*.npy')}
    assert len(kept) == 2 and len(np.load(kept['test'])) == 6
    assert len(np.load(kept['train'])) == 12  # the newer subset of train replaced the older


def test_a_folders_subset_is_copied_where_its_cache_has_no_room(image_folder, tmp_path, monkeypatch):
    whole = load_dataset('folder', str(image_folder), True, cache_dir=str(tmp_path / 'cache'))
    monkeypatch.setattr(distill.folder_cache, 'free_disk', lambda folder: 0)
    subset = load_dataset('folder', str(image_folder), True, cache_dir=str(tmp_path / 'cache'), subset=9)
    assert torch.equal(subset.images, whole.images[balanced_subset(whole.labels, 9)])
    assert not list((tmp_path / 'cache').glob('folder-*/*-subset-*'))


def test_interleaved_classes_put_every_class_in_every_slice():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)  # stored class by class, as an image folder is
    order = interleave_classes(labels)
    assert sorted(order.tolist()) == list(range(len(labels)))
    assert labels[order[:6]].tolist() == [0, 1, 2, 0, 1, 2] and order[:3].tolist() == [0, 50, 80]
    assert torch.bincount(labels[order[15:21]]).tolist() == [3, 3]  # class 2 used up: the others alternate


@needs_cuda
def test_interleaving_labels_held_on_the_gpu_gives_the_same_order():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    assert torch.equal(interleave_classes(labels.cuda()).cpu(), interleave_classes(labels))


def test_split_is_disjoint_balanced_and_fixed_by_seed():
    labels = torch.arange(1000) % 10
    parts, record = make_split(labels, seed=3)
    assert [len(parts[k]) for k in ('train', 'val', 'route')] == [800, 100, 100]
    every = torch.cat(list(parts.values()))
    assert len(every.unique()) == 1000
    assert torch.bincount(labels[parts['val']]).tolist() == [10] * 10
    again, record_again = make_split(labels, seed=3)
    assert all(torch.equal(parts[k], again[k]) for k in parts) and record == record_again
    other, other_record = make_split(labels, seed=4)
    assert not torch.equal(parts['val'], other['val']) and other_record['digest'] != record['digest']
    assert make_split(torch.arange(100_000) % 10, 0)[1]['val'] == 5000  # capped at 5,000


@pytest.mark.parametrize('counts', [[100, 3], [1000] * 9 + [50], [5, 1, 14]])
def test_a_rare_class_gives_val_and_route_only_its_share_and_is_trained_on(counts):
    labels = torch.cat([torch.full((count,), cls) for cls, count in enumerate(counts)])
    parts, _ = make_split(labels, seed=0)
    trained = torch.bincount(labels[parts['train']], minlength=len(counts))
    assert (trained >= 1).all()  # round-robin alone sent the 3 and the 50 into val and route whole
    for part in ('val', 'route'):
        held = torch.bincount(labels[parts[part]], minlength=len(counts))
        share = (len(parts[part]) * (torch.tensor(counts) + 1) + len(labels) - 1) // len(labels)
        assert (held <= share).all() and held.sum() == len(parts[part])


def _split_digest(parts):
    return hashlib.sha1(b''.join(parts[k].numpy().tobytes() for k in ('train', 'val', 'route'))).hexdigest()[:16]


@pytest.mark.parametrize('labels, seed, sizes, digest', [
    (torch.arange(50000) % 10, 0, (None, None), 'cc359fe9af247664'),
    (torch.arange(50000) // 5000, 0, (None, None), 'e5fab36d9e8e0f7b'),  # the JPEG archive's order, class by class
    ((torch.arange(1005) % 10)[torch.randperm(1005, generator=torch.Generator().manual_seed(1))], 2, (None, None),
     '7abeac13029df775'),
    (torch.arange(997) % 7, 5, (55, 33), '52680c772092c2d9'),
    (torch.arange(5000) % 100, 1, (250, 250), 'd409b55bec310b43'),
    (torch.arange(20) % 2, 0, (10, 8), 'de9305f949e97444'),
])
def test_classes_even_within_an_image_split_as_before_so_earlier_runs_still_match(labels, seed, sizes, digest):
    assert _split_digest(make_split(labels, seed, *sizes)[0]) == digest  # the digests of the round-robin split


def test_channel_stats_of_a_channel_that_never_varies_leave_it_unscaled():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:, 0] = torch.tensor([0, 51, 102, 153]).view(4, 1, 1)  # red varies; green and blue are always 0
    mean, std = channel_stats(images)
    assert mean == pytest.approx([0.3, 0.0, 0.0]) and std[0] == pytest.approx(0.2309, abs=1e-4)
    assert std[1:] == [1.0, 1.0]  # not 0: normalising divided by it, and training ran on inf


def test_channel_stats_of_the_chosen_images_in_chunks_are_those_of_their_copy():
    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    chosen = torch.arange(0, 50, 3)
    mean, std = channel_stats(images, chosen, chunk=4)
    pixels = images[chosen].double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(pixels.mean(1).tolist(), rel=1e-12)
    assert std == pytest.approx(pixels.std(1).tolist(), rel=1e-12)


def test_split_sizes_that_leave_nothing_to_train_or_validate_on_are_refused():
    with pytest.raises(UserError, match='leave 0 of 20 images to train on'):
        make_split(torch.arange(20) % 2, 0, val_size=10, route_size=10)
    with pytest.raises(UserError, match='leave 1 of 20 images to train on, fewer than 2'):  # BatchNorm: a traceback
        make_split(torch.arange(20) % 2, 0, val_size=10, route_size=9)
    assert len(make_split(torch.arange(20) % 2, 0, val_size=10, route_size=8)[0]['train']) == 2
    with pytest.raises(UserError, match='--val-size is 0 with 8 training images.*or use more training images'):
        make_split(torch.arange(8) % 2, 0)  # 10% of 8 rounds to 0; no --subset to enlarge
    with pytest.raises(UserError, match='or use a larger --subset'):
        make_split(torch.arange(8) % 2, 0, subset=8)


@pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason='needs ../shared/data/cifar10-jpeg.tar.gz')
def test_shared_cifar10_jpeg_archive(tmp_path):
    test = load_dataset('folder', str(SHARED_ARCHIVE), train=False, cache_dir=str(tmp_path))
    assert test.images.shape == (10000, 3, 32, 32) and torch.bincount(test.labels).tolist() == [1000] * 10


def test_class_folders_that_are_links_are_read(tmp_path):
    real = make_image_folder(tmp_path / 'real', train_per_class=2, test_per_class=1)
    linked = tmp_path / 'linked'
    (linked / 'train').mkdir(parents=True)
    for cls in ('cat', 'dog', 'ship'):  # a class kept elsewhere was left out without a word
        (linked / 'train' / cls).symlink_to(real / 'train' / cls)
    (linked / 'test').symlink_to(real / 'test')
    loaded = load_dataset('folder', str(linked), train=True, cache_dir=str(tmp_path / 'cache'))
    assert loaded.classes == ['cat', 'dog', 'ship'] and len(loaded) == 6

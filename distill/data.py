"""Datasets as uint8 tensors: CIFAR held in memory (enlarged, resized into its cache on disk and mapped); image
folders and archives read (images.py decodes each file) into their cache on disk (folder_cache.py) and mapped
from there, so a set larger than the memory trains too; and the fixed train/val/route split. loaders.py turns
them into batches."""
import hashlib
import io
import os
import sys
import tarfile
import zipfile
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from PIL import Image

from . import UserError
from .folder_cache import (WHERE_TO_CACHE, DecodedOnDisk, default_cache_dir, in_units, keep_array, one_at_a_time,
                           read_cache, warn_once)
from .images import HEIF_READABLE, READ_ERRORS, SYSTEM_FILES, HeifUnreadable, list_image_files, read_image
from .runtime import free_memory, place_data

DATASETS = ('cifar10', 'cifar100', 'folder')
NATIVE_SIZE = 32  # CIFAR's size, and the default for folders
SPLITS_IN_FOLDER = ('train', 'test')
ARCHIVES = ('.tar.gz', '.tgz', '.tar', '.tar.bz2', '.tar.xz', '.zip')


@dataclass
class ImageSet:
    images: torch.Tensor  # N x 3 x S x S, uint8
    labels: torch.Tensor  # N, int64
    classes: list

    def __len__(self):
        return len(self.labels)

    def select(self, indices: torch.Tensor) -> 'ImageSet':
        return ImageSet(self.images[indices], self.labels[indices], self.classes)

    def to(self, device) -> 'ImageSet':
        """Labels on the device; images too, where they fit (runtime.place_data)."""
        return ImageSet(place_data(self.images, device), self.labels.to(device), self.classes)


# ---------------------------------------------------------------- datasets

CHUNK_BYTES = 2**26  # the float copies of one chunk of images: a whole set's would not fit in memory


def _chunk_of(values_per_image: int, bytes_per_value: int) -> int:
    return max(1, CHUNK_BYTES // (values_per_image * bytes_per_value))


def resize_images(images: torch.Tensor, size: int, chunk: int | None = None) -> torch.Tensor:
    """N x 3 x size x size uint8, resized `chunk` images at a time: float32 copies of a whole data set
    enlarged (--image-size 96 on CIFAR) would not fit in memory."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    chunk = chunk or _chunk_of(images.shape[1] * max(images.shape[-1], size) ** 2, 4)
    resized = torch.empty(len(images), images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = F.interpolate(images[start:start + chunk].float(), size=(size, size), mode='bilinear',
                             antialias=True, align_corners=False)
        resized[start:start + chunk] = part.round_().clamp_(0, 255)
    return resized


def _subfolders(path: str) -> list:
    try:
        return sorted(e.path for e in os.scandir(path) if e.is_dir() and not e.name.startswith('.'))
    except OSError:
        return []


def _split_folders(path: str) -> set:
    """Which of train/ and test/ path holds, in any case ('Train' from Windows reads as 'train')."""
    return {os.path.basename(sub).lower() for sub in _subfolders(path)} & set(SPLITS_IN_FOLDER)


def _laid_out(path: str, splits=SPLITS_IN_FOLDER) -> bool:
    return set(splits) <= _split_folders(path)


def _holds_images(path: str) -> bool:
    extensions = Image.registered_extensions()
    try:
        with os.scandir(path) as entries:  # closed even where `any` stops at the first image
            return any(e.is_file() and os.path.splitext(e.name)[1].lower() in extensions for e in entries)
    except OSError:
        return False


def _half_laid_out(folder: str) -> UserError:
    if 'train' not in _split_folders(folder):
        return UserError(f"'{folder}' holds test/ but no train/; put the training images in train/<class>/")
    names = map(os.path.basename, _subfolders(folder))
    held_out = next((name for name in names if name.lower() in ('val', 'valid', 'validation')), None)
    return UserError(f"'{folder}' holds train/ but no test/; put the images held out for the final test in "
                     f"test/<class>/" + (f", e.g. rename {held_out}/ to test/ (val is cut from train/ here)"
                                         if held_out else ''))


def default_dataset(data_dir: str | None, test_only: bool = False) -> str:
    """folder for an archive or any other single file, or a folder with train/ and test/ (test/ alone where
    test_only) in it or in one of its subfolders (an unpacked archive; torchvision downloads CIFAR into neither);
    else cifar10. As a test set, a folder of class folders alone (torchvision's ImageFolder layout) is a folder
    too. A folder of pictures alone, or with one of train/ and test/, or of class folders to train on, is refused,
    not filled with a CIFAR download."""
    if not data_dir:
        return 'cifar10'
    if data_dir.lower().endswith(ARCHIVES) or os.path.isfile(data_dir):
        return 'folder'
    subfolders = _subfolders(data_dir)
    if any(_laid_out(folder, ['test'] if test_only else SPLITS_IN_FOLDER) for folder in [data_dir, *subfolders]):
        return 'folder'
    for folder in [data_dir, *subfolders][:2 if len(subfolders) == 1 else 1]:  # itself, or an unpacked archive
        if _split_folders(folder):  # half laid out: not a CIFAR download folder either
            raise _half_laid_out(folder)
    class_folders = _class_folders(data_dir, test_only)
    if class_folders and test_only:  # scored as test/ itself
        return 'folder'
    if len(class_folders) > 1:  # laid out as class folders, not as data/
        raise _class_folders_refusal(data_dir)
    if _holds_images(data_dir):  # pictures, not torchvision's download folder
        raise _loose_images(data_dir, test_only, '' if test_only else ' (or pass --dataset cifar10 to download '
                                                                      'CIFAR-10 into it)')
    return 'cifar10'


def _loose_images(path: str, test_only: bool, hint: str = '') -> UserError:
    layout = 'test/<class>/' if test_only else 'train/<class>/ and test/<class>/'
    # A test set of loose pictures may be pictures without labels, given to the scoring script.
    hint = '; to classify pictures that have no labels, pass them to infer.py' if test_only else hint
    return UserError(f"'{path}' holds images but no {layout} folders; put each image in the folder of its class "
                     f"there{hint}")


def _class_folders(path: str, test_only: bool = False) -> list:
    """The subfolders of a folder laid out as <class>/* (torchvision's ImageFolder), with no train/ or test/;
    else none. Every one must hold images, so that data/ (CIFAR's download folder, with this project's cache in
    it) is not taken for one; in a test set, a class folder made and not filled yet adds no class instead, and
    its images may lie in subfolders of it (cat/2023/), as under train/<class>/."""
    subfolders = _subfolders(path)
    filled = [folder for folder in subfolders if not (test_only and _empty(folder))]
    holds = _holds_images_within if test_only else _holds_images
    return subfolders if filled and not _split_folders(path) and all(map(holds, filled)) else []


def _holds_images_within(folder: str, seen: set | None = None) -> bool:
    seen = set() if seen is None else seen
    real = os.path.realpath(folder)  # a link to a folder above would loop
    if real in seen:
        return False
    seen.add(real)
    return _holds_images(folder) or any(_holds_images_within(sub, seen) for sub in _subfolders(folder))


def _empty(folder: str) -> bool:
    try:
        with os.scandir(folder) as entries:
            return not any(not e.name.startswith('.') for e in entries)
    except OSError:
        return False


def _class_folders_refusal(path: str) -> UserError:
    return UserError(f"'{path}' holds folders of images but no train/ and test/; move them into train/<class>/ and "
                     f"test/<class>/, some of each class's images held out for the test")


def load_dataset(name: str, data_dir: str, train: bool, image_size: int | None = None,
                 cache_dir: str | None = None, subset: int | None = None) -> ImageSet:
    """The training or test set of `name`, as uint8 tensors of image_size (default 32); where given, only its first
    `subset` images, class-balanced (--subset, --test-subset)."""
    cache_dir = cache_dir or default_cache_dir()
    size = image_size or NATIVE_SIZE
    if name in ('cifar10', 'cifar100'):
        return _load_cifar(name, data_dir, train, size, cache_dir, subset)
    if name == 'folder':
        splits, kept_in = _load_folder(data_dir, size, cache_dir)
        split, flag = ('train', '--subset') if train else ('test', '--test-subset')
        return subset_of(splits[split], subset, flag, _subset_prefix(kept_in, split))
    raise UserError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")


def load_test_set(name: str, data_dir: str, classes: list, image_size: int | None = None,
                  cache_dir: str | None = None, subset: int | None = None) -> ImageSet:
    """The test split for models that learned `classes`, labelled by them: of data laid out for training, or of
    a folder of test/<class>/ or <class>/ alone (a new test set, a user's labelled photos) with any of those
    classes; where given, only its first `subset` images, class-balanced."""
    if name == 'folder':
        size, cache_dir = image_size or NATIVE_SIZE, cache_dir or default_cache_dir()
        splits, kept_in = _load_folder(data_dir, size, cache_dir, test_only=True)
        test = subset_of(splits['test'], subset, '--test-subset', _subset_prefix(kept_in, 'test'))
    else:
        test = load_dataset(name, data_dir, False, image_size, cache_dir, subset)
    index = {cls.lower(): i for i, cls in enumerate(classes)}  # a folder 'Cat/' holds the class 'cat'
    index.update({cls: i for i, cls in enumerate(classes)})  # the exact name first
    present = [test.classes[i] for i in test.labels.unique().tolist()]
    unknown = [cls for cls in present if cls not in index and cls.lower() not in index]
    if unknown:
        raise UserError(f"the test images at '{data_dir}' include the classes {classes_text(unknown)}, which the "
                        f"models did not learn (they learned {classes_text(classes)}); leave those classes out of "
                        f"--data-dir")
    position = torch.tensor([index.get(cls, index.get(cls.lower(), -1)) for cls in test.classes])
    return ImageSet(test.images, position[test.labels], list(classes))


def classes_text(classes: list, shown: int = 5) -> str:
    return ', '.join(classes[:shown]) + (', ...' if len(classes) > shown else '')


def _load_cifar(name: str, data_dir: str, train: bool, size: int, cache_dir: str, subset: int | None) -> ImageSet:
    from torchvision import datasets
    cls = datasets.CIFAR10 if name == 'cifar10' else datasets.CIFAR100
    try:
        ds = cls(root=data_dir, train=train, download=True)
    except Exception as err:  # offline, disk full, corrupt archive: all end the same way for the user
        if os.path.basename(os.path.normpath(data_dir)) == cls.base_folder:  # the unpacked archive itself
            raise UserError(f"'{data_dir}' is {name} unpacked; pass the folder that holds it, --data-dir "
                            f"{os.path.dirname(os.path.normpath(data_dir)) or '.'}") from None
        raise UserError(f"could not download or read {name} into '{data_dir}' ({err.__class__.__name__}: {err}); "
                        f"check the network, or pass --dataset folder --data-dir DIR") from None
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    kept = balanced_subset(labels, subset)  # before resizing: each image is resized alone, so the same pixels
    images, labels = torch.from_numpy(ds.data).permute(0, 3, 1, 2)[kept].contiguous(), labels[kept]
    if size > NATIVE_SIZE:
        images = _enlarged(images, size, name, os.path.join(cache_dir, f"{name}-{'train' if train else 'test'}"))
    return ImageSet(resize_images(images, size), labels, list(ds.classes))


def _enlarged(images: torch.Tensor, size: int, name: str, cache: str) -> torch.Tensor:
    """The images resized to `size`, once, into a file of the cache, then mapped from it as a decoded folder is: an
    enlarged set (CIFAR-10 at --image-size 224: 9 GB) may not fit in memory, and every later stage maps the file
    instead of resizing again. Where the disk has no room, resized in memory where they fit there."""
    what, shape = f'the {len(images)} images of {name}', (len(images), 3, size, size)
    content = hashlib.sha1(images.numpy())  # the pixels themselves, not a copy of them
    content.update(b'|bilinear-antialias')
    chunk = _chunk_of(3 * size * size, 4)
    try:
        return keep_array(f'{cache}-{size}px-{content.hexdigest()[:16]}.npy', shape,
                          lambda: (resize_images(part, size, chunk) for part in images.split(chunk)))
    except OSError as err:
        print(f"note: could not keep {what} at --image-size {size} in '{os.path.dirname(cache) or '.'}' "
              f"({err.strerror or err}); resizing them in memory for this run (point {WHERE_TO_CACHE} at a disk "
              f"with room)", file=sys.stderr)
    _refuse_unless_fits(what, len(images), size, free_memory(),
                        hint=f'pass a smaller --image-size, or point {WHERE_TO_CACHE} at a disk with room')
    return resize_images(images, size)


RESIZE_COPIES = 5  # read_image's peak: Pillow's 4-byte RGB, the array, its copy and the tensor, in 3-byte units


def _refuse_unless_fits(what: str, count: int, size: int, room: int | None, transient: int = 0,
                        room_text: str = 'of free memory, and the OS would kill this run',
                        hint: str = 'pass a smaller --image-size'):
    """A set that will not fit in memory (or on disk) ends in one line here, not in the OS killing the run without
    a word. transient: how many more images are held for a while at the peak."""
    need = (count + transient) * 3 * size * size
    if room is not None and need > room:
        raise UserError(f"{what} at --image-size {size} ({in_units(3 * size * size)} each) need "
                        f"{in_units(need)}, more than the {in_units(room)} {room_text}; {hint}")


def _folder_entries(parts):
    """(split, class) of a file at path `parts`, or None. Accepts any prefix before train/ or test/; Train/
    and Test/ in any case, but a folder named exactly train/ or test/ wins ('Test/train/cat/1.png')."""
    found = [i for i, part in enumerate(parts[:-2]) if part.lower() in SPLITS_IN_FOLDER]
    exact = [i for i in found if parts[i] in SPLITS_IN_FOLDER]
    if not found or parts[-1].startswith('.') or parts[-1].lower() in SYSTEM_FILES:
        return None
    i = (exact or found)[0]
    if parts[i + 1].startswith('.'):
        return None
    # A folder name that is not UTF-8 (kept by the OS as surrogates) becomes 'caf\\xe9': class names are
    # printed, drawn and written as text.
    return parts[i].lower(), parts[i + 1].encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


def _zip_member_name(member: zipfile.ZipInfo) -> str:
    """The name as its tool wrote it. Info-ZIP (zip on Linux) writes UTF-8 names without the flag that says so,
    which zipfile then reads as cp437 ('café' as 'caf├⌐'); a name that is not UTF-8 stays cp437."""
    name = member.filename
    if not member.flag_bits & 0x800:
        try:
            name = name.encode('cp437').decode('utf-8')
        except UnicodeError:
            pass
    return name.replace('\\', '/')  # Windows' own zip tool wrote backslashes (PowerShell 5)


# The compression methods zipfile decompresses (Python 3.14 adds Zstandard).
READABLE_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA,
                        getattr(zipfile, 'ZIP_ZSTANDARD', zipfile.ZIP_STORED)}


def _zip_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, name: str, path: str) -> bytes:
    """A member's bytes; a password or a compression method that zipfile cannot read is one line, not a traceback."""
    if member.flag_bits & 0x1:
        raise UserError(f"'{path}' is password-protected ('{name}' is encrypted); unzip it with its password and pass "
                        f"the folder, or zip it again without one")
    if member.compress_type not in READABLE_ZIP_METHODS:  # Windows' Deflate64, among others
        method = zipfile.compressor_names.get(member.compress_type, f'method {member.compress_type}')
        raise UserError(f"'{path}' holds '{name}' compressed in a way Python cannot read ({method}); unzip it with "
                        f"another tool and pass the folder, or zip it again with plain deflate")
    return archive.read(member)


def _iter_folder_files(path: str, as_test: bool = False):
    """Yield (split, class, display_name, opener) for every file in a folder, a .zip or a tar archive; where
    as_test, the folder holds <class>/* and is itself test/."""
    if os.path.isdir(path):
        for full in list_image_files(path):
            entry = _folder_entries((['test'] if as_test else []) + os.path.relpath(full, path).split(os.sep))
            if entry:
                yield (*entry, full, lambda full=full: full)
        return
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.infolist():
                    name = _zip_member_name(member)
                    entry = _folder_entries(name.split('/'))
                    if not name.endswith('/') and entry:
                        data = _zip_member(archive, member, name, path)
                        yield (*entry, f'{path}:{name}', lambda data=data: io.BytesIO(data))
            return
        with tarfile.open(path, 'r:*') as archive:
            for member in archive:
                entry = _folder_entries(member.name.split('/'))
                if member.isfile() and entry:
                    data = archive.extractfile(member).read()
                    yield (*entry, f'{path}:{member.name}', lambda data=data: io.BytesIO(data))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, UnicodeError) as err:
        raise UserError(f"'{path}' is not a readable archive: .tar.gz, .tar or .zip "
                        f"({str(err).splitlines()[0].rstrip(':')}); re-create or re-download it") from None


def _load_folder(path: str, size: int, cache_dir: str, test_only: bool = False):
    """({'train', 'test'} -> ImageSet, mapped from the decoded folder's cache; the cache's folder, or None where it
    could not be kept). Where test_only, train/ may be absent, and then the classes are test/'s."""
    if not os.path.exists(path):
        raise UserError(f"data path '{path}' does not exist; pass --data-dir pointing to a folder with "
                        f"train/<class>/ and test/<class>/ images, or to a .tar.gz or .zip of that layout")
    needed = ['test'] if test_only else SPLITS_IN_FOLDER
    if os.path.isdir(path) and _split_folders(path) and not any(_laid_out(folder, needed)
                                                                for folder in [path, *_subfolders(path)]):
        raise _half_laid_out(path)
    as_test = test_only and os.path.isdir(path) and bool(_class_folders(path, test_only))  # a test set as <class>/*
    cache = os.path.join(cache_dir, f'folder-{_fingerprint(path, size, as_test)}')
    with one_at_a_time(cache):  # torchrun's processes: one decodes, the others then map its cache
        cached = read_cache(cache)
        if not cached or not (test_only or 'train' in cached):
            cached = _decode_into_cache(path, size, cache, test_only, as_test)
    kept_in = cache if os.path.isfile(os.path.join(cache, 'meta.pt')) else None
    return {split: ImageSet(*entry) for split, entry in cached.items()}, kept_in


def _decode_into_cache(path: str, size: int, cache: str, test_only: bool, as_test: bool = False) -> dict:
    """Decodes the folder into the cache, checking what it holds, and returns its splits, mapped."""
    with DecodedOnDisk(cache, size) as decoded:
        skipped = _decode_folder(path, size, decoded, as_test)
        found = decoded.counts
        classes = sorted(found['train'])  # a folder of unreadable files has none
        if not classes and test_only:
            classes = sorted(found['test'])
        _check_classes(path, classes, test_only)
        spelled = {cls.lower(): cls for cls in classes}  # test/Cat/ holds train/cat/'s class, as in evaluate.py
        for name in sorted(found['test']):
            own = spelled.get(name.lower())
            if name not in classes and own and own not in found['test']:
                decoded.rename_class('test', name, own)
        unknown = sorted(set(found['test']) - set(classes))
        if unknown:
            raise UserError(f"test classes {unknown} in '{path}' have no training images; give every class images "
                            f"under train/<class>/")
        for split in SPLITS_IN_FOLDER:
            if not found[split] and split == 'train' and test_only:
                continue
            if not found[split]:
                raise UserError(f"no readable images under '{path}/{split}/'; add {split}/<class>/ images")
            decoded.write_split(split, classes)
        return decoded.finish(skipped)


def _check_classes(path: str, classes: list, test_only: bool):
    """Refuses a folder with no class to learn, or one."""
    if not classes:
        from torchvision import datasets
        own = {datasets.CIFAR10.filename: 'cifar10', datasets.CIFAR100.filename: 'cifar100'}.get(os.path.basename(path))
        if own:  # torchvision reads it, offline too, from the folder that holds it
            raise UserError(f"'{path}' is {own}'s own archive, not a folder of images; pass --dataset {own} "
                            f"--data-dir {os.path.dirname(path) or '.'}")
        if os.path.isdir(path) and not test_only and len(_class_folders(path)) > 1:
            raise _class_folders_refusal(path)
        if os.path.isdir(path) and _holds_images(path):
            raise _loose_images(path, test_only)
        if test_only and os.path.isdir(path):
            raise UserError(f"no readable images under '{path}'; a test set is test/<class>/ or <class>/ folders "
                            f"of images")
        if test_only:  # <class>/ alone is read from a folder only: in an archive it may sit under any top folder
            raise UserError(f"no readable images under test/<class>/ in '{path}'; put the class folders in test/ "
                            f"there, or unpack it and pass the folder of <class>/ folders")
        raise UserError(f"no readable images under '{path}/train/<class>/'; the folder needs train/<class>/ and "
                        f"test/<class>/ subfolders of images")
    if len(classes) == 1 and not test_only:
        raise UserError(f"'{path}/train/' holds one class ('{classes[0]}'); a classifier needs two or more "
                        f"train/<class>/ folders")


def _decode_folder(path: str, size: int, decoded: DecodedOnDisk, as_test: bool = False) -> str:
    """Every readable image into `decoded`; returns the warning that counts the rest, or ''. A set that would
    not fit on the disk is refused while decoding, before the disk is full."""
    skipped, heif, count, largest = [], 0, 0, 0
    # Each image is resized in memory, and held a few times over while converted to a tensor.
    _refuse_unless_fits(f"one image of '{path}'", 1, size, free_memory(), transient=RESIZE_COPIES - 1)
    for split, cls, shown, opener in _iter_folder_files(path, as_test):
        first = f'the first {count + 1} images' if count else 'one image'
        # At the peak, while a split's classes are joined into one file, the class being copied is held twice.
        _refuse_unless_fits(f"{first} of '{path}'", count + 1, size, decoded.room, transient=largest,
                            room_text=f"free on the disk at '{os.path.dirname(decoded.folder)}'",
                            hint=f'free some space, point {WHERE_TO_CACHE} at a disk with room, or pass a '
                                 f'smaller --image-size')
        try:
            image = read_image(opener(), size)
        except READ_ERRORS as err:
            skipped.append(f'{shown} ({err.__class__.__name__})')
            heif += isinstance(err, HeifUnreadable)
            continue
        decoded.append(split, cls, image)
        count, largest = count + 1, max(largest, decoded.counts[split][cls])
    warning = ''
    if skipped:
        why_heif = f'; {heif} of them HEIC/HEIF photos: pip install pillow-heif to read them' if heif else ''
        warning = f'warning: skipped {len(skipped)} unreadable file(s), e.g. {"; ".join(skipped[:3])}{why_heif}'
        warn_once(warning)
    return warning


def _fingerprint(path: str, size: int, as_test: bool = False) -> str:
    """<source>-<content>: the first names the folder and the size it is read at, the second changes when any
    file changes (a folder's own mtime misses edits deep inside it) or the decoding does."""
    # HEIC photos are read or skipped as pillow-heif is installed or not
    decoding = (f'reduced-jpeg|utf8-zip-names|pixel-limit-after-draft|float-0-1|other-ranges-stretched|'
                f'heif-{HEIF_READABLE}' + ('|classes-at-root' if as_test else ''))
    digest = hashlib.sha1(f'{os.path.abspath(path)}|{size}|{decoding}'.encode())
    files = [path] if os.path.isfile(path) else list_image_files(path)
    for name in files:
        try:
            info = os.stat(name)
        except OSError:  # a broken link, or a file gone since the walk: it is skipped as unreadable
            digest.update(os.fsencode(name) + b'|unreadable')
            continue
        digest.update(os.fsencode(name) + f'|{info.st_size}|{info.st_mtime_ns}'.encode())
    source = hashlib.sha1(f'{os.path.abspath(path)}|{size}|{as_test}'.encode()).hexdigest()[:8]
    return f'{source}-{digest.hexdigest()[:16]}'


# ---------------------------------------------------------------- subset and split

def interleave_classes(labels: torch.Tensor) -> torch.Tensor:
    """Positions that visit the classes round-robin, keeping each class's own order.

    Any prefix of the result is as class-balanced as the data allow.
    """
    rank = torch.empty_like(labels)
    for cls in labels.unique():
        members = (labels == cls).nonzero().squeeze(1)
        rank[members] = torch.arange(len(members), device=labels.device)
    return torch.argsort(rank * len(labels) + torch.arange(len(labels), device=labels.device))


def balanced_subset(labels: torch.Tensor, n: int | None) -> torch.Tensor:
    """The first n images, class-balanced, in their original order (all when n is None)."""
    if n is None or n >= len(labels):
        return torch.arange(len(labels))
    if n <= 0:
        raise UserError(f'--subset {n} must be a positive number of images')
    return interleave_classes(labels)[:n].sort().values


def subset_of(images: ImageSet, n: int | None, flag: str, keep_as: str | None = None) -> ImageSet:
    """The first n images, class-balanced (all of them, or n None: the set as it is). keep_as: where the set is a
    decoded folder's cache, the name its subsets are kept under there; the subset is written once into a file of it
    and mapped, as the set is, so that a subset larger than the memory trains too. Otherwise, or where the disk has
    no room, copied into memory; a copy that would not fit is refused in one line, not killed by the OS without a
    word."""
    indices = balanced_subset(images.labels, n)
    if len(indices) == len(images):
        return images
    mapped = _kept_subset(images.images, indices, keep_as) if keep_as else None
    if mapped is not None:
        return ImageSet(mapped, images.labels[indices], images.classes)
    _refuse_unless_fits(f'the {len(indices)} images of {flag} {n}', len(indices), images.images.shape[-1],
                        free_memory(), hint=f'pass a smaller {flag}, or none: the whole set is then used as it is, '
                                            f'without a copy')
    return images.select(indices)


def _subset_prefix(cache: str | None, split: str) -> str | None:
    return cache and os.path.join(cache, f'{split}-subset')


def _kept_subset(images: torch.Tensor, indices: torch.Tensor, keep_as: str) -> torch.Tensor | None:
    """images[indices], written once into keep_as-<indices>.npy beside the set and mapped from there (a newer subset
    of the set replaces an older); None where that file cannot be kept."""
    chunk = _chunk_of(images[0].numel(), 1)
    try:
        return keep_array(f'{keep_as}-{hashlib.sha1(indices.numpy()).hexdigest()[:16]}.npy',
                          (len(indices), *images.shape[1:]), lambda: (images[part] for part in indices.split(chunk)))
    except OSError:
        return None


def export_sample_images(dataset: str, data_dir: str, folder: str, image_size: int | None = None, per_class: int = 2):
    """A few test images of every class, at image_size, as PNG files in folder: a plain folder to show infer.py on."""
    test = load_dataset(dataset, data_dir, False, image_size)
    os.makedirs(folder, exist_ok=True)
    for i in balanced_subset(test.labels, per_class * len(test.classes)).tolist():
        name = f'{test.classes[test.labels[i]]}-{i}.png'
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(os.path.join(folder, name))


def make_split(labels: torch.Tensor, seed: int, val_size: int | None = None, route_size: int | None = None,
               dataset: str = '', subset: int | None = None):
    """Split a training set into train / val / route, class-balanced and fixed by the seed.

    The held-out images visit the classes round-robin, but no class gives more than its share (in proportion to
    its size, rounded up) nor its last image: a rare class of an uneven folder would otherwise go whole into val
    and route, and never be trained on. A set whose classes are even within one image splits as it always has.

    Returns ({'train','val','route'} -> index tensor, record). The record is stored in every
    checkpoint so that a later stage can check it trains and evaluates on the same split.
    """
    n = len(labels)
    default = min(n // 10, 5000)
    val_size = default if val_size is None else val_size
    route_size = default if route_size is None else route_size
    more = 'a larger --subset' if subset else 'more training images'
    if val_size < 1:
        raise UserError(f'--val-size is {val_size} with {n} training images, but every stage picks its best epoch on '
                        f'val; pass --val-size 1 or more, or use {more}')
    if route_size < 0 or val_size + route_size > n - 2:  # BatchNorm cannot train on a batch of one image
        left = max(n - val_size - route_size, 0)
        raise UserError(f'--val-size {val_size} and --route-size {route_size} leave {left} of {n} images to train '
                        f'on, fewer than 2; use {more} or smaller sizes')
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    order = perm[interleave_classes(labels[perm])]
    val = _held_out(order, labels, val_size, torch.zeros(n, dtype=torch.bool))
    held = _held_out(order, labels, val_size + route_size, val)
    parts = {'val': order[val], 'route': order[held & ~val], 'train': order[~held]}
    digest = hashlib.sha1(labels.numpy().tobytes() + parts['val'].numpy().tobytes()
                          + parts['route'].numpy().tobytes()).hexdigest()[:16]
    record = {'dataset': dataset, 'subset': subset, 'seed': seed, 'train': n - val_size - route_size,
              'val': val_size, 'route': route_size, 'digest': digest}
    return parts, record


def _held_out(order: torch.Tensor, labels: torch.Tensor, size: int, already: torch.Tensor) -> torch.Tensor:
    """Which positions of `order` (interleaved by class) the first `size` held-out images take, `already` held
    among them: the earliest of each class up to its cap, ceil(size * (its count + 1) / n), which a class at least
    n / classes - 1 images large never reaches, and at most all its images but one. Where the caps leave too few
    (--val-size and --route-size near the whole set), the earliest of the rest make up the size."""
    n, ordered = len(order), labels[order]
    counts = torch.bincount(labels)
    caps = torch.minimum((size * (counts + 1) + n - 1) // n, counts - 1)
    # Each position's rank within its class: the interleaved order visits every class's images in turn.
    by_class = torch.argsort(ordered, stable=True)
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - (counts.cumsum(0) - counts)[ordered[by_class]]
    eligible = (rank < caps[ordered]) & ~already
    chosen = already | (eligible & (eligible.cumsum(0) <= size - int(already.sum())))
    short = size - int(chosen.sum())
    if short > 0:
        rest = ~chosen
        chosen |= rest & (rest.cumsum(0) <= short)
    return chosen


def channel_stats(images: torch.Tensor, indices: torch.Tensor | None = None, chunk: int | None = None):
    """Per-channel mean and std of uint8 images (those at `indices`, or all), as fractions of 255 (lists, to
    store in checkpoints), from each channel's histogram of its 256 values, counted over chunks: exact, one pass,
    and no float copy of an enlarged training set (torch's sums of uint8 as float64 are also far slower). A channel
    that never varies (all-red images, say) is only centred: dividing by its std of 0 trained on inf."""
    chunk = chunk or _chunk_of(images[0].numel(), 1)
    channels = images.shape[1]
    counts = torch.zeros(channels, 256, dtype=torch.int64)
    for part in images.split(chunk) if indices is None else (images[i] for i in indices.split(chunk)):
        per_channel = part.transpose(0, 1).reshape(channels, -1)
        for c in range(channels):
            counts[c] += torch.bincount(per_channel[c], minlength=256)
    values, count = torch.arange(256, dtype=torch.float64) / 255, counts[0].sum().item()
    mean = (counts * values).sum(1) / count
    std = ((counts * (values - mean[:, None]).square()).sum(1) / max(count - 1, 1)).sqrt()
    varies = (counts > 0).sum(1) > 1
    return mean.tolist(), torch.where(varies, std, 1.0).tolist()


# ---------------------------------------------------------------- everything a stage trains and reports on

@dataclass
class Prepared:
    train: ImageSet  # the training set after --subset; `parts` index into it
    test: ImageSet
    parts: dict  # 'train' / 'val' / 'route' -> index tensor
    split: dict  # the record stored in checkpoints
    mean: list
    std: list
    image_size: int

    @property
    def classes(self):
        return self.train.classes

    def to(self, device) -> 'Prepared':
        """The same data with its images on the device once, for every loader built on it to share."""
        return replace(self, train=self.train.to(device), test=self.test.to(device))


def prepare_data(args) -> Prepared:
    """Load, subset and split the data set the shared flags describe."""
    cache = getattr(args, 'data_cache', None)
    train = load_dataset(args.dataset, args.data_dir, True, args.image_size, cache, args.subset)
    test = load_dataset(args.dataset, args.data_dir, False, args.image_size, cache, args.test_subset)
    parts, split = make_split(train.labels, args.seed, args.val_size, args.route_size, args.dataset, args.subset)
    mean, std = channel_stats(train.images, parts['train'])
    return Prepared(train, test, parts, split, mean, std, train.images.shape[-1])

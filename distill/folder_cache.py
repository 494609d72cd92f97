"""A decoded image folder's cache on disk: written image by image as the folder is decoded, never all held in
memory, and mapped when read, so that a set larger than the memory trains. data.py decodes; this keeps.

A cache is a folder, folder-<source>-<content>/ (source: the folder's path and the image size; content: its
files), holding <split>.npy (N x 3 x S x S uint8, class by class), meta.pt (each split's labels and classes, and
the warning about files skipped) and, once a run asks for one, the images of a split's latest --subset
(<split>-subset-<which>.npy). It is built beside its place and renamed into it once complete, so a crash leaves
no half cache behind; a newer cache of the same source replaces the older. CIFAR enlarged is kept the same way,
as one file per split: <dataset>-<split>-<size>px-<content>.npy (keep_array).
"""
import collections
import contextlib
import errno
import io
import math
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import torch

from . import UserError

WHERE_TO_CACHE = '--data-cache (or $DISTILL_CACHE)'


def default_cache_dir() -> str:
    """Where decoded image folders are kept: $DISTILL_CACHE, else data/cache under the working directory."""
    return os.environ.get('DISTILL_CACHE') or os.path.join('data', 'cache')


def free_disk(folder: str) -> int:
    return shutil.disk_usage(folder).free


def in_units(n: int) -> str:
    for shift, unit in ((30, 'GiB'), (20, 'MiB'), (10, 'KiB')):
        if n >= 2**shift:
            return f'{n / 2**shift:.1f} {unit}'
    return f'{n} B'


def _source(cache: str) -> str:
    """What every cache of one folder at one size is named with, whatever its files held: folder-<source>-."""
    return os.path.basename(cache).rsplit('-', 1)[0] + '-'


LEGACY = re.compile(r'folder-[0-9a-f]{16}(\.pt|\.lock)?')  # earlier versions' caches, named by content alone


def _remove_abandoned(cache: str):
    """What a run of this machine killed while decoding this folder left beside the cache, which would fill the
    disk in turn."""
    parent = os.path.dirname(cache) or '.'
    if os.name != 'posix':  # Windows' os.kill(pid, 0) would stop that process, not ask after it
        return
    for name in os.listdir(parent):
        pid = name.partition('.part-')[2].split('-')[0]
        if name.startswith(_source(cache)) and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                _remove(os.path.join(parent, name))
            except OSError:  # alive, another user's
                pass


def _remove_superseded(cache: str):
    """Once a cache is complete: the caches of the same folder from before its files changed, and earlier
    versions' caches, which no run reads again. Each change to a folder decodes it anew, and the old copies would
    fill the disk in turn; a run still mapping one keeps reading it (the OS frees the files when it ends)."""
    parent, own = os.path.dirname(cache) or '.', os.path.basename(cache)
    for name in os.listdir(parent):
        older = name.startswith(_source(cache)) and not name.endswith('.lock') and '.part-' not in name
        if name != own and (older or LEGACY.fullmatch(name)):
            _remove(os.path.join(parent, name))


def _remove(path: str):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def one_at_a_time(cache: str):
    """Held while a cache is looked for and, where missing, decoded: torchrun's processes then decode once."""
    try:
        import fcntl
        os.makedirs(os.path.dirname(cache) or '.', exist_ok=True)
        lock = open(cache + '.lock', 'a')
    except (ImportError, OSError):  # Windows, or a cache folder that cannot be written: no waiting
        yield
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another run to finish decoding into '{cache}'", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some NFS): no waiting
            pass
        try:
            yield
        finally:  # one that waits on it reads the cache once it has the lock; a newcomer finds the cache
            with contextlib.suppress(OSError):
                os.remove(cache + '.lock')


def read_cache(folder: str) -> dict | None:
    """{split: (images, labels, classes)} of a decoded folder's cache, mapped, not read into memory: a set larger
    than the memory trains, the train and test sets are loaded by two calls, and torchrun's processes map the same
    files. None where there is no complete cache."""
    try:
        meta = torch.load(os.path.join(folder, 'meta.pt'), weights_only=True)
        skipped = meta.pop('skipped')
        splits = {}
        for split, entry in meta.items():
            images = _mapped_npy(os.path.join(folder, f'{split}.npy'))
            if images.shape[0] != len(entry['labels']):
                return None
            splits[split] = (torch.from_numpy(images), entry['labels'], entry['classes'])
    except Exception:  # none, or cut short by a crash: decode again
        return None
    if skipped:
        warn_once(skipped)
    return splits


def _mapped_npy(file: str) -> np.ndarray:
    try:  # copy-on-write: writable for torch, and the file is never changed
        return np.load(file, mmap_mode='c')
    except (OSError, ValueError):  # a file system that cannot map files: read
        return np.load(file)


def read_array(file: str, shape: tuple) -> torch.Tensor | None:
    """The uint8 array of `shape` that write_array wrote, mapped; None where it is missing or cut short."""
    try:
        array = _mapped_npy(file)
    except (OSError, ValueError):
        return None
    return torch.from_numpy(array) if array.shape == shape and array.dtype == np.uint8 else None


def write_array(file: str, shape: tuple, chunks):
    """uint8 chunks, in order, as one .npy file of `shape`, never held whole: written beside the file and renamed
    into place, so that a crash leaves no half file; then an older file of the same source is removed."""
    parent = os.path.dirname(file) or '.'
    os.makedirs(parent, exist_ok=True)
    _remove_abandoned(file)
    fd, part = tempfile.mkstemp(prefix=f'{os.path.basename(file)}.part-{os.getpid()}-', dir=parent)
    try:
        with os.fdopen(fd, 'wb') as out:
            np.lib.format.write_array_header_2_0(out, {'descr': '|u1', 'fortran_order': False, 'shape': shape})
            for chunk in chunks:
                out.write(chunk.numpy().tobytes())
        os.replace(part, file)
    finally:
        _remove(part)  # gone already where it was renamed
    _remove_superseded(file)


def keep_array(file: str, shape: tuple, chunks) -> torch.Tensor:
    """The uint8 array of `shape` kept in `file`, mapped: as a run wrote it before, or else written first from
    chunks(), uint8 tensors in order. OSError where the disk has no room for it or it cannot be written or read."""
    with one_at_a_time(file):  # torchrun's processes: one writes, the others map its file
        mapped = read_array(file, shape)
        if mapped is None:
            parent = os.path.dirname(file) or '.'
            os.makedirs(parent, exist_ok=True)
            need, room = math.prod(shape), free_disk(parent)
            if need > room:
                raise OSError(errno.ENOSPC, f'{in_units(need)} needed, {in_units(room)} free')
            write_array(file, shape, chunks())
            mapped = read_array(file, shape)
    if mapped is None:
        raise OSError(errno.EIO, f"'{file}' could not be read back")
    return mapped


class DecodedOnDisk:
    """Decoded images written to disk as they come, one file per (split, class), never all held in memory: a
    folder larger than the memory decodes, and is then mapped from its cache as a set that fits is. The files
    are built in a folder beside the cache, which becomes the cache in one rename once complete; where the cache
    cannot be written, in a temporary folder, mapped for this run and then removed."""

    def __init__(self, cache: str, size: int):
        # split -> class -> images written; split -> labels and classes once joined
        self.cache, self.size, self.counts, self.splits = cache, size, collections.defaultdict(dict), {}
        self.files, self.handles, self.published = {}, {}, False
        parent = os.path.dirname(cache) or '.'
        try:
            os.makedirs(parent, exist_ok=True)
            _remove_abandoned(cache)
            self.folder = tempfile.mkdtemp(prefix=f'{os.path.basename(cache)}.part-{os.getpid()}-', dir=parent)
            self.kept = True
        except OSError as err:
            try:
                self.folder, self.kept = tempfile.mkdtemp(prefix='distill-decoded-'), False
            except OSError:
                raise UserError(f"could not write the decoded images in '{parent}' ({err.strerror}) nor in a "
                                f"temporary folder; point {WHERE_TO_CACHE} at a writable folder") from None
            print(f"warning: could not cache the decoded images in '{parent}' ({err.strerror}); decoding into a "
                  f"temporary folder for this run only (point {WHERE_TO_CACHE} at a writable folder)",
                  file=sys.stderr)
        self.room = free_disk(self.folder)

    def __enter__(self):
        return self

    def __exit__(self, *error):
        for f in self.handles.values():  # nothing more to write: what is left is removed
            with contextlib.suppress(OSError):
                f.close()
        if not self.published:
            shutil.rmtree(self.folder, ignore_errors=True)

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except OSError as err:
            raise UserError(f"could not write the decoded images in '{self.folder}' ({err.strerror}); free some "
                            f"space there, or point {WHERE_TO_CACHE} at a disk with room") from None

    def append(self, split: str, cls: str, image: torch.Tensor):
        key = (split, cls)
        with self._writing():
            if key not in self.handles:
                if len(self.handles) >= 64:  # a thousand classes would pass the OS's limit on open files
                    self._close()
                self.files.setdefault(key, os.path.join(self.folder, f'{len(self.files)}.raw'))
                self.handles[key] = open(self.files[key], 'ab')
            self.handles[key].write(image.numpy().tobytes())
        self.counts[split][cls] = self.counts[split].get(cls, 0) + 1

    def _close(self):
        with self._writing():
            for f in self.handles.values():
                f.close()
        self.handles = {}

    def rename_class(self, split: str, name: str, cls: str):
        self.counts[split][cls] = self.counts[split].pop(name)
        self.files[(split, cls)] = self.files.pop((split, name))

    def write_split(self, split: str, classes: list):
        """The split's images, class by class in the order of `classes`, as one .npy file; each class's file
        removed once copied."""
        self._close()
        counts = [self.counts[split].get(cls, 0) for cls in classes]
        header = {'descr': '|u1', 'fortran_order': False, 'shape': (sum(counts), 3, self.size, self.size)}
        with self._writing(), open(os.path.join(self.folder, f'{split}.npy'), 'wb') as out:
            np.lib.format.write_array_header_2_0(out, header)
            for cls in classes:
                if (split, cls) in self.files:
                    with open(self.files[(split, cls)], 'rb') as part:
                        shutil.copyfileobj(part, out, 1 << 20)
                    os.remove(self.files.pop((split, cls)))
        self.splits[split] = {'labels': torch.repeat_interleave(torch.arange(len(classes)), torch.tensor(counts)),
                              'classes': list(classes)}

    def finish(self, skipped: str) -> dict:
        """The splits, mapped. The warning about files skipped goes with them, to be said again by every run
        that reads the cache."""
        meta = io.BytesIO()
        torch.save({**self.splits, 'skipped': skipped}, meta)
        with self._writing(), open(os.path.join(self.folder, 'meta.pt'), 'wb') as f:
            f.write(meta.getvalue())
        folder = self.folder
        if self.kept:
            if os.path.isdir(self.cache):  # an older cache that did not read
                shutil.rmtree(self.cache, ignore_errors=True)
            try:
                os.rename(self.folder, self.cache)
                folder = self.cache
            except OSError:  # another process published the same cache first: ours is removed on exit
                return read_cache(self.cache) or self._mapped(folder)
            self.published = True
            _remove_superseded(self.cache)
        return self._mapped(folder)

    def _mapped(self, folder: str) -> dict:
        splits = read_cache(folder)  # a temporary folder: the mapping outlives its removal
        if splits is None:
            raise UserError(f"could not read back the decoded images in '{folder}'; check that disk, or point "
                            f"{WHERE_TO_CACHE} at another")
        return splits


WARNED = set()


def warn_once(warning: str):
    """A script loads train and test in two calls, from one decoding: each warning is said once a run."""
    if warning not in WARNED:
        WARNED.add(warning)
        print(warning, file=sys.stderr)

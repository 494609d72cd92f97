"""Checkpoints: atomic save, weights_only load, the checks a later stage makes before using one, and the lock that
lets one run at a time write a run folder.

A checkpoint is a dict of plain types and tensors (see GUIDE.md), so it loads with
torch.load(weights_only=True) and can be rebuilt into its model without extra flags.
"""
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import tempfile
import threading

import torch

from models import build_model

from . import UserError


# Ctrl-C, and the SIGTERM of `kill`, `timeout` or a cluster's scheduler: both stop a run the same way.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold a stop signal until the block ends, then raise KeyboardInterrupt: a save interrupted inside torch's
    C++ writer ends in a RuntimeError traceback instead of the one-line message (and main_guard never sees
    a KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
    if caught:
        raise KeyboardInterrupt


# What a full, read-only or failing disk raises while a file is written: one line for the user, not a traceback.
WRITE_ERRNOS = {getattr(errno, name) for name in ('ENOSPC', 'EDQUOT', 'EFBIG', 'EROFS', 'EIO') if hasattr(errno, name)}


class WriteFailed(UserError):
    def __init__(self, path: str, reason: str):
        super().__init__(f"could not write '{path}' ({reason}); free some space or choose another path, then run "
                         f"again (what was there before is unchanged)")
        self.path, self.reason = path, reason


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'w'):
    """A file opened beside path that replaces path only once the block finishes, fsynced: a crash, a full
    disk or Ctrl-C leaves the old file whole and no temporary behind. A link is written through, to the file it
    names; a device or pipe (/dev/null, a FIFO) is written directly, since it cannot be replaced."""
    path = os.path.realpath(path)
    special = os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path)
    tmp = path if special else f'{path}.tmp{os.getpid()}'
    try:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        # Text as UTF-8; a file name that is not (bytes kept by the OS as surrogates) is written back as it was.
        text = {} if 'b' in mode else {'newline': '', 'encoding': 'utf-8', 'errors': 'surrogateescape'}
        with open(tmp, mode, **text) as f:
            yield f
            f.flush()
            if not special:
                os.fsync(f.fileno())
        if not special:
            os.replace(tmp, path)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise WriteFailed(path, err.strerror) from None
    finally:
        if not special and os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def staged_folder(folder: str):
    """A new folder beside `folder` for the block to write into; once the block ends, each of its files moves
    into `folder` (a rename: it needs no room), so that a full disk or Ctrl-C while writing leaves `folder` as
    it was, not some files of a new set beside the rest of an old one."""
    folder = os.path.realpath(folder)
    try:
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(folder)}.', dir=os.path.dirname(folder))
    except OSError as err:
        raise WriteFailed(folder, err.strerror) from None
    try:
        try:
            yield staging
        except WriteFailed as err:  # name the file where it was going, not its staged copy
            if not os.path.realpath(err.path).startswith(staging + os.sep):
                raise
            raise WriteFailed(os.path.join(folder, os.path.relpath(err.path, staging)), err.reason) from None
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str, payload):
    with atomic_write(path) as f:
        json.dump(payload, f, indent=2)


def save_checkpoint(state: dict, path: str):
    # Serialised in memory first: torch's writer turns a full disk into an unreadable RuntimeError.
    with interrupts_deferred():
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with atomic_write(path, 'wb') as f:
            f.write(buffer.getbuffer())


def load_checkpoint(path: str, map_location='cpu') -> dict:
    if not os.path.isfile(path):
        last = os.path.join(os.path.dirname(path), 'last.pt')
        if os.path.basename(path) == 'best.pt' and os.path.isfile(last):  # copied alone, or cut off in between
            raise UserError(f"checkpoint '{path}' does not exist, but '{last}' does; pass that to use it")
        raise UserError(f"checkpoint '{path}' does not exist; train that stage first or pass the right path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch.load raises many types for damaged files; all mean the same here
        raise UserError(f"checkpoint '{path}' is truncated or not a checkpoint ({err.__class__.__name__}); "
                        f"retrain that stage or pass another file") from None
    if not isinstance(state, dict) or 'arch' not in state or 'model' not in state:
        raise UserError(f"'{path}' is not a checkpoint of this project (no arch/model); pass a best.pt or last.pt")
    return state


def linked_path(path: str, owner: str, owner_state: dict) -> str | None:
    """Where a checkpoint that the checkpoint `owner` names (a selector's expert, a student's teacher) is
    now, or None if it is gone.

    Both paths were stored as given in the same working directory, so their relative position is
    known: the link still holds from another working directory or after the runs were moved together."""
    out = owner_state.get('config', {}).get('out')
    candidates = [path]
    if out and os.path.isabs(out) == os.path.isabs(path):
        candidates.insert(0, os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(owner)),
                                                             os.path.relpath(path, out))))
    found = next((c for c in candidates if os.path.isfile(c)), None)
    return found and (found if os.path.isabs(path) else os.path.relpath(found))


# Where things are, how fast they run and what is reported: settings that do not change what a run trains.
# --resume may change them, pipeline.py does not retrain for them, and seeds differ in them and in --seed.
INCIDENTAL_SETTINGS = frozenset({'resume', 'overwrite', 'out', 'device', 'amp', 'compile', 'data_dir', 'data_cache',
                                 'cache_dir', 'teacher', 'teacher_logits', 'experts', 'test_subset'})


def weights_digest(weights: dict) -> str:
    """Names what a model has learned: a retrained checkpoint at the same path gets another digest."""
    digest = hashlib.sha1()
    for name, tensor in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


# Settings added after runs had been made, with the value those runs were made with.
ADDED_SETTINGS = {'init': 'random'}


def changed_settings(saved: dict, asked: dict, also_incidental=()) -> list:
    """The settings that identify a run and differ between a saved config and the asked one (None: not asked)."""
    ignored = INCIDENTAL_SETTINGS | set(also_incidental)
    return [k for k, v in asked.items()
            if k not in ignored and v is not None and saved.get(k, ADDED_SETTINGS.get(k)) != v]


def run_dir(root: str, arch: str, distilled: bool = True) -> str:
    """Where a student's run goes: ROOT/<arch>, or ROOT/<arch>-nokd for its twin trained without a teacher."""
    return os.path.join(root, arch if distilled else f'{arch}-nokd')


def failure_reason(err: Exception) -> str:
    """One line of an error's message, at most 160 characters: load_state_dict's first line only says that it
    failed, and its next says which weights do not fit."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [repr(err)]
    why = lines[1] if len(lines) > 1 and lines[0].startswith('Error(s) in loading') else lines[0]
    return why if len(why) <= 160 else why[:157] + '...'


def model_from_checkpoint(state: dict, path: str = 'checkpoint') -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights."""
    try:
        model = build_model(state['arch'], state['num_classes'], **state.get('model_args', {}))
        model.load_state_dict(state['model'])
    except (ValueError, RuntimeError, KeyError) as err:
        why = failure_reason(err)
        raise UserError(f"cannot rebuild the model in '{path}' ({why}); retrain that stage, or pass the checkpoint "
                        f"it wrote") from None
    return model


# What stages and inference read of a classifier's checkpoint, beyond its arch and model.
CLASSIFIER_KEYS = ('num_classes', 'class_names', 'image_size', 'mean', 'std', 'split', 'config')


def check_classifier(state: dict, path: str):
    """A teacher, student or expert classifies images; a selector reads an expert's outputs and cannot. Weights
    saved by other code, with an arch and a model but not the rest, are refused before something reads the rest."""
    if 'experts' in state:
        raise UserError(f"'{path}' is a selector, not an image classifier; pass a teacher or student checkpoint "
                        f"here (a selector goes to --selector)")
    missing = [key for key in CLASSIFIER_KEYS if key not in state]
    if missing:
        raise UserError(f"'{path}' lacks {', '.join(missing)}, which every checkpoint of this project holds; pass a "
                        f"best.pt that one of its scripts wrote")


def check_compatible(state: dict, path: str, *, arch=None, num_classes=None, split=None, image_size=None):
    """Refuse, in one line, a checkpoint trained for another model, class count, split or image size."""
    checks = [('arch', arch), ('num_classes', num_classes), ('split', split), ('image_size', image_size)]
    for key, expected in checks:
        if expected is not None and state.get(key) != expected:
            raise UserError(f"'{path}' has {key}={state.get(key)!r} but this run needs {expected!r}; "
                            f"use a checkpoint trained on the same data, split and settings, or retrain it")


def rng_state() -> dict:
    state = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


_RUNS_WRITING = {}  # OUT's real path -> the lock file this process holds for it


@contextlib.contextmanager
def one_run_writing(out: str, rank: int = 0):
    """Held while a run writes OUT (by rank 0, for all of torchrun's processes): a second run launched into the
    same folder, which would mix its checkpoints and logs with the first's, ends in one line instead. The lock
    is a file in the temporary folder, not in OUT, removed at the end; the OS drops it with a killed process."""
    key = os.path.realpath(out)
    lock = None if rank or key in _RUNS_WRITING else _lock_run(key, out)
    if lock is not None:
        _RUNS_WRITING[key] = lock
    try:
        yield
    finally:
        if lock is not None:
            del _RUNS_WRITING[key]
            with contextlib.suppress(OSError):
                os.remove(lock.name)  # before the unlock: a run that opened it then finds it gone, and retries
            lock.close()


def _lock_run(key: str, out: str):
    """The locked file, its holder's process id in it; None where locks are not to be had (Windows, a file
    system without them, a temporary folder where another user's lock of that name sits)."""
    path = os.path.join(tempfile.gettempdir(), f'distill-run-{hashlib.sha1(key.encode()).hexdigest()[:16]}.lock')
    try:
        import fcntl
    except ImportError:
        return None
    while True:
        try:
            lock = open(path, 'a+')
        except OSError:
            return None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or '?'
            lock.close()
            raise UserError(f"another run (process {holder}) is writing to '{out}'; wait for it to end, or pass "
                            f"another --out") from None
        except OSError:
            lock.close()
            return None
        try:
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:  # not removed by its last holder meanwhile
                lock.truncate(0)
                lock.write(str(os.getpid()))
                lock.flush()
                return lock
        except OSError:
            pass
        lock.close()

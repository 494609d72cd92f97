"""Checkpoints: atomic save, weights_only load, and the checks a later stage makes before using one.

A checkpoint is a dict of plain types and tensors (see GUIDE.md), so it loads with
torch.load(weights_only=True) and can be rebuilt into its model without extra flags.
"""
import contextlib
import os

import torch

from models import build_model

from . import UserError


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'w'):
    """A file opened beside path that replaces path only once the block finishes, fsynced: a crash or
    Ctrl-C leaves the old file whole and no temporary behind."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, mode, **({} if 'b' in mode else {'newline': ''})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(state: dict, path: str):
    with atomic_write(path, 'wb') as f:
        torch.save(state, f)


def load_checkpoint(path: str, map_location='cpu') -> dict:
    if not os.path.isfile(path):
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


def model_from_checkpoint(state: dict, path: str = 'checkpoint') -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights."""
    try:
        model = build_model(state['arch'], state['num_classes'])
        model.load_state_dict(state['model'])
    except (ValueError, RuntimeError, KeyError) as err:
        raise UserError(f"cannot rebuild the model in '{path}' ({str(err).splitlines()[0]})") from None
    return model


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

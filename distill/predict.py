"""From checkpoints to predictions on new images: the classifier infer.py runs (the routing, one expert, or
any checkpoint alone) and the table it writes."""
import csv
import glob
import json
import math
import os
import sys

import torch
from PIL import Image

from . import UserError
from .checkpoint import atomic_write, check_classifier, load_checkpoint
from .cli import check_writable, checkpoint_path
from .data import ARCHIVES
from .images import READ_ERRORS, list_image_files, read_images
from .routing.experts import load_selector, selector_experts
from .routing.report import unpaid_routing_note
from .routing.router import router_for
from .runtime import fast_inference, inference_model

FIELDS = ('path', 'prediction', 'confidence', 'expert', 'error')


def build_classifier(selector_path: str, device, amp, *, teacher=None, expert=None, route=None, thresholds=None,
                     cost_weight=None, cost='stored', batch_size: int = 256):
    """A function from (images, tag) batches to (tag, logits, expert names) per batch, in input order, and the
    checkpoint whose preprocessing it needs: one checkpoint alone (teacher), one of the selector's experts
    alone (expert), or the selector's routing, whose later experts run on batches gathered across calls."""
    if teacher:
        path = checkpoint_path(teacher)
        state = load_checkpoint(path)
        check_classifier(state, path)
        model = fast_inference(inference_model(state, path, device), device)
        return one_model(model, os.path.basename(os.path.dirname(os.path.abspath(path)))), state
    state = load_selector(selector_path)
    experts = selector_experts(state, selector_path, device)
    names = [e.name for e in experts]
    if expert:
        matches = [e for e in experts if expert in (e.name, e.state['arch'])]
        if not matches:
            raise UserError(f"no expert named '{expert}'; the selector's experts are {', '.join(names)} (any other "
                            f"model, the teacher too, runs alone with --teacher and its checkpoint)")
        return one_model(matches[0], matches[0].name), matches[0].state
    router = router_for(state, experts, inference_model(state, selector_path, device), mode=route,
                        thresholds=thresholds, cost_weight=cost_weight, cost=cost, amp=amp, where=selector_path,
                        batch_size=batch_size)
    note = unpaid_routing_note(state, router.mode, device)
    if note and thresholds is None and cost_weight is None:  # the operating point that was timed
        print(note, file=sys.stderr)

    def classify(batches):
        for tag, logits, choice in router.stream(batches, batch_size):
            yield tag, logits, [names[i] for i in choice.tolist()]
    return classify, experts[0].state


def one_model(model, name: str):
    """build_classifier's function for one model that answers every image."""
    def classify(batches):
        for images, tag in batches:
            yield tag, model(images) if len(images) else None, [name] * len(images)
    return classify


def files_to_classify(paths: list, out: str) -> list:
    """The files infer.py reads: those under each folder and each file named (a shell's pictures/*.jpg), each
    once, never the table it writes. A table written there by an earlier run is left out; an image named as
    the table is refused, not replaced."""
    files = []
    for path in expand_patterns(paths):
        if not os.path.lexists(path):  # a broken link is there: it is listed as unreadable, as in a folder
            raise UserError(f"image folder or file '{path}' does not exist; pass folders or files of images")
        if not os.path.isdir(path) and path.lower().endswith(ARCHIVES):
            raise UserError(f"'{path}' is an archive; unpack it and pass the folder of images it holds")
        files += list_image_files(path) if os.path.isdir(path) else [path]
    unique = {}
    for file in files:  # a file named twice, or also in a folder named, is read once
        unique.setdefault(os.path.abspath(file), file)
    files = list(unique.values())
    if out != '-':
        check_writable(out)
        table = os.path.realpath(out)
        if table in map(os.path.realpath, files):
            if is_image(out):
                raise UserError(f"--out '{out}' is one of the images to classify; write the table to another "
                                f"file, e.g. predictions.csv")
            files = [f for f in files if os.path.realpath(f) != table]
        if os.path.isfile(out) and os.path.getsize(out) and not written_here(out):
            raise UserError(f"--out '{out}' already holds a file that infer.py did not write; pass another --out, or "
                            f"move that file first")
    if not files:
        raise UserError(f"no file found in {named(paths)}; pass a folder of images")
    return files


def written_here(path: str) -> bool:
    """Whether the file is a table of infer.py's (any version's), which a later run may replace."""
    try:
        with open(path, 'rb') as f:
            head = f.read(64)
    except OSError:
        return False
    compact = b''.join(head.split())  # JSON as json.dumps spaces it, or as an editor reflowed it
    return head.startswith(b'path,prediction,') or compact.startswith((b'[{"path":', b'[]'))


def expand_patterns(paths: list) -> list:
    """Each path as given where it exists, else with ~ and a pattern (photos/*.jpg) expanded here: Windows' shells
    and a quoted pattern leave them to the program. A pattern that matches nothing is refused, as a path would be."""
    expanded = []
    for path in paths:
        path = path if os.path.lexists(path) else os.path.expanduser(path)
        if os.path.lexists(path) or not any(char in path for char in '*?['):
            expanded.append(path)
            continue
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise UserError(f"no file matches '{path}'; pass folders or files of images")
        expanded += matches
    return expanded


def named(paths: list) -> str:
    """The folders or files infer.py was given, for a message: a shell's pictures/*.jpg may be thousands."""
    return f"'{paths[0]}'" if len(paths) == 1 else f'the {len(paths)} paths given'


def is_image(path: str) -> bool:
    try:
        with Image.open(path):  # reads the header only
            return True
    except READ_ERRORS:
        return False


class FileBatches(torch.utils.data.Dataset):
    """Item i: the i-th batch_size files, read as read_images reads them (unreadable ones listed, not raised)."""

    def __init__(self, files: list, batch_size: int, size: int):
        self.files, self.batch_size, self.size = files, batch_size, size

    def __len__(self):
        return math.ceil(len(self.files) / self.batch_size)

    def __getitem__(self, i):
        return read_images(self.files[i * self.batch_size:(i + 1) * self.batch_size], self.size)


def default_workers(device) -> int:
    """Processes that decode images while the model runs: on a GPU, decoding is most of infer.py's time; on
    a CPU the model needs every core."""
    return min(8, (os.cpu_count() or 1) - 1) if torch.device(device).type == 'cuda' else 0


def read_batches(files: list, batch_size: int, size: int, workers: int, device):
    """(uint8 images, paths read, [(path, why)]) per batch of files, in order; decoded by `workers` processes
    ahead of the model (0: here, one batch at a time)."""
    return torch.utils.data.DataLoader(FileBatches(files, batch_size, size), batch_size=None, num_workers=workers,
                                       pin_memory=torch.device(device).type == 'cuda')


def write_rows(path: str, fmt: str, rows):
    """Stream rows to standard output, or into a file that replaces path only when complete."""
    def write(f):
        if fmt == 'csv':
            writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator='\n')
            writer.writeheader()
            writer.writerows(rows)
        else:
            f.write('[')
            for i, row in enumerate(rows):
                f.write((',\n ' if i else '\n ') + json.dumps(row))
            f.write('\n]\n')
    if path == '-':
        sys.stdout.reconfigure(errors='surrogateescape')  # file names that are not UTF-8, as the OS gave them
        return write(sys.stdout)
    with atomic_write(path) as f:
        write(f)

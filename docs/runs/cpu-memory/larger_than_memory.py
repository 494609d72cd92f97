"""A folder whose decoded images are twice the memory the process may use: decoded, split, and every batch of an
epoch drawn (train augmented; val, route and test), as a training script reads them. 12,000 random 32-px JPEGs
in 10 classes, read at --image-size 248 (2.2 GB decoded), in a cgroup (v1) that holds the process to 1 GiB:

    python docs/runs/cpu-memory/larger_than_memory.py make /tmp/bigds
    mkdir -p /sys/fs/cgroup/memory/kd && echo 1G > /sys/fs/cgroup/memory/kd/memory.limit_in_bytes
    sh -c 'echo $$ > /sys/fs/cgroup/memory/kd/cgroup.procs && exec python docs/runs/cpu-memory/larger_than_memory.py \
        load /tmp/bigds /tmp/bigcache'; echo "exit $?"
    cat /sys/fs/cgroup/memory/kd/memory.max_usage_in_bytes   # page cache included: the kernel drops it at the limit
Run `load` twice: the first decodes, the second maps the cache. The peak of anonymous memory (what cannot be
dropped) is sampled every 50 ms.

CIFAR-10 enlarged the same way: `make-cifar /tmp/cifar` writes torchvision's CIFAR-10 files, at their sizes, of
random pixels, and `DATASET=cifar10 SIZE=96 ... load /tmp/cifar /tmp/cifarcache` reads them as a training script
does (50,000 + 10,000 images, 1.54 GiB at 96 px). `SUBSET=6000 ... load` takes a --subset of the training images.
"""
import os
import sys
import threading
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


def anonymous_peak(peak: list):
    while True:
        with open('/proc/self/status') as f:
            fields = dict(line.split(':', 1) for line in f)
        peak[0] = max(peak[0], int(fields['RssAnon'].split()[0]) * 1024)
        time.sleep(0.05)


ARGS = {'make': 3, 'make-cifar': 3, 'load': 4}  # how many words each mode's command has
if len(sys.argv) < 2 or ARGS.get(sys.argv[1]) != len(sys.argv):
    sys.exit('usage: larger_than_memory.py make FOLDER | make-cifar FOLDER | load FOLDER CACHE (see its docstring)')
if sys.argv[1] == 'make':
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from folder_decode_memory import make_folder
    make_folder(sys.argv[2], train=10000, test=2000)
elif sys.argv[1] == 'make-cifar':
    import pickle
    import numpy as np
    folder = os.path.join(sys.argv[2], 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump({'data': rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
                         'labels': [i % 10 for i in range(10000)]}, f)
    with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
        pickle.dump({'label_names': [f'c{c}' for c in range(10)]}, f)
elif sys.argv[1] == 'load':
    from distill.data import prepare_data
    dataset = os.environ.get('DATASET', 'folder')
    if dataset == 'cifar10':  # torchvision checks the files' md5 sums: those of the files just written
        import hashlib
        from torchvision.datasets import CIFAR10

        def md5(name):
            with open(os.path.join(sys.argv[2], CIFAR10.base_folder, name), 'rb') as f:
                return [name, hashlib.md5(f.read()).hexdigest()]
        CIFAR10.train_list = [md5(name) for name, _ in CIFAR10.train_list]
        CIFAR10.test_list = [md5(name) for name, _ in CIFAR10.test_list]
        CIFAR10.meta = {**CIFAR10.meta, 'md5': md5(CIFAR10.meta['filename'])[1]}
    from distill.loaders import split_loader
    peak = [0]
    threading.Thread(target=anonymous_peak, args=(peak,), daemon=True).start()
    start = time.perf_counter()
    args = SimpleNamespace(dataset=dataset, data_dir=sys.argv[2], image_size=int(os.environ.get('SIZE', 248)),
                           subset=int(os.environ.get('SUBSET', 0)) or None, test_subset=None, seed=0,
                           val_size=None, route_size=None, data_cache=sys.argv[3])
    data = prepare_data(args).to('cpu')
    loaded = time.perf_counter()
    decoded = (data.train.images.nbytes + data.test.images.nbytes) / 2**30
    print(f'{len(data.train)} training and {len(data.test)} test images, {decoded:.2f} GiB decoded, '
          f'loaded in {loaded - start:.0f} s')
    drawn = 0
    for part in ('train', 'val', 'route', 'test'):
        for images, labels, _ in split_loader(data, part, 64, 'cpu', train=part == 'train'):
            drawn += len(labels)
    print(f'{drawn} images drawn in batches of 64 in {time.perf_counter() - loaded:.0f} s; '
          f'peak anonymous memory {peak[0] / 2**30:.2f} GiB')

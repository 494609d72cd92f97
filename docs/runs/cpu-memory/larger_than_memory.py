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


if sys.argv[1] == 'make':
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from folder_decode_memory import make_folder
    make_folder(sys.argv[2], train=10000, test=2000)
elif sys.argv[1] == 'load':
    from distill.data import prepare_data
    from distill.loaders import split_loader
    peak = [0]
    threading.Thread(target=anonymous_peak, args=(peak,), daemon=True).start()
    start = time.perf_counter()
    args = SimpleNamespace(dataset='folder', data_dir=sys.argv[2], image_size=int(os.environ.get('SIZE', 248)),
                           subset=None, test_subset=None, seed=0, val_size=None, route_size=None,
                           data_cache=sys.argv[3])
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

"""Peak memory of decoding an image folder: 20,000 random 32-px JPEGs in 10 classes, read at --image-size 96.

    python docs/runs/cpu-memory/folder_decode_memory.py make /tmp/memds            # the folder, once
    /usr/bin/time -f '%M KB' python docs/runs/cpu-memory/folder_decode_memory.py load /tmp/memds /tmp/memcache
    /usr/bin/time -f '%M KB' python docs/runs/cpu-memory/folder_decode_memory.py load-both /tmp/memds /tmp/memcache2
    /usr/bin/time -f '%M KB' python docs/runs/cpu-memory/folder_decode_memory.py import
The first load decodes and writes the cache, the second reads the cache; `load-both` loads the training and the
test set in two calls, as every training script does, and reads every pixel, as training does; `import` is the
floor (torch alone).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from distill.data import load_dataset  # noqa: E402


def make_folder(root: str, train: int = 16000, test: int = 4000):
    """Random 32-px JPEGs in 10 classes, as train/<class>/ and test/<class>/."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (('train', train), ('test', test)):
        for c in range(10):
            os.makedirs(os.path.join(root, split, f'c{c}'), exist_ok=True)
            for i in range(n // 10):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, split, f'c{c}', f'{i}.jpg'))


if __name__ == '__main__':
    if len(sys.argv) < 2 or {'make': 3, 'load': 4, 'load-both': 4}.get(sys.argv[1]) != len(sys.argv):
        sys.exit('usage: folder_decode_memory.py make FOLDER | load FOLDER CACHE | load-both FOLDER CACHE')
    if sys.argv[1] == 'make':
        make_folder(sys.argv[2])
    elif sys.argv[1] == 'load':
        train = load_dataset('folder', sys.argv[2], train=True, image_size=96, cache_dir=sys.argv[3])
        print(f'{len(train)} training images, {train.images.numel() / 2**20:.0f} MiB decoded '
              f'(the test set beside them)')
    elif sys.argv[1] == 'load-both':
        import torch
        train = load_dataset('folder', sys.argv[2], train=True, image_size=96, cache_dir=sys.argv[3])
        test = load_dataset('folder', sys.argv[2], train=False, image_size=96, cache_dir=sys.argv[3])
        pixels = sum(int(s.images[i:i + 500].sum(dtype=torch.int64)) for s in (train, test)  # in chunks: no big copy
                     for i in range(0, len(s.images), 500))
        print(f'{len(train)} training and {len(test)} test images, every pixel read (sum {pixels})')

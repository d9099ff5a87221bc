"""CPU time of the feature pass with glibc's default large-block handling and with `keep_freed_memory()`.

    python benchmarks/feature_malloc.py IMAGE_DIR [--images 320]

Runs the EfficientNet feature extraction (1 torch thread, no feature cache) over the first N images of
IMAGE_DIR (searched recursively for .png/.jpg) in two fresh processes, one with the default allocator settings
and one with temde.features.keep_freed_memory(), and prints wall, user and system CPU seconds and minor page
faults of each (the first batch, where the model loads, is not counted). CPU seconds and page faults do not
depend on the machine's load the way wall time does.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
import temde.features as F
tuned, paths = sys.argv[1] == "tuned", json.loads(sys.argv[2])
torch.set_num_threads(1)
if not tuned:
    F._MALLOC_TUNED = True  # pretend it is done, so the extractor leaves glibc's defaults alone
extractor = F.FeatureExtractor(cache_dir=None, progress=False, workers=1)
if tuned:
    F._MALLOC_TUNED = False
    assert F.keep_freed_memory()
extractor.extract(paths[:32])
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
extractor.extract(paths[32:])
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": time.perf_counter() - start, "user_s": after.ru_utime - before.ru_utime,
                  "sys_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt}))
"""


def main() -> int:
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", help="a folder of images (searched recursively)")
    parser.add_argument("--images", dest="count", type=int, default=320, help="images to use; default %(default)s")
    args = parser.parse_args()
    paths = sorted(str(p) for p in Path(args.images).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(paths) < 64:
        parser.error(f"{args.images}: need at least 64 images, found {len(paths)}")
    paths = paths[:args.count]
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(paths)], check=True,
                             capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode:8s} {len(paths) - 32} images: wall {r['wall_s']:.1f} s, user {r['user_s']:.1f} s, "
              f"sys {r['sys_s']:.1f} s, minor page faults {r['minor_faults']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write a folder of PNG images (``train/ val/ test/`` with one sub-folder per class) from edgekd's synthetic data.

For trying the image-folder recipes (``examples/imagefolder-gpu.yaml``) where no real images are at hand:

    python benchmarks/make_imagefolder.py /tmp/xray --n 600 --size 224
    edgekd run examples/imagefolder-gpu.yaml --set data=imagefolder:/tmp/xray,size=224 ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgekd.data._synthetic import make_synthetic  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=600, help="training images (val and test: a quarter each)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=2)
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"error: {args.out} exists; give a new folder")
    names = ["normal", "pneumonia"] if args.classes == 2 else [f"class{k}" for k in range(args.classes)]
    data = make_synthetic(classes=args.classes, n=args.n, size=args.size, channels=1, seed=0)
    for part in ("train", "val", "test"):
        ds = getattr(data, part)
        for k in range(args.classes):
            (args.out / part / names[k]).mkdir(parents=True)
        for i in range(len(ds)):
            image, target = ds.images[i], int(ds.targets[i])
            Image.fromarray(image[0], "L").save(args.out / part / names[target] / f"{part}{i:05d}.png")
    print(f"wrote {args.out}: {len(data.train)} / {len(data.val)} / {len(data.test)} images")


if __name__ == "__main__":
    main()

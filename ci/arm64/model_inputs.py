"""Write what the model sees for each sample: its input tensor as a lossless PNG.

    python ci/arm64/model_inputs.py --model models OUT_DIR IMAGE...

The arm64 stage classifies these on both machines as well as the JPEG samples: a PNG of
exactly the model's input size passes through decoding and ``to_model_input`` unchanged, so
the two machines feed the model identical tensors and any difference is the model's kernels'
alone. The JPEG samples add the resize, whose OpenCV code differs between x86 and ARM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from bin_daemon.model.classifier import CARD_FILE, read_card
from bin_daemon.model.preprocess import load_image, to_model_input


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (its card)")
    parser.add_argument("out", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    size = int(read_card(args.model / CARD_FILE)["input"]["size"])
    for image in args.images:
        pixels = to_model_input(load_image(image), size)
        target = args.out / image.parent.name / f"{image.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)):
            raise SystemExit(f"cannot write {target}")
        again = to_model_input(load_image(target), size)
        if not np.array_equal(again, pixels):  # the premise of the check
            raise SystemExit(f"{target}: not read back as the same model input")
    print(f"{len(args.images)} model inputs of {size}x{size} px in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

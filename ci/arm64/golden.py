"""Cross-architecture golden check: arm64's classifications against x86_64's.

    python ci/arm64/golden.py --model models X86.json ARM64.json

Both files are ``bin-daemon classify --json`` output for the same images with the same model.
Every image must get the same label on both, and every score the two share (the confidence
and the top-k entries) must differ by at most --max-steps steps of the model's output
quantisation (its output scale; the JSON rounds scores to 4 decimals, which is allowed for
too). The summary also counts the scores more than one step apart, so a looser
--max-steps (XNNPACK's x86 and aarch64 kernels may round differently; docs/ARM64.md) still
shows the drift.
The last line printed is the verdict: ``golden: PASS ...`` or ``golden: FAIL ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROUNDING = 1e-4  # classify --json rounds scores to 4 decimals: up to 0.5e-4 on each side


def output_scale(model: Path) -> float:
    """The output tensor's quantisation scale (one step, in score units)."""
    from ai_edge_litert.interpreter import Interpreter

    if model.is_dir():
        found = sorted(model.glob("*.tflite"))
        if len(found) != 1:
            raise SystemExit(f"golden: FAIL: expected one .tflite in {model}, found {len(found)}")
        model = found[0]
    interpreter = Interpreter(model_path=str(model))
    scale, _zero_point = interpreter.get_output_details()[0]["quantization"]
    if not scale:
        raise SystemExit(f"golden: FAIL: {model.name} has a float output: no quantisation step")
    return float(scale)


def key(image: str) -> str:
    """The image's class folder and name (the two runs live in different checkouts)."""
    return "/".join(Path(image).parts[-2:])


def compare(
    x86: list[dict], arm: list[dict], step: float, max_steps: float = 1
) -> tuple[list[str], float, int, list[str]]:
    """Problems, the largest score difference, the number of images, scores over one step."""
    problems: list[str] = []
    over_one: list[str] = []
    worst = 0.0
    left = {key(r["image"]): r for r in x86}
    right = {key(r["image"]): r for r in arm}
    if left.keys() != right.keys():
        missing = sorted(left.keys() ^ right.keys())
        problems.append(f"different images in the two runs: {missing[:5]}")
    for name in sorted(left.keys() & right.keys()):
        a, b = left[name], right[name]
        if a.get("error") or b.get("error"):
            problems.append(f"{name}: error x86={a.get('error')!r} arm64={b.get('error')!r}")
            continue
        if a["label"] != b["label"]:
            problems.append(
                f"{name}: label x86={a['label']} ({a['confidence']}) "
                f"arm64={b['label']} ({b['confidence']})"
            )
        pairs = [("confidence", a["confidence"], b["confidence"])]
        top_b = {t["label"]: t["score"] for t in b.get("top", [])}
        pairs += [
            (t["label"], t["score"], top_b[t["label"]])
            for t in a.get("top", [])
            if t["label"] in top_b
        ]
        for what, sa, sb in pairs:
            diff = abs(sa - sb)
            worst = max(worst, diff)
            note = f"{name}: {what} x86={sa} arm64={sb} (|d|={diff:.4f}, {diff / step:.1f} steps)"
            if diff > step + ROUNDING:
                over_one.append(note)
            if diff > max_steps * step + ROUNDING:
                problems.append(note + f" > {max_steps:g} steps")
    return problems, worst, len(left.keys() & right.keys()), over_one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("x86", type=Path)
    parser.add_argument("arm64", type=Path)
    parser.add_argument("--model", type=Path, required=True, help="model folder or .tflite")
    parser.add_argument("--step", type=float, help="quantisation step (default: the model's)")
    parser.add_argument("--max-steps", type=float, default=1, help="allowed score difference")
    args = parser.parse_args(argv)
    step = args.step if args.step is not None else output_scale(args.model)
    x86 = json.loads(args.x86.read_text())
    arm = json.loads(args.arm64.read_text())
    problems, worst, count, over_one = compare(x86, arm, step, args.max_steps)
    for note in over_one:
        print(note)
    images_over = len({n.split(":")[0] for n in over_one})
    if count == 0:
        problems.append("no images")
    verdict = "FAIL" if problems else "PASS"
    print(
        f"golden: {verdict}: {count} images, labels "
        f"{'equal on all' if not any(': label ' in p for p in problems) else 'DIFFER on some'}; "
        f"largest score difference {worst:.4f} = {worst / step:.1f} steps "
        f"(step {step:.4f}, allowed {args.max_steps:g}); {images_over} images have a score "
        f"more than 1 step off; {len(problems)} problems"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

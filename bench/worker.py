"""One runtime, one fresh process: load the model, classify a sample image, time it.

    python bench/worker.py RUNTIME THREADS [--runs N] [--spawned-at EPOCH_S] ...

RUNTIME is one of:

- ``int8``: the shipped int8 model through the daemon's own ``Classifier`` (ai-edge-litert,
  preprocessing and (de)quantisation included: what the bin runs per item); ``--tta flip``
  as with ``model.tta: flip`` (the frame and its mirror image: two classifications);
- ``float-tflite``: a float32 TFLite file (``--tflite PATH``) through ai-edge-litert;
- ``keras-predict`` / ``keras-call``: the same architecture in float Keras (TensorFlow),
  ``model.predict(x)`` or ``model(x, training=False)`` per image: the usual way;
- ``convert-float``: build the Keras model, write it as float TFLite to ``--out`` (and, with
  ``--mobilenet-v2-out``, a randomly initialised MobileNetV2 1.0 224 for the Pi projection).

Each runtime imports only what it needs, so peak RSS and cold start are its own. Every
timed run starts from the decoded RGB image and goes through
``bin_daemon.model.preprocess.to_model_input``, like the daemon. Prints one JSON object (the last
line of stdout). Cold start is from ``--spawned-at`` (the parent's ``time.time()`` just
before spawning) or, without it, from this process's start time in /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ("int8", "float-tflite", "keras-predict", "keras-call", "convert-float")
DEFAULT_RUNS = {"int8": 200, "float-tflite": 200, "keras-predict": 50, "keras-call": 50}
WARMUP = 3


def process_start_epoch() -> float:
    """This process's start time (epoch seconds) from /proc/self/stat and the boot time."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])  # field 22 of stat(5), counted after "pid (comm)"
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + start_ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (as numpy's default), without importing numpy."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def read_card(model_dir: Path) -> dict:
    return json.loads((model_dir / "model_card.json").read_text(encoding="utf-8"))


def card_input_size(card: dict) -> int:
    size = (card.get("input") or {}).get("size")
    if isinstance(size, list):  # a card listing several sizes: the shape says which one
        size = (card.get("input") or {}).get("shape", [None, size[0]])[1]
    return int(size)


# -- runtimes: each returns (classify(rgb) -> label index, details) ------------------------


def load_int8(args, card):
    from bin_daemon.model.classifier import Classifier

    classifier = Classifier.load(args.model_dir, num_threads=args.threads)
    classifier.tta = args.tta
    last = {}

    def classify(rgb):
        prediction = classifier.classify(rgb)
        last["preprocess_ms"] = prediction.preprocess_ms
        return classifier.labels.index(prediction.label)

    details = {"runtime_lib": classifier.runtime, "input_size": classifier.input_size}
    return classify, {**details, "tta": args.tta}, last


def load_float_tflite(args, card):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from bin_daemon.model.preprocess import to_model_input

    if args.tflite is None:
        raise SystemExit("float-tflite needs --tflite PATH")
    interpreter = Interpreter(model_path=str(args.tflite), num_threads=args.threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    size = int(inp["shape"][1])
    last = {}

    def classify(rgb):
        started = time.perf_counter()
        x = to_model_input(rgb, size).astype(np.float32)[np.newaxis]
        last["preprocess_ms"] = (time.perf_counter() - started) * 1000
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return int(np.argmax(interpreter.get_tensor(out["index"])[0]))

    return classify, {"runtime_lib": "ai-edge-litert", "input_size": size}, last


def configure_tensorflow(threads: int):
    """Import TensorFlow quietly and pin its thread pools before any op runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def build_keras(card: dict, size: int, weights_path: Path | None):
    """The shipped architecture in float Keras: the card's EfficientNet-Lite + Dense head + softmax(T).

    Trained weights when ``weights_path`` exists, else ImageNet backbone weights (timing does
    not depend on the values). Returns (model, which weights).
    """
    import keras

    from bin_daemon.training.backbones import efficientnet_lite, imagenet_weights
    from bin_daemon.training.export import inference_model

    labels = card["labels"]
    temperature = float(card.get("temperature") or 1.0)
    trained = weights_path is not None and weights_path.is_file()
    variant = card.get("backbone", "efficientnet-lite0")
    backbone = efficientnet_lite(variant, size, None if trained else imagenet_weights(variant))
    head = keras.layers.Dense(len(labels), name="classes")
    logits = head(keras.layers.Dropout(0.0, name="head_dropout")(backbone.model.output))
    model = keras.Model(backbone.model.input, logits)
    if trained:
        model.load_weights(weights_path)
        which = f"trained ({weights_path.relative_to(ROOT) if weights_path.is_relative_to(ROOT) else weights_path})"
    else:
        which = f"ImageNet backbone ({variant}), untrained head"
    features = keras.Model(model.input, model.get_layer("pool").output)
    return inference_model(features, head, temperature), which


def load_keras(args, card, *, direct: bool):
    tf = configure_tensorflow(args.threads)
    import numpy as np

    from bin_daemon.model.preprocess import to_model_input

    size = card_input_size(card)
    model, which = build_keras(card, size, args.keras_weights)
    last = {}

    def classify(rgb):
        started = time.perf_counter()
        x = to_model_input(rgb, size).astype(np.float32)[np.newaxis]
        last["preprocess_ms"] = (time.perf_counter() - started) * 1000
        scores = model(x, training=False).numpy() if direct else model.predict(x, verbose=0)
        return int(np.argmax(scores[0]))

    details = {
        "runtime_lib": f"tensorflow {tf.__version__} (keras {__import__('keras').__version__})",
        "input_size": size,
        "weights": which,
        "call": "model(x, training=False)" if direct else "model.predict(x, verbose=0)",
    }
    return classify, details, last


def convert_float(args, card) -> dict:
    configure_tensorflow(args.threads)
    from bin_daemon.training.export import to_float_tflite

    size = card_input_size(card)
    model, which = build_keras(card, size, args.keras_weights)
    args.out.write_bytes(to_float_tflite(model))
    result = {"float_tflite": str(args.out), "weights": which, "input_size": size}
    if args.mobilenet_v2_out is not None:
        import keras

        reference = keras.applications.MobileNetV2(
            input_shape=(224, 224, 3), alpha=1.0, weights=None, classes=1000
        )
        args.mobilenet_v2_out.write_bytes(to_float_tflite(reference))
        result["mobilenet_v2_tflite"] = str(args.mobilenet_v2_out)
    return result


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runtime", choices=RUNTIMES)
    parser.add_argument("threads", type=int)
    parser.add_argument("--runs", type=int, help="timed runs (default 200 TFLite, 50 Keras)")
    parser.add_argument("--spawned-at", type=float, help="parent's time.time() at spawn")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--image", type=Path, help="default: the first sample image")
    parser.add_argument("--tflite", type=Path, help="float-tflite: the model file")
    parser.add_argument(
        "--keras-weights", type=Path, help="default: classifier.weights.h5 in the card's work_dir"
    )
    parser.add_argument(
        "--tta", choices=["none", "flip"], default="none", help="int8: model.tta (default none)"
    )
    parser.add_argument("--out", type=Path, help="convert-float: where to write")
    parser.add_argument("--mobilenet-v2-out", type=Path)
    args = parser.parse_args(argv)
    spawned_at = args.spawned_at if args.spawned_at is not None else process_start_epoch()
    if args.threads < 1:
        parser.error("threads must be 1 or more")
    card = read_card(args.model_dir)
    if args.keras_weights is None:  # where `bin-daemon train` left the float weights
        work_dir = Path(card["training"]["settings"].get("work_dir", "runs/train"))
        args.keras_weights = (
            work_dir if work_dir.is_absolute() else ROOT / work_dir
        ) / "classifier.weights.h5"

    if args.runtime == "convert-float":
        if args.out is None:
            parser.error("convert-float needs --out PATH")
        print(json.dumps(convert_float(args, card)), flush=True)
        return 0

    from bin_daemon.model.preprocess import load_image

    image = args.image or sorted((ROOT / "tests" / "data" / "samples").rglob("*.jpg"))[0]
    rgb = load_image(image)
    if args.runtime == "int8":
        classify, details, last = load_int8(args, card)
    elif args.runtime == "float-tflite":
        classify, details, last = load_float_tflite(args, card)
    else:
        classify, details, last = load_keras(args, card, direct=args.runtime == "keras-call")
    loaded = time.time()
    label = classify(rgb)
    first_result = time.time()
    first_ms = (first_result - loaded) * 1000
    for _ in range(WARMUP - 1):
        classify(rgb)

    runs = args.runs or DEFAULT_RUNS[args.runtime]
    times, preprocess = [], []
    for _ in range(runs):
        started = time.perf_counter()
        classify(rgb)
        times.append((time.perf_counter() - started) * 1000)
        preprocess.append(last.get("preprocess_ms", 0.0))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    result = {
        "runtime": args.runtime,
        "threads": args.threads,
        "runs": runs,
        "p50_ms": round(percentile(times, 50), 3),
        "p95_ms": round(percentile(times, 95), 3),
        "mean_ms": round(sum(times) / len(times), 3),
        "min_ms": round(min(times), 3),
        "preprocess_p50_ms": round(percentile(preprocess, 50), 3),
        "first_classify_ms": round(first_ms, 1),
        "startup_to_load_s": round(loaded - spawned_at, 3),
        "cold_start_s": round(first_result - spawned_at, 3),
        "rss_mb": round(rss_mb, 1),
        "label": (card.get("labels") or [])[label]
        if label < len(card.get("labels") or [])
        else label,
        "image": str(image.relative_to(ROOT) if image.is_relative_to(ROOT) else image),
        "pid": os.getpid(),
        **details,
    }
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

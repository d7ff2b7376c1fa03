"""Give an int8 TFLite classifier a second output: its pooled embedding (the site store's input).

    python -m bin_daemon.training.embedding_output MODEL_DIR

The embedding is the tensor that feeds the final FULLY_CONNECTED layer (the global average
pool of the backbone, shape ``(1, D)``): already computed by every ``invoke()``, so making it
a graph output adds no operator and leaves the classification output bit-identical. Found by
graph inspection: walk back from the first output through the ops that produced it until the
last FULLY_CONNECTED, and take its activation input. The signature def (``serving_default``)
gains an ``embedding`` output too.

Used on the shipped model (its float Keras weights are not in the repository), and by
``bin_daemon.training.export`` on every new export, so both paths give the same layout:
output 0 the probabilities, output 1 the embedding. With ``MODEL_DIR`` the model file is
rewritten and its card updated (sha256, size_bytes, the ``embedding`` entry).
Training extra only (TensorFlow's flatbuffer tools).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

EMBEDDING_OUTPUT_NAME = "embedding"
_TYPES = {
    schema.TensorType.INT8: "int8",
    schema.TensorType.UINT8: "uint8",
    schema.TensorType.FLOAT32: "float32",
}


def _op_name(model: Any, op: Any) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def pooled_tensor(model: Any) -> int:
    """Index of the tensor feeding the last FULLY_CONNECTED on the way to output 0."""
    graph = model.subgraphs[0]
    producer = {int(t): op for op in graph.operators for t in op.outputs}
    tensor = int(graph.outputs[0])
    seen = 0
    while tensor in producer and seen < len(graph.operators):
        op = producer[tensor]
        if _op_name(model, op) == schema.BuiltinOperator.FULLY_CONNECTED:
            return int(op.inputs[0])
        tensor = int(op.inputs[0])
        seen += 1
    raise ValueError("no FULLY_CONNECTED layer before the first output: not a classifier")


def describe(model: Any, index: int) -> dict[str, Any]:
    """The card's ``embedding`` entry for tensor ``index`` (output 1)."""
    tensor = model.subgraphs[0].tensors[index]
    shape = [int(d) for d in tensor.shape]
    q = tensor.quantization
    scale = q.scale if q is not None and q.scale is not None else []
    zero = q.zeroPoint if q is not None and q.zeroPoint is not None else []
    return {
        "output_index": 1,
        "tensor": tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name),
        "size": shape[-1],
        "shape": shape,
        "dtype": _TYPES.get(tensor.type, f"tflite type {tensor.type}"),
        "quantization": {
            "scale": float(scale[0]) if len(scale) else 0.0,
            "zero_point": int(zero[0]) if len(zero) else 0,
        },
        "what": "the global-average-pooled features before the classifier layer (not "
        "normalised); dequantise with scale * (q - zero_point)",
    }


def add_embedding_output(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """The model with the pooled embedding as its second output, and the card entry.

    A model that already has it comes back unchanged.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    if len(model.subgraphs) != 1:
        raise ValueError(f"expected one subgraph, found {len(model.subgraphs)}")
    graph = model.subgraphs[0]
    index = pooled_tensor(model)
    shape = [int(d) for d in graph.tensors[index].shape]
    if len(shape) != 2 or shape[0] != 1:
        raise ValueError(f"the pooled tensor has shape {shape}, expected (1, D)")
    outputs = [int(t) for t in graph.outputs]
    if outputs[1:] == [index]:
        return data, describe(model, index)
    if len(outputs) != 1:
        raise ValueError(f"expected one output to add the embedding to, found {len(outputs)}")
    graph.outputs = np.array([*outputs, index], dtype=np.int32)
    for signature in model.signatureDefs or []:
        entry = schema.TensorMapT()
        entry.name = EMBEDDING_OUTPUT_NAME.encode()
        entry.tensorIndex = index
        signature.outputs = [*(signature.outputs or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), describe(model, index)


def remove_embedding_output(data: bytes) -> bytes:
    """The inverse of :func:`add_embedding_output`: the model with its first output only.

    On the shipped model this gives back, byte for byte, the model the output was added to
    (its card's ``embedding.added_to_sha256``): the proof that nothing else changed.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    graph = model.subgraphs[0]
    graph.outputs = np.array([int(graph.outputs[0])], dtype=np.int32)
    for signature in model.signatureDefs or []:
        signature.outputs = [
            entry
            for entry in signature.outputs or []
            if entry.name != EMBEDDING_OUTPUT_NAME.encode()
        ]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def embedding_entry(data: bytes) -> dict[str, Any] | None:
    """The card's ``embedding`` entry of a model that has the output (else None)."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    outputs = [int(t) for t in model.subgraphs[0].outputs]
    return describe(model, outputs[1]) if len(outputs) == 2 else None


def update_model_dir(folder: Path) -> dict[str, Any]:
    """Rewrite ``folder``'s model with the embedding output and update its card."""
    card_path = folder / "model_card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    model_path = folder / str(card.get("model_file") or "waste_classifier.tflite")
    old = model_path.read_bytes()
    new, entry = add_embedding_output(old)
    model_path.write_bytes(new)
    card["sha256"] = hashlib.sha256(new).hexdigest()
    card["size_bytes"] = len(new)
    if new != old:
        entry = {
            **entry,
            "added_to_sha256": hashlib.sha256(old).hexdigest(),
            "note": "output added by bin_daemon.training.embedding_output; the probabilities "
            "output is bit-identical to the model it was added to",
        }
    card["embedding"] = entry
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return {
        "old_sha256": hashlib.sha256(old).hexdigest(),
        "sha256": card["sha256"],
        "size_bytes": len(new),
        "embedding": entry,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="model folder (model file and card)")
    args = parser.parse_args(argv)
    print(json.dumps(update_model_dir(args.model_dir), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The model's second output, the pooled embedding: present, checked, and harmless.

The bit-identity proof needs TensorFlow's flatbuffer tools (the [train] extra): removing the
output from the shipped model must give back, byte for byte, the model it was added to, and
that model's probabilities must equal the shipped model's on every sample image.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest_models import FIXTURE_MODELS_DIR, LABELS, TINY, make_model_dir

from bin_daemon.errors import ModelError
from bin_daemon.hardware.fakes import image_files
from bin_daemon.model.classifier import Classifier
from bin_daemon.model.preprocess import load_image
from bin_daemon.paths import shipped_models_dir

TINY_EMBEDDING = FIXTURE_MODELS_DIR / "tiny_uint8_32px_embedding.tflite"
TINY_BAD_EMBEDDING = FIXTURE_MODELS_DIR / "tiny_uint8_32px_bad_embedding.tflite"


@pytest.fixture(scope="module")
def real() -> Classifier:
    return Classifier.load(shipped_models_dir(), num_threads=2)


def test_the_shipped_model_gives_its_embedding_from_the_same_invoke(real, samples_dir):
    entry = real.card["embedding"]
    assert real.embedding_size == entry["size"] == 1280
    prediction = real.classify(load_image(image_files(samples_dir)[0]))
    embedding = prediction.embedding
    assert embedding is not None and embedding.shape == (1280,) and embedding.dtype == np.float32
    scale, zero_point = entry["quantization"]["scale"], entry["quantization"]["zero_point"]
    steps = embedding / scale
    assert np.allclose(steps, np.round(steps), atol=1e-3)  # dequantised int8 values
    assert embedding.min() >= 0 and embedding.max() <= scale * (127 - zero_point) + 1e-6
    assert np.count_nonzero(embedding) > 50  # pooled ReLU6 features, not a blank output


def test_different_images_have_different_embeddings(real, samples_dir):
    files = image_files(samples_dir)
    a = real.classify(load_image(files[0])).embedding
    b = real.classify(load_image(files[-1])).embedding
    assert a is not None and b is not None and not np.array_equal(a, b)


def test_a_model_without_the_output_still_loads_with_no_embedding(tmp_path):
    classifier = Classifier.load(make_model_dir(tmp_path, TINY), num_threads=1)
    assert classifier.embedding_size is None
    assert classifier.classify(np.zeros((40, 40, 3), np.uint8)).embedding is None


def test_the_tiny_model_with_the_output_gives_it(tmp_path):
    classifier = Classifier.load(make_model_dir(tmp_path, TINY_EMBEDDING), num_threads=1)
    assert classifier.embedding_size == 4
    prediction = classifier.classify(np.full((40, 40, 3), 90, np.uint8))
    assert prediction.embedding is not None and prediction.embedding.shape == (4,)
    (tmp_path / "plain").mkdir()
    plain = Classifier.load(make_model_dir(tmp_path / "plain", TINY), num_threads=1)
    same = plain.classify(np.full((40, 40, 3), 90, np.uint8))
    assert np.array_equal(prediction.scores, same.scores)


def test_a_wrong_shaped_embedding_output_is_named(tmp_path):
    with pytest.raises(ModelError) as caught:
        Classifier.load(make_model_dir(tmp_path, TINY_BAD_EMBEDDING), num_threads=1)
    message = str(caught.value)
    assert "waste_classifier.tflite: output 1 (the embedding" in message
    assert "has shape (1, 15, 15, 4), expected (1, D)" in message
    assert "\n" not in message


def test_an_embedding_size_other_than_the_cards_is_named(tmp_path):
    folder = make_model_dir(tmp_path, TINY_EMBEDDING, embedding={"size": 1280})
    with pytest.raises(ModelError, match=r"has 4 values but its card says embedding.size 1280"):
        Classifier.load(folder, num_threads=1)


def test_a_card_promising_an_embedding_the_model_lacks_is_named(tmp_path):
    folder = make_model_dir(tmp_path, TINY, embedding={"size": 4, "tensor": "pool"})
    with pytest.raises(ModelError, match=r"card describes an embedding output \(pool\) but"):
        Classifier.load(folder, num_threads=1)


# --- the flatbuffer edit (TensorFlow's tools: the [train] extra) ----------------------------


@pytest.fixture(scope="module")
def tools():
    pytest.importorskip("tensorflow", reason="needs the [train] extra")
    from bin_daemon.training import embedding_output

    return embedding_output


def test_removing_the_output_gives_back_the_original_model_byte_for_byte(tools):
    shipped = (shipped_models_dir() / "waste_classifier.tflite").read_bytes()
    card = json.loads((shipped_models_dir() / "model_card.json").read_text())
    original = tools.remove_embedding_output(shipped)
    assert original != shipped and len(original) < len(shipped)
    if "added_to_sha256" in card["embedding"]:  # a model the output was added to afterwards
        assert hashlib.sha256(original).hexdigest() == card["embedding"]["added_to_sha256"]
    again, entry = tools.add_embedding_output(original)
    assert again == shipped  # the tool is deterministic: the shipped file is its output
    assert {k: entry[k] for k in ("tensor", "size", "dtype", "quantization")} == {
        k: card["embedding"][k] for k in ("tensor", "size", "dtype", "quantization")
    }
    assert tools.add_embedding_output(shipped)[0] == shipped  # adding twice changes nothing


@pytest.mark.slow
def test_the_probabilities_are_bit_identical_to_the_original_model(
    tools, tmp_path, real, samples_dir
):
    shipped = (shipped_models_dir() / "waste_classifier.tflite").read_bytes()
    card = json.loads((shipped_models_dir() / "model_card.json").read_text())
    card.pop("embedding")
    original = tools.remove_embedding_output(shipped)
    card["sha256"] = hashlib.sha256(original).hexdigest()
    folder = tmp_path / "original"
    folder.mkdir()
    (folder / "waste_classifier.tflite").write_bytes(original)
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (folder / "model_card.json").write_text(json.dumps(card))
    old = Classifier.load(folder, num_threads=2)
    assert old.embedding_size is None
    files = image_files(samples_dir)
    for path in files:
        image = load_image(path)
        assert np.array_equal(old.classify(image).scores, real.classify(image).scores), path
    old_ref = Classifier.load(folder, num_threads=1, reference_kernels=True)
    new_ref = Classifier.load(shipped_models_dir(), num_threads=1, reference_kernels=True)
    for path in files[::6]:  # the portable integer kernels too (slow: a few images)
        image = load_image(path)
        assert np.array_equal(old_ref.classify(image).scores, new_ref.classify(image).scores)


def test_a_new_export_has_the_embedding_as_its_second_output(tools):
    import keras

    from bin_daemon.model.classifier import load_interpreter_class
    from bin_daemon.training.export import to_int8_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(5, 3, activation="relu")(x)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    representative = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    data = to_int8_tflite(model, representative)
    interpreter_class, _ = load_interpreter_class()
    interpreter = interpreter_class(model_content=data)
    interpreter.allocate_tensors()
    shapes = [tuple(o["shape"]) for o in interpreter.get_output_details()]
    assert shapes == [(1, 3), (1, 5)]
    assert tools.embedding_entry(data)["size"] == 5

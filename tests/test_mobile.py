"""Mobile-ready TFLite: image-classifier metadata (labels, normalisation) that MediaPipe Tasks reads,
without changing what the model computes."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from edge_runtime import Classifier, load_batch
from export.tflite_metadata import METADATA_NAME, add_metadata, read_labels

MEDIAPIPE = "mediapipe==1.2.3"  # its own venv: its absl pin conflicts with tensorflow-model-optimization's


def _metadata_buffer(path):
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(Path(path).read_bytes()), 0)
    entries = [m for m in model.metadata or [] if m.name.decode() == METADATA_NAME]
    return bytes(model.buffers[entries[0].buffer].data) if entries else None


def test_metadata_leaves_the_model_bit_identical_and_carries_the_labels(tmp_path):
    import tensorflow as tf
    import tf_keras as keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    plain, tagged = tmp_path / "plain.tflite", tmp_path / "tagged.tflite"
    plain.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    tagged.write_bytes(plain.read_bytes())
    add_metadata(tagged, ["cat", "dog", "fox"], (16, 16), "tiny", "a test", "v1")
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    labels = ["cat", "dog", "fox"]
    a = Classifier(plain, labels=labels, verify=False).probabilities(pixels)
    b = Classifier(tagged, labels=labels, verify=False).probabilities(pixels)
    assert np.array_equal(a, b)
    meta = _metadata_buffer(tagged)
    assert meta is not None and meta[4:8] == b"M001"  # the metadata schema's file identifier
    assert b"labels.txt" in meta and b"tiny" in meta
    assert read_labels(tagged) == labels and read_labels(plain) is None
    add_metadata(tagged, labels, (16, 16), "tiny", "again", "v2")  # writing twice replaces, not stacks
    assert read_labels(tagged) == labels and b"again" in _metadata_buffer(tagged)


def test_every_tflite_variant_is_exported_with_metadata(tiny_export):
    manifest = json.loads((tiny_export.export_dir / "manifest.json").read_text())
    for name, entry in manifest["variants"].items():
        if entry["format"] != "tflite":
            continue
        path = tiny_export.export_dir / entry["file"]
        assert read_labels(path) == tiny_export.class_names(), name
        assert _metadata_buffer(path)[4:8] == b"M001" and entry["metadata"]["labels_file"] == "labels.txt"
        Classifier(path)  # the manifest's checksum is the file's, metadata included


@pytest.mark.slow
def test_mediapipe_image_classifier_loads_our_files_and_names_our_classes(tiny_export, tmp_path):
    venv = tmp_path / "mediapipe-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = subprocess.run([py, "-m", "pip", "install", "--quiet", MEDIAPIPE], capture_output=True, text=True, timeout=1800)
    if pip.returncode != 0:
        pytest.skip(f"could not install {MEDIAPIPE}: {(pip.stderr.strip().splitlines() or ['?'])[-1]}")
    samples = tiny_export.split()
    size = tuple(tiny_export.config()["image_size"])
    # the same pixels for both: pre-resized, so MediaPipe's own (non-antialiased) resize is the identity
    pixels = load_batch([tiny_export.data_root() / s.path for s in samples], size)
    np.save(tmp_path / "pixels.npy", pixels)
    for variant in ("tflite-fp32", "tflite-int8"):
        model = tiny_export.export_dir / json.loads((tiny_export.export_dir / "manifest.json").read_text())[
            "variants"][variant]["file"]
        out = tmp_path / f"{variant}.json"
        proc = subprocess.run([py, str(REPO / "checks" / "mediapipe_classify.py"), str(model),
                               str(tmp_path / "pixels.npy"), str(out)], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads(out.read_text())
        assert {c["label"] for c in results[0]} == set(tiny_export.class_names())  # our labels, from the file
        ours = Classifier(model).probabilities(pixels).argmax(1)
        names = tiny_export.class_names()
        assert [r[0]["label"] for r in results] == [names[i] for i in ours], variant

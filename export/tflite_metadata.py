"""TFLite metadata for an image classifier, written from the published schema, so MediaPipe Tasks
(Android, iOS, web) and Android Studio's model binding load our files and name the classes.

The metadata is a flatbuffer (tensorflow_lite_support/metadata/metadata_schema.fbs, file identifier
"M001") stored in one of the model's buffers and named TFLITE_METADATA in the model's `metadata`
list; the labels file is packed, uncompressed, in a zip archive appended to the model, as the
tflite-support populator does. No writer package is needed (MediaPipe's lacks a compiled module,
tflite-support pins protobuf < 4): only the flatbuffers runtime TensorFlow already brings.
Interpreters ignore both, so the model computes exactly what it did before.

Normalization is mean 0 and std 1: the models take raw RGB 0..255 and normalise inside.
"""
import io
import zipfile

import flatbuffers
import numpy as np

METADATA_NAME = "TFLITE_METADATA"
PARSER_VERSION = "1.0.0"  # no field newer than the schema's 1.0.0 is written
LABELS_FILE = "labels.txt"
# enum values from metadata_schema.fbs
RGB, TENSOR_AXIS_LABELS = 1, 2
FEATURE_PROPERTIES, IMAGE_PROPERTIES = 1, 2  # ContentProperties union
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union


class _Writer:
    """Just enough of a flatbuffers writer for the metadata tables: fields by slot number."""

    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    def string(self, s):
        return self.b.CreateString(s)

    def floats(self, values):
        return self.b.CreateNumpyVector(np.asarray(values, np.float32))

    def tables(self, offsets):
        self.b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()

    def table(self, slots):
        """slots: {slot: (kind, value)}; kind is "ref" (an offset made before), "u8" or "u32"."""
        b = self.b
        b.StartObject(max(slots) + 1 if slots else 0)
        for slot, (kind, value) in sorted(slots.items()):
            {"ref": b.PrependUOffsetTRelativeSlot, "u8": b.PrependUint8Slot, "u32": b.PrependUint32Slot}[kind](
                slot, value, 0)
        return b.EndObject()


def metadata_flatbuffer(class_names, size, text):
    """The ModelMetadata flatbuffer bytes for a single-input, single-output image classifier. text: its
    "name", "description", "version", "author" and "input" (the input's description)."""
    name, description, version, author, input_description = (text[k] for k in ("name", "description", "version",
                                                                                 "author", "input"))
    w = _Writer()
    h, wd = size
    # input: an RGB image, values 0..255, no normalisation outside the model
    norm = w.table({0: ("ref", w.floats([0.0])), 1: ("ref", w.floats([1.0]))})
    unit = w.table({0: ("u8", NORMALIZATION_OPTIONS), 1: ("ref", norm)})
    image_size = w.table({0: ("u32", wd), 1: ("u32", h)})
    image_props = w.table({0: ("u8", RGB), 1: ("ref", image_size)})
    in_content = w.table({0: ("u8", IMAGE_PROPERTIES), 1: ("ref", image_props)})
    in_stats = w.table({0: ("ref", w.floats([255.0])), 1: ("ref", w.floats([0.0]))})
    inp = w.table({0: ("ref", w.string("image")), 1: ("ref", w.string(input_description)),
                   3: ("ref", in_content), 4: ("ref", w.tables([unit])), 5: ("ref", in_stats)})
    # output: one probability per class, named by the labels file
    labels = w.table({0: ("ref", w.string(LABELS_FILE)), 1: ("ref", w.string("class names, one per line, in output order")),
                      2: ("u8", TENSOR_AXIS_LABELS)})
    feature = w.table({})
    out_content = w.table({0: ("u8", FEATURE_PROPERTIES), 1: ("ref", feature)})
    out_stats = w.table({0: ("ref", w.floats([1.0])), 1: ("ref", w.floats([0.0]))})
    out = w.table({0: ("ref", w.string("probability")),
                   1: ("ref", w.string(f"probabilities of the {len(class_names)} classes (softmax)")),
                   3: ("ref", out_content), 5: ("ref", out_stats), 6: ("ref", w.tables([labels]))})
    subgraph = w.table({0: ("ref", w.string(name)), 2: ("ref", w.tables([inp])), 3: ("ref", w.tables([out]))})
    root = w.table({0: ("ref", w.string(name)), 1: ("ref", w.string(description)), 2: ("ref", w.string(version)),
                    3: ("ref", w.tables([subgraph])), 4: ("ref", w.string(author)),
                    7: ("ref", w.string(PARSER_VERSION))})
    w.b.Finish(root, file_identifier=b"M001")
    return bytes(w.b.Output())


def with_metadata(model_bytes, metadata, class_names):
    """The .tflite bytes with `metadata` in a new buffer named TFLITE_METADATA and the labels file
    appended as an uncompressed zip member. An existing TFLITE_METADATA entry is replaced."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != METADATA_NAME] + [entry]
    b = flatbuffers.Builder(len(model_bytes) + len(metadata) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(b.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as z:  # appended: offsets from the file start
        z.writestr(LABELS_FILE, "\n".join(class_names) + "\n")
    return out.getvalue()


AUTHOR = "image classifier export"


def add_metadata(path, class_names, size, name, description, version):
    """Rewrite the .tflite file at `path` (in place) with image-classifier metadata and its labels."""
    with open(path, "rb") as f:
        model = f.read()
    meta = metadata_flatbuffer(class_names, size, {
        "name": name, "description": description, "version": version, "author": AUTHOR,
        "input": f"RGB image, the whole image stretched to {size[1]}x{size[0]} with antialiased bilinear resizing "
                 "(Pillow's, as in training), raw pixel values 0..255; normalisation is inside the model"})
    with open(path, "wb") as f:
        f.write(with_metadata(model, meta, class_names))


def read_labels(path):
    """The labels file packed in a .tflite file, or None (what MediaPipe reads; used by tests)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.read(LABELS_FILE).decode().split("\n")[:-1]
    except (zipfile.BadZipFile, KeyError):
        return None

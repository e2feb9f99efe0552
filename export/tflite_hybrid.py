"""Int8 weights for the ops a TFLite int8 file keeps in float, so keeping them float costs little size.

The converter leaves the ops the accuracy-aware fallback keeps float with float32 weights, which on a
ResNet-50's float tail triples the file (docs/export.md has the figures). TFLite's hybrid kernels, the
ones dynamic-range files run, take per-channel int8 weights with float activations (each input is
quantized on the fly, per image, to its own range), and XNNPACK runs them with integer arithmetic.
So those ops' weights are written as int8 the way the dynamic-range converter writes them; the
fallback keeps that file only if the validation budget still holds with it (export/fallback.py).
"""
import numpy as np

# op -> op version that reads int8 weights with float inputs (per-channel), as the dynamic-range
# converter writes it. The weights' output channels are their first dimension for both.
HYBRID_VERSION = {"CONV_2D": 5, "FULLY_CONNECTED": 12}


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def _op_names(schema, model):
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names.get(max(c.builtinCode, c.deprecatedBuiltinCode)) for c in model.operatorCodes]


def per_channel_int8(weights):
    """(int8 weights, scales): symmetric per output channel (axis 0), zero point 0, -127..127."""
    flat = weights.reshape(len(weights), -1)
    scales = np.abs(flat).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.round(flat / scales[:, None]), -127, 127).astype(np.int8)
    return q.reshape(weights.shape), scales.astype(np.float32)


def int8_weights(flatbuffer):
    """(the file with every float CONV_2D / FULLY_CONNECTED's constant weights as per-channel int8,
    how many ops were changed). Ops already integer, and weights shared by several tensors, are left."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    g = model.subgraphs[0]
    op_names = _op_names(schema, model)
    users = {}
    for t in g.tensors:
        users[t.buffer] = users.get(t.buffer, 0) + 1
    changed = 0
    for op in g.operators:
        name = op_names[op.opcodeIndex]
        if name not in HYBRID_VERSION or len(op.inputs) < 2:
            continue
        x, w = g.tensors[op.inputs[0]], g.tensors[op.inputs[1]]
        data = model.buffers[w.buffer].data
        if (x.type != schema.TensorType.FLOAT32 or w.type != schema.TensorType.FLOAT32 or data is None
                or len(data) == 0 or users[w.buffer] != 1):
            continue
        weights = np.frombuffer(bytes(bytearray(data)), np.float32).reshape(list(w.shape))
        q, scales = per_channel_int8(weights)
        model.buffers[w.buffer].data = np.frombuffer(q.tobytes(), np.uint8)
        w.type = schema.TensorType.INT8
        w.quantization = schema.QuantizationParametersT()
        w.quantization.scale, w.quantization.zeroPoint = scales.tolist(), [0] * len(scales)
        w.quantization.quantizedDimension = 0
        if name == "FULLY_CONNECTED":
            op.builtinOptions.asymmetricQuantizeInputs = True  # as the dynamic-range converter sets it
        code = model.operatorCodes[op.opcodeIndex]
        code.version = max(code.version, HYBRID_VERSION[name])
        changed += 1
    if not changed:
        return flatbuffer, 0
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output()), changed

"""ONNX converters: tf2onnx for float32, ONNX Runtime static quantization (QDQ) for int8."""
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

OPSET = 17


def _metadata(model_proto, ctx):
    """Labels and the preprocessing contract travel inside the ONNX file too."""
    import onnx

    for key, value in (("labels", json.dumps(ctx.class_names)), ("preprocessing", json.dumps(ctx.config["preprocessing"]))):
        entry = next((p for p in model_proto.metadata_props if p.key == key), None) or model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    return model_proto


def fp32(ctx, path):
    import onnx
    import tensorflow as tf
    import tf2onnx

    h, w = ctx.config["image_size"]
    spec = (tf.TensorSpec((None, h, w, 3), tf.float32, name="image"),)  # dynamic batch dimension
    proto, _ = tf2onnx.convert.from_keras(ctx.model, input_signature=spec, opset=OPSET)
    onnx.save(_metadata(proto, ctx), str(path))
    return {"opset": OPSET}


class _Reader:
    """Feeds calibration images to ONNX Runtime's quantizer one at a time (float32 raw pixels)."""

    def __init__(self, name, images):
        self.name, self.images, self.i = name, images, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: self.images[self.i - 1 : self.i].astype(np.float32)}

    def rewind(self):
        self.i = 0


def int8(ctx, path):
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    work = Path(tempfile.mkdtemp(prefix="onnx-int8-"))
    try:
        source = work / "fp32.onnx"
        fp32(ctx, source)
        prepped = work / "prepped.onnx"
        try:  # shape inference and graph folding make quantization cover more ops
            quant_pre_process(str(source), str(prepped), skip_symbolic_shape=False)
        except Exception as e:
            ctx.log(f"  quant_pre_process failed ({e}); quantizing the unprocessed graph")
            shutil.copy(source, prepped)
        input_name = onnx.load(str(prepped), load_external_data=False).graph.input[0].name
        quantize_static(str(prepped), str(work / "int8.onnx"), _Reader(input_name, ctx.calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(work / "int8.onnx"))
        onnx.save(_metadata(proto, ctx), str(path))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"opset": OPSET, "calibration_images": len(ctx.calibration)}

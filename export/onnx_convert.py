"""ONNX converters: tf2onnx for float32, ONNX Runtime static quantization (QDQ) for int8."""
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

OPSET = 17


def _metadata(model_proto, ctx):
    """Labels and the preprocessing contract travel inside the ONNX file too."""
    for key, value in (("labels", json.dumps(ctx.class_names)), ("preprocessing", json.dumps(ctx.config["preprocessing"]))):
        entry = next((p for p in model_proto.metadata_props if p.key == key), None) or model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    return model_proto


def convert_float(model, size):
    """tf2onnx over a Keras model: the float ModelProto (the export Context caches the run's)."""
    from train.shared.tf_setup import import_tensorflow

    tf = import_tensorflow()  # quietly, before tf2onnx loads it
    import tf2onnx

    h, w = size
    spec = (tf.TensorSpec((None, h, w, 3), tf.float32, name="image"),)  # dynamic batch dimension
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    return proto


def _float_proto(ctx):
    import onnx

    return onnx.load_from_string(ctx.onnx_float)


def fp32(ctx, path):
    import onnx

    onnx.save(_metadata(_float_proto(ctx), ctx), str(path))
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


# Ops the accuracy-aware fallback may keep in float.
FALLBACK_OPS = ("Conv", "MatMul", "Gemm", "Add")


def int8(ctx, path):
    """ONNX Runtime static quantization (QDQ, per-channel, s8 weights, u8 activations), quantized and
    calibrated once; then the accuracy-aware fallback (export/fallback.py), which keeps nodes float by
    graph surgery on that one QDQ model (export/onnx_graph.py says why not `nodes_to_exclude`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from . import onnx_ranges, ranges
    from .fallback import measure, search
    from .onnx_graph import float_nodes

    from .stages import Stages

    work = Path(tempfile.mkdtemp(prefix="onnx-int8-"))
    stages = Stages()
    try:
        source = work / "fp32.onnx"
        onnx.save(_float_proto(ctx), str(source))
        prepped = work / "prepped.onnx"
        try:  # shape inference and graph folding make quantization cover more ops
            quant_pre_process(str(source), str(prepped), skip_symbolic_shape=False)
        except Exception as e:
            ctx.log(f"  quant_pre_process failed ({e}); quantizing the unprocessed graph")
            shutil.copy(source, prepped)
        graph = onnx.load(str(prepped), load_external_data=False).graph
        input_name = graph.input[0].name
        candidates = [n.name for n in graph.node if n.op_type in FALLBACK_OPS and n.name]
        full = work / "full-qdq.onnx"
        root_level = logging.getLogger().level  # its per-channel notes on rank-1 BatchNorm weights are noise
        logging.getLogger().setLevel(logging.ERROR)
        try:
            # one image places the Q/DQ pairs; onnx_ranges.observe then gives every range from all of them
            quantize_static(str(prepped), str(full), _Reader(input_name, ctx.calibration[:1]),
                            quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                            # Relu/Clip stay nodes, so a node kept float keeps its activation; ONNX Runtime
                            # folds them into the quantized ops again when it loads the model
                            extra_options={"QDQKeepRemovableActivations": True})
        finally:
            logging.getLogger().setLevel(root_level)
        qdq, float_model = onnx.load(str(full)), onnx.load(str(prepped))
        observed = onnx_ranges.observe(float_model, qdq, ctx.calibration)
        stages.lap("calibration")
        models = {}  # method -> QDQ model with those ranges

        def write(method):  # the fully quantized file with these activation ranges
            out = work / f"ranges-{method.replace('@', '-from-')}.onnx"
            models[method] = onnx_ranges.with_ranges(qdq, float_model, observed, method)
            onnx.save(models[method], str(out))
            return out

        method, ranges_record, full_measured = ranges.choose(
            write, lambda path: measure(path, ctx.validation), ctx.budget.misses, ctx.ranges, ctx.log)
        qdq = models[method]
        stages.lap("activation ranges")

        def quantize(excluded, out):
            onnx.save(float_nodes(qdq, float_model, excluded) if excluded else qdq, str(out))

        chosen, record = search(quantize, candidates, ctx.validation, ctx.budget, work, ctx.log, ".onnx",
                                full=full_measured)
        proto = onnx.load(str(chosen))
        onnx.save(_metadata(proto, ctx), str(path))
        stages.lap("fallback")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"opset": OPSET, "calibration_images": len(ctx.calibration), "activation_ranges": ranges_record,
            "quantization": "QDQ, per-channel symmetric int8 weights, asymmetric uint8 activations; "
                            "ops kept float by the fallback get float weights and float outputs", "fallback": record,
            "stage_seconds": stages}

"""ONNX converters: tf2onnx for float32, ONNX Runtime static quantization (QDQ) for int8."""
import json
import logging
import shutil

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
    from runlib.tf_setup import import_tensorflow

    tf = import_tensorflow()  # quietly, before tf2onnx loads it
    import tf2onnx

    h, w = size
    spec = (tf.TensorSpec((None, h, w, 3), tf.float32, name="image"),)  # dynamic batch dimension
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    return proto


def uint8_input(model):
    """The model with a uint8 pixel input, cast to float32 inside the graph: the contract's integer variants
    take uint8. Exact (every uint8 is a float32), so the outputs do not change."""
    import onnx

    g = model.graph
    (inp,) = g.input
    cast_out = inp.name + "_float"
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == inp.name:
                node.input[k] = cast_out
    g.node.insert(0, onnx.helper.make_node("Cast", [inp.name], [cast_out], to=onnx.TensorProto.FLOAT,
                                           name="pixels_to_float"))
    inp.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    return model


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


class OnnxInt8:
    """ONNX Runtime static quantization (QDQ, per-channel, s8 weights, u8 activations) for the int8 driver
    (export/int8.py), quantized and calibrated once; the fallback keeps nodes float by graph surgery on
    that one QDQ model (export/onnx_graph.py says why not `nodes_to_exclude`)."""
    suffix = ".onnx"
    record = {"opset": OPSET, "quantization": "QDQ, per-channel symmetric int8 weights, asymmetric uint8 "
                                              "activations; ops kept float by the fallback get float weights and "
                                              "float outputs"}
    compact = None  # a weight-only DequantizeLinear is not folded by ONNX Runtime: it would run on every call

    def __init__(self, ctx, work):
        self.ctx, self.work, self.models = ctx, work, {}  # method -> QDQ model with those ranges

    def calibrate(self):
        import onnx

        from . import onnx_ranges

        prepped = self._prepared()
        graph = onnx.load(str(prepped), load_external_data=False).graph
        self._candidates = [n.name for n in graph.node if n.op_type in FALLBACK_OPS and n.name]
        full = self.work / "full-qdq.onnx"
        self._quantize_static(prepped, full, graph.input[0].name)
        self.qdq, self.float_model = onnx.load(str(full)), onnx.load(str(prepped))
        self.observed = onnx_ranges.observe(self.float_model, self.qdq, self.ctx.calibration)

    def _prepared(self):
        """The float graph with shapes inferred and folded, so quantization covers more ops."""
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        source, prepped = self.work / "fp32.onnx", self.work / "prepped.onnx"
        onnx.save(_float_proto(self.ctx), str(source))
        try:
            quant_pre_process(str(source), str(prepped), skip_symbolic_shape=False)
        except Exception as e:  # noqa: BLE001  the unprocessed graph still quantizes
            self.ctx.log(f"  quant_pre_process failed ({e}); quantizing the unprocessed graph")
            shutil.copy(source, prepped)
        return prepped

    def _quantize_static(self, prepped, out, input_name):
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        root_level = logging.getLogger().level  # its per-channel notes on rank-1 BatchNorm weights are noise
        logging.getLogger().setLevel(logging.ERROR)
        try:
            # one image places the Q/DQ pairs; onnx_ranges.observe then gives every range from all of them
            quantize_static(str(prepped), str(out), _Reader(input_name, self.ctx.calibration[:1]),
                            quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                            # Relu/Clip stay nodes, so a node kept float keeps its activation; ONNX Runtime
                            # folds them into the quantized ops again when it loads the model
                            extra_options={"QDQKeepRemovableActivations": True})
        finally:
            logging.getLogger().setLevel(root_level)

    def write(self, method, path):
        import onnx

        from . import onnx_ranges

        self.models[method] = onnx_ranges.with_ranges(self.qdq, self.float_model, self.observed, method)
        onnx.save(self.models[method], str(path))
        return path

    def use(self, method):
        self.qdq = self.models[method]

    def candidates(self, full):
        return self._candidates

    def quantize(self, excluded, path):
        import onnx

        from .onnx_graph import float_nodes

        onnx.save(float_nodes(self.qdq, self.float_model, excluded) if excluded else self.qdq, str(path))

    def finish(self, src, path):
        import onnx

        onnx.save(_metadata(uint8_input(onnx.load(str(src))), self.ctx), str(path))


def int8(ctx, path):
    """ONNX int8 through the int8 driver (export/int8.py)."""
    from .int8 import export_int8

    return export_int8(OnnxInt8, ctx, path)

"""TFLite converters. Each writes one .tflite file from the run's Keras model.

TensorFlow is imported inside each converter so the variant table stays cheap to import
(the benchmark reads it without loading TensorFlow)."""


def _tf():
    from runlib.tf_setup import import_tensorflow

    return import_tensorflow()  # quietly: TensorFlow's start-up chatter stays off the terminal


def _converter(model):
    return _tf().lite.TFLiteConverter.from_keras_model(model)


def _run_converter(ctx):
    """A converter over the run's model, read from the SavedModel traced once per export."""
    return _tf().lite.TFLiteConverter.from_saved_model(ctx.saved_model)


def _convert(converter, what):
    """converter.convert(), saying it is still at work: a ResNet-50 takes tens of seconds."""
    from runlib.progress import heartbeat

    with heartbeat("export", what):
        return converter.convert()


def _write(path, flatbuffer):
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return {}


def fp32(ctx, path):
    return _write(path, _convert(_run_converter(ctx), "float32 conversion"))


def fp16(ctx, path):
    tf = _tf()
    c = _run_converter(ctx)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.target_spec.supported_types = [tf.float16]
    return _write(path, _convert(c, "float16 conversion"))


def dynamic(ctx, path):
    tf = _tf()
    c = _run_converter(ctx)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    return _write(path, _convert(c, "dynamic-range conversion"))


def _representative(images):
    """The converter's representative dataset: each uint8 image as a float32 batch of one."""
    import numpy as np

    return lambda: ([img[None].astype(np.float32)] for img in images)


def _full_integer(model, ctx, path, images=None):
    """Integer-only builtin ops, uint8 in and out: the form microcontrollers and NPUs take.
    images: the representative images (default: all calibration images)."""
    tf = _tf()
    c = _converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = _representative(ctx.calibration if images is None else images)
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.uint8
    c.inference_output_type = tf.uint8
    _write(path, _convert(c, "full-integer conversion"))
    return {"calibration_images": len(ctx.calibration)}


# Ops whose output may be kept float by the accuracy-aware fallback.
FALLBACK_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN")
FLOAT_ALWAYS = ["SOFTMAX"]  # see quantize_model in int8


class TFLiteInt8:
    """Post-training full integer TFLite for the int8 driver (export/int8.py): calibrated once, then
    quantized again for each set of ops kept float, which takes well under a second, so the fallback
    never repeats the expensive conversion and calibration."""
    suffix = ".tflite"

    def __init__(self, ctx, work):
        self.ctx, self.work, self.models = ctx, work, {}  # method -> calibrated model with those ranges
        self.record = {"float_always": FLOAT_ALWAYS}

    def calibrate(self):
        from . import tflite_ranges

        tf = _tf()
        c = _run_converter(self.ctx)
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = _representative(self.ctx.calibration[:1])  # lays out the statistics; observe() fills them
        c._experimental_calibrate_only = True  # noqa: SLF001  (the public QuantizationDebugger does the same)
        self.calibrated, self.observed = tflite_ranges.observe(_convert(c, "calibration layout"), self.ctx.calibration)

    def write(self, method, path):
        from . import tflite_ranges

        self.models[method] = tflite_ranges.with_ranges(self.calibrated, self.observed, method)
        return self._quantize(self.models[method], [], path)

    def use(self, method):
        self.calibrated = self.models[method]

    def quantize(self, excluded, path):
        self._quantize(self.calibrated, excluded, path)

    @staticmethod
    def _quantize(model, excluded, out):
        # what TFLiteConverter.convert() itself calls after calibration, plus the ops kept float.
        # The softmax always stays float: int8 softmax reads int8 logits, and a from-scratch ResNet-50's
        # logits can span a hundred units, a step coarse enough to flip near-tie predictions (docs/export.md).
        # In float it reads the same int8 logits when the dense layer is quantized, and float logits
        # when the fallback keeps that layer float; it costs one dequantize of a few numbers.
        tf = _tf()  # first: the import below would load TensorFlow loudly
        from tensorflow.lite.python.convert import mlir_quantize

        from runlib.tf_setup import quiet_fds

        with quiet_fds():  # it prints "fully_quantize: 0, inference_type: 6, ..." on every call
            flatbuffer = mlir_quantize(model, input_data_type=tf.uint8, output_data_type=tf.uint8,
                                       denylisted_ops=FLOAT_ALWAYS, denylisted_nodes=excluded or None)
        _write(out, flatbuffer)
        return out

    def candidates(self, full):
        return _quantized_op_outputs(full)

    @staticmethod
    def compact(src, dst):
        from .tflite_hybrid import int8_weights

        flatbuffer, ops = int8_weights(open(src, "rb").read())
        _write(dst, flatbuffer)
        return ops

    @staticmethod
    def finish(src, path):
        _copy(src, path)


def int8(ctx, path):
    """Post-training full integer, through the int8 driver (export/int8.py)."""
    from .int8 import export_int8

    return export_int8(TFLiteInt8, ctx, path)


def _quantized_op_outputs(path):
    from edge_runtime.backends import _tflite_interpreter_class

    interp = _tflite_interpreter_class()(model_path=str(path))
    names = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    return [names[op["outputs"][0]] for op in interp._get_ops_details()  # noqa: SLF001
            if op["op_name"] in FALLBACK_OPS and op["outputs"]]


def _copy(src, dst):
    import shutil

    shutil.copyfile(src, dst)


QAT_SOURCE = "model-qat-source.h5"  # tfmot's layers reload from H5 (its .keras round trip drops variables)
QAT_CONVERTER_IMAGES = 32


def qat_int8(ctx, path):
    from .qat import quantization_aware_model

    qat_model, info = quantization_aware_model(ctx)
    stages = info["stage_seconds"]  # a Stopwatch: its laps so far are QAT's own
    # the activation ranges come from the QAT model's fake-quant nodes; the converter still asks for
    # representative images; a few dozen give the same file as hundreds (docs/export.md), in less time
    out = _full_integer(qat_model, ctx, path, images=ctx.calibration[:QAT_CONVERTER_IMAGES])
    stages.lap("convert")
    out.update(info)
    out["smoke_reference"] = qat_model  # the converter is checked against its own source: the QAT model
    # QAT fine-tunes further, so the file's agreement says something about quantization only against
    # this model, its float source (fake-quant nodes included); the benchmark gates it against that.
    from edge_runtime.files import sha256_file

    source = ctx.work / QAT_SOURCE  # staged: the export moves it into place with the file (exporter.commit)
    qat_model.save(str(source), include_optimizer=False)
    out["reference_model_sha256"] = sha256_file(source)  # the benchmark measures only this very source
    out["staged"] = {QAT_SOURCE: str(source)}
    stages.lap("save source")
    out["reference_model"] = QAT_SOURCE
    # distilled, the file learnt to answer as the Keras model does, so it is gated against Keras like every
    # other file; trained on the labels alone it drifts from Keras, and is gated against its own float source
    out["gate_reference"] = "keras" if ctx.qat_labels < 1 else "qat-source"
    return out

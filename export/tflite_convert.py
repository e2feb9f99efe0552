"""TFLite converters. Each writes one .tflite file from the run's Keras model.

TensorFlow is imported inside each converter so the variant table stays cheap to import
(the benchmark reads it without loading TensorFlow)."""


def _tf():
    from train import import_tensorflow

    return import_tensorflow()  # quietly: TensorFlow's start-up chatter stays off the terminal


def _converter(model):
    return _tf().lite.TFLiteConverter.from_keras_model(model)


def _run_converter(ctx):
    """A converter over the run's model, read from the SavedModel traced once per export."""
    return _tf().lite.TFLiteConverter.from_saved_model(ctx.saved_model)


def _write(path, flatbuffer):
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return {}


def fp32(ctx, path):
    return _write(path, _run_converter(ctx).convert())


def fp16(ctx, path):
    tf = _tf()
    c = _run_converter(ctx)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.target_spec.supported_types = [tf.float16]
    return _write(path, c.convert())


def dynamic(ctx, path):
    tf = _tf()
    c = _run_converter(ctx)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    return _write(path, c.convert())


def _full_integer(model, ctx, path):
    """Integer-only builtin ops, uint8 in and out: the form microcontrollers and NPUs take."""
    tf = _tf()
    c = _converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = ctx.representative_dataset
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.uint8
    c.inference_output_type = tf.uint8
    _write(path, c.convert())
    return {"calibration_images": len(ctx.calibration)}


# Ops whose output may be kept float by the accuracy-aware fallback.
FALLBACK_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN")


def int8(ctx, path):
    """Post-training full integer, calibrated once; then the accuracy-aware fallback (export/fallback.py).

    The calibrated float model is quantized again for each set of ops kept float, which takes
    well under a second, so the search never repeats the expensive conversion and calibration.
    """
    import tempfile

    tf = _tf()  # first: the import below would load TensorFlow loudly
    from tensorflow.lite.python.convert import mlir_quantize

    from edge_runtime.classifier import Classifier
    from train.metrics import parity_misses

    from . import tflite_ranges
    from .fallback import search, val_metrics

    c = _run_converter(ctx)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = ctx.representative_dataset
    c._experimental_calibrate_only = True  # noqa: SLF001  (the public QuantizationDebugger does the same)
    calibrated = c.convert()

    def quantize_model(model, excluded, out):
        # what TFLiteConverter.convert() itself calls after calibration, plus the ops kept float
        from train import quiet_fds

        with quiet_fds():  # it prints "fully_quantize: 0, inference_type: 6, ..." on every call
            flatbuffer = mlir_quantize(model, input_data_type=tf.uint8, output_data_type=tf.uint8,
                                       denylisted_nodes=excluded or None)
        _write(out, flatbuffer)
        return out

    with tempfile.TemporaryDirectory(prefix="tflite-int8-") as work:
        pixels, labels, ref = ctx.validation
        calibrated, ranges = tflite_ranges.choose(
            calibrated, ctx.calibration, lambda model, name: quantize_model(model, [], f"{work}/ranges-{name}.tflite"),
            lambda path: val_metrics(Classifier(path, verify=False).probabilities(pixels), ref, labels),
            lambda m: parity_misses(m["top1_change_points"], m["agreement"], ctx.budget.max_drop, ctx.budget.min_agreement),
            ctx.tflite_ranges, ctx.log)

        def quantize(excluded, out):
            quantize_model(calibrated, excluded, out)

        quantize([], f"{work}/probe.tflite")
        candidates = _quantized_op_outputs(f"{work}/probe.tflite")
        chosen, record = search(quantize, candidates, ctx.validation, ctx.budget, work, ctx.log, ".tflite")
        _copy(chosen, path)
    return {"calibration_images": len(ctx.calibration), "activation_ranges": ranges, "fallback": record}


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


def qat_int8(ctx, path):
    from .qat import quantization_aware_model

    qat_model, info = quantization_aware_model(ctx)
    out = _full_integer(qat_model, ctx, path)
    out.update(info)
    out["smoke_reference"] = qat_model  # the converter is checked against its own source: the QAT model
    # QAT fine-tunes further, so the file's agreement says something about quantization only against
    # this model, its float source (fake-quant nodes included); the benchmark gates it against that.
    from edge_runtime.files import atomic_path

    source = ctx.run.export_dir / QAT_SOURCE
    with atomic_path(source, suffix=".h5") as tmp:
        qat_model.save(str(tmp), include_optimizer=False)
    out["reference_model"] = QAT_SOURCE
    return out

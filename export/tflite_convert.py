"""TFLite converters. Each writes one .tflite file from the run's Keras model.

TensorFlow is imported inside each converter so the variant table stays cheap to import
(the benchmark reads it without loading TensorFlow)."""


def _tf():
    import tensorflow as tf

    return tf


def _converter(model):
    return _tf().lite.TFLiteConverter.from_keras_model(model)


def _write(path, flatbuffer):
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return {}


def fp32(ctx, path):
    return _write(path, _converter(ctx.model).convert())


def fp16(ctx, path):
    tf = _tf()
    c = _converter(ctx.model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.target_spec.supported_types = [tf.float16]
    return _write(path, c.convert())


def dynamic(ctx, path):
    tf = _tf()
    c = _converter(ctx.model)
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


def int8(ctx, path):
    return _full_integer(ctx.model, ctx, path)


def qat_int8(ctx, path):
    from .qat import quantization_aware_model

    qat_model, info = quantization_aware_model(ctx)
    out = _full_integer(qat_model, ctx, path)
    out.update(info)
    out["smoke_reference"] = qat_model  # the converter is checked against its own source: the QAT model
    return out

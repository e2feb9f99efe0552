"""Weight bias correction for int8 files (the empirical form of Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction").

Rounding a layer's weights to int8 shifts the mean of its outputs: with E the rounding error of the kernel
and x the layer's input, the output moves by E·E[x] on average, the same for every image. Per-channel scales
keep E small, but a depthwise conv has only 9 weights per channel, so the shift there is large against the
channel's own signal, and it adds up over the layers. Subtracting the expected shift from the bias removes
it before the converter rounds the weights.

The converters fold each BatchNormalization into the conv before it, and round the folded kernel with one
symmetric scale per output channel (max |w| / 127: TFLite, and ONNX Runtime's per-channel QInt8 weights), so
the error is computed on the folded kernel and subtracted from the BatchNormalization's beta (or from the
layer's own bias where no BatchNormalization follows). E[x] is each layer's input averaged over the
calibration images and positions, from one pass of the float model.

The corrected model is only a source for the int8 converters; every file is still measured against the
original Keras model, and the int8 driver keeps the correction only where it brings a file closer to it.
"""
import time

import numpy as np

BATCH = 16


def symmetric_int8(w, axes):
    """w rounded to int8 with one symmetric scale (max |w| / 127) per slice over `axes` (the reduced axes)."""
    scale = np.abs(w).max(axis=axes, keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    return np.round(w / scale) * scale


def _folding(layer, keras):
    """The BatchNormalization that the converters fold into `layer`, or None."""
    nxt = [node.outbound_layer for node in layer._outbound_nodes]  # noqa: SLF001
    bn = nxt[0] if len(nxt) == 1 and isinstance(nxt[0], keras.layers.BatchNormalization) else None
    return bn if bn is not None and len(bn.get_weights()) == 4 else None  # center and scale both on


def _shift(layer, mu, scale, keras):
    """The mean output shift that rounding `layer`'s (folded) kernel to int8 causes, per output channel."""
    w = layer.get_weights()[0]
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (h, w, channels, multiplier)
        c, m = w.shape[2], w.shape[3]
        wf = w * (scale.reshape(1, 1, c, m) if scale is not None else 1.0)
        err = symmetric_int8(wf, (0, 1)) - wf
        return (err * mu.reshape(1, 1, c, 1)).sum((0, 1)).reshape(-1)
    if isinstance(layer, keras.layers.Conv2D):  # (h, w, in, out)
        wf = w * (scale.reshape(1, 1, 1, -1) if scale is not None else 1.0)
        return np.einsum("hwio,i->o", symmetric_int8(wf, (0, 1, 2)) - wf, mu)
    wf = w * (scale.reshape(1, -1) if scale is not None else 1.0)  # Dense: (in, out)
    return mu @ (symmetric_int8(wf, (0,)) - wf)


def _layers(model, keras):
    """The layers whose kernels the converters round to int8 and whose input mean can be observed."""
    out = []
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            continue
        if type(layer).__name__ in ("Conv2DTranspose", "SeparableConv2D", "Conv1D", "Conv3D"):
            continue
        grouped = not isinstance(layer, keras.layers.DepthwiseConv2D) and getattr(layer, "groups", 1) != 1
        if len(layer._inbound_nodes) != 1 or grouped:  # noqa: SLF001
            continue  # shared, or grouped: one mean does not describe its input
        if isinstance(layer, keras.layers.Dense) and len(layer.input.shape) != 2:
            continue
        out.append(layer)
    return out


def input_means(model, layers, images, keras):
    """Each layer's input, averaged over the images and spatial positions: one float32 vector per layer."""
    pooled = [keras.layers.GlobalAveragePooling2D()(l.input) if len(l.input.shape) == 4 else l.input for l in layers]
    probe = keras.Model(model.input, pooled)
    sums = [np.zeros(int(p.shape[-1]), np.float64) for p in pooled]
    for i in range(0, len(images), BATCH):
        outs = probe.predict_on_batch(images[i:i + BATCH].astype(np.float32))
        for s, o in zip(sums, outs if isinstance(outs, list) else [outs]):
            s += np.asarray(o, np.float64).sum(0)
    return [s / len(images) for s in sums]


def correct(model, images):
    """(a copy of model with its biases corrected, record): record says how many layers and how long."""
    from runlib.tf_setup import import_keras
    keras = import_keras()

    t0 = time.time()
    layers = _layers(model, keras)
    means = input_means(model, layers, images, keras)
    new = keras.models.clone_model(model)
    new.set_weights(model.get_weights())
    changed = 0
    for layer, mu in zip(layers, means):
        bn = _folding(layer, keras)
        if bn is not None:
            gamma, beta, mean, var = bn.get_weights()
            scale = gamma / np.sqrt(var + bn.epsilon)
            shift = _shift(layer, mu, scale, keras)
            new.get_layer(bn.name).set_weights([gamma, beta - shift.astype(beta.dtype), mean, var])
        elif layer.use_bias:
            weights = new.get_layer(layer.name).get_weights()
            weights[1] = weights[1] - _shift(layer, mu, None, keras).astype(weights[1].dtype)
            new.get_layer(layer.name).set_weights(weights)
        else:
            continue
        changed += 1
    return new, {"layers": changed, "images": int(len(images)), "seconds": round(time.time() - t0, 1)}

"""Backbones and the classifier built on them.

The graph is flat (input -> preprocess -> backbone layers -> head), never a model nested
in a model, because tfmot's quantize_model refuses nested models. Normalisation is a
frozen 1x1 convolution named `preprocess`, so the saved model takes raw RGB pixels 0..255
and every layer stays one that TFLite, tf2onnx and tfmot all understand.
"""
import numpy as np
from runlib.tf_setup import import_keras

from edge_runtime.errors import InputError

from runlib.backbones import BACKBONES

keras = import_keras()

HEAD = ("head_pool", "head_dropout", "head_dense")


def _normalizer_weights(kind):
    """1x1 conv kernel and bias reproducing keras.applications' preprocess_input."""
    if kind == "caffe":  # RGB -> BGR, then subtract the ImageNet mean
        kernel = np.zeros((1, 1, 3, 3), np.float32)
        for out_c, in_c in enumerate((2, 1, 0)):
            kernel[0, 0, in_c, out_c] = 1.0
        return kernel, -np.array([103.939, 116.779, 123.68], np.float32)
    if kind == "tf":  # scale to -1..1
        return (np.eye(3, dtype=np.float32) / 127.5).reshape(1, 1, 3, 3), -np.ones(3, np.float32)
    raise ValueError(kind)


def _application(cfg, **kwargs):
    spec = BACKBONES[cfg["backbone"]]
    if spec.has_alpha:
        kwargs["alpha"] = cfg["alpha"]
    build = spec.build if callable(spec.build) else getattr(keras.applications, spec.build)
    return build(include_top=False, **kwargs)


def _pretrained(cfg):
    """The stand-alone backbone with its weights loaded, or None for random weights."""
    weights = cfg["weights"]
    if weights in (None, "none"):
        return None
    h, w = cfg["image_size"]
    try:
        return _application(cfg, weights=weights, input_shape=(h, w, 3))
    except Exception as e:  # noqa: BLE001  download failure, wrong file, shape mismatch: all one line for the user
        what = f"backbone {cfg['backbone']}" + (f" (alpha {cfg['alpha']})" if BACKBONES[cfg["backbone"]].has_alpha else "")
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if weights == "imagenet":
            raise InputError(f"could not get ImageNet weights for {what}: {reason} "
                             f"(offline? pass --weights PATH.h5 or --weights none)") from None
        raise InputError(f"weights file {weights} does not fit {what}: {reason}") from None


def build_model(cfg, num_classes):
    """Input (raw RGB 0..255, float32) -> preprocess -> backbone -> pooled dense softmax."""
    spec = BACKBONES[cfg["backbone"]]
    h, w = cfg["image_size"]
    inputs = keras.Input((h, w, 3), name="image")
    x = inputs
    if spec.normalize != "none":
        norm = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False)
        x = norm(x)
        norm.set_weights(list(_normalizer_weights(spec.normalize)))
    base = _application(cfg, weights=None, input_tensor=x)
    reference = _pretrained(cfg)
    if reference is not None:
        copied = 0
        for layer in reference.layers:
            if layer.weights:
                base.get_layer(layer.name).set_weights(layer.get_weights())
                copied += 1
        if not copied:
            raise InputError(f"weights {cfg['weights']} hold no layers of backbone {cfg['backbone']}")
        del reference
    else:
        # From scratch, BatchNorm's moving statistics must catch up within a short run.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    x = keras.layers.GlobalAveragePooling2D(name=HEAD[0])(base.output)
    x = keras.layers.Dropout(cfg["dropout"], name=HEAD[1])(x)
    # float32 softmax even under mixed precision: probabilities must not round to 0 or 1
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=HEAD[2])(x)
    return keras.Model(inputs, outputs, name=f"{cfg['backbone']}_classifier")


def training_loss(smoothing):
    """Sparse cross-entropy, or with label smoothing: (1 - e) of it plus e of the mean over classes of -log p
    (Keras 2's sparse loss has no smoothing of its own)."""
    if not smoothing:
        return "sparse_categorical_crossentropy"
    import tensorflow as tf

    e = float(smoothing)

    def smoothed(y_true, y_pred):
        logp = tf.math.log(tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-7, 1.0))
        nll = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
        return (1 - e) * nll - e * tf.reduce_mean(logp, axis=-1)

    return smoothed


def compile_for_training(model, cfg, lr):
    """The training step of a run: Adam (with the run's gradient clipping), sparse cross-entropy, XLA if asked."""
    clip = {"global_clipnorm": cfg["clip_norm"]} if cfg.get("clip_norm") else {}
    model.compile(optimizer=keras.optimizers.Adam(lr, **clip), loss=training_loss(cfg.get("label_smoothing", 0.0)),
                  metrics=["accuracy"], jit_compile=bool(cfg.get("xla")))


def load_run_model(run):
    """A run's model.keras, built from the run's config and given the file's weights: a third of the time of
    deserialising the whole file (a ResNet-50: 4 s against 12), the same outputs. Falls back to the full load
    when the file's layers do not match what the config builds."""
    cfg = run.config()
    try:
        model = build_model({**cfg, "weights": "none"}, len(cfg["classes"]))
        model.load_weights(str(run.model))
        return model
    except Exception:  # noqa: BLE001  an older or hand-made file: read it whole
        return load_keras(run.model)


def load_keras(path, quantization_aware=False):
    """A saved Keras model (inference only), or one clear InputError naming the file and the reason.

    quantization_aware: the file holds tfmot's fake-quant layers (the QAT source), loaded in their scope.
    """
    try:
        if quantization_aware:
            import tensorflow_model_optimization as tfmot

            with tfmot.quantization.keras.quantize_scope():
                return keras.models.load_model(str(path), compile=False)
        return keras.models.load_model(str(path), compile=False)
    except Exception as e:  # noqa: BLE001  Keras raises many types for an unreadable file: one line for all
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: cannot load the trained model ({reason})") from None


def backbone_layers(model):
    return [l for l in model.layers if l.name not in HEAD and l.name != "preprocess"
            and not isinstance(l, keras.layers.InputLayer)]


def unfreeze_start(model, cfg):
    """Index into backbone_layers where phase 2 starts training."""
    layers = backbone_layers(model)
    if cfg.get("unfreeze_layers"):
        n = int(cfg["unfreeze_layers"])
        if n < 1:
            raise InputError(f"--unfreeze-layers must be at least 1, got {n}")
        return max(0, len(layers) - n)
    prefix = cfg.get("unfreeze_from") or BACKBONES[cfg["backbone"]].unfreeze_from
    for i, layer in enumerate(layers):
        if layer.name.startswith(prefix):
            return i
    raise InputError(f"--unfreeze-from {prefix!r} names no layer of {cfg['backbone']} "
                     f"(default is {BACKBONES[cfg['backbone']].unfreeze_from!r})")


def set_phase(model, phase, cfg):
    """Phase 1: only the head trains. Phase 2: the deeper backbone layers too, BatchNorm excepted.

    Frozen BatchNorm layers run in inference mode in Keras 2, so their statistics are
    kept, which is what fine-tuning on a small dataset needs. With random weights (--weights
    none) there is nothing to protect: the whole network trains in both phases.
    """
    layers = backbone_layers(model)
    if cfg.get("weights") in (None, "none"):
        start = 0  # random weights: nothing pretrained to protect, so every layer trains in both phases
    else:
        start = len(layers) if phase == 1 else unfreeze_start(model, cfg)
    for i, layer in enumerate(layers):
        bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= start and (not bn or cfg.get("train_bn", False))
    for name in HEAD:
        model.get_layer(name).trainable = True
    if "preprocess" in [l.name for l in model.layers]:
        model.get_layer("preprocess").trainable = False
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

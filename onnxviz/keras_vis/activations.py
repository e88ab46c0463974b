"""Activation functions to assign in keras-vis code that runs on ONNX models without Keras:
``model.layers[idx].activation = activations.linear``. ``keras.activations.linear`` works the same
(activations are compared by name). They are plain numpy functions; ``apply_modifications`` only
reads their names."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["linear", "softmax", "sigmoid", "log_softmax", "relu", "tanh", "get"]


def linear(x: Any) -> np.ndarray:
    return np.asarray(x)


def softmax(x: Any, axis: int = -1) -> np.ndarray:
    z = np.asarray(x, np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: Any, axis: int = -1) -> np.ndarray:
    z = np.asarray(x, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def sigmoid(x: Any) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def relu(x: Any) -> np.ndarray:
    return np.maximum(np.asarray(x), 0)


def tanh(x: Any) -> np.ndarray:
    return np.tanh(np.asarray(x))


def _named(name: str) -> Callable[[Any], np.ndarray]:
    def fn(x: Any) -> np.ndarray:
        raise NotImplementedError(f"the {name} activation of an ONNX layer is not available in numpy here")

    fn.__name__ = name
    return fn


def get(name: str) -> Callable[[Any], np.ndarray]:
    """The function of that name here, else a placeholder carrying the name (for layers ending in an
    op these functions do not cover)."""
    return globals().get(name) if name in __all__ and name != "get" else _named(name)

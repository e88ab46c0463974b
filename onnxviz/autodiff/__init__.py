"""Reverse-mode automatic differentiation of ONNX graphs into ONNX graphs (standard ops only)."""

from .build import COTANGENT, GRADIENT_OPSET, GradientPlan, gradient_model, plan, prepare
from .rules import RULES, supported_ops

__all__ = ["COTANGENT", "GRADIENT_OPSET", "GradientPlan", "RULES", "gradient_model", "plan", "prepare",
           "supported_ops"]

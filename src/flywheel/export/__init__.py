"""Export: ONNX bundles (fp32 or int8) that run with ONNX Runtime alone."""

from flywheel.export.runtime import MANIFEST, OnnxBundle

__all__ = ["MANIFEST", "OnnxBundle"]

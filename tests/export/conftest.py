"""The export tests run the exported graphs in ONNX Runtime; the shared exports live in tests/conftest.py."""

import pytest

pytest.importorskip("onnxruntime", reason="the export tests run the exported graphs in ONNX Runtime")

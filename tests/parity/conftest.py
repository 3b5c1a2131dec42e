"""Parity tests compare against the PyTorch reference; skip the whole package without torch."""

import pytest

pytest.importorskip('torch', reason='parity tests need the [test] extra (torch, transformers)')
pytest.importorskip('transformers', reason='parity tests need the [test] extra (transformers)')

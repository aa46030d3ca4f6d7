"""pytest-quant: quantize with llm-compressor, evaluate with lm-eval (vLLM or transformers), gate in pytest.

The pipeline, each step a plain function usable without pytest:
model source (:mod:`.models`) -> calibration data (:mod:`.calibration`) -> recipe (:mod:`.recipes`)
-> checkpoint (:mod:`.build`, cached by :mod:`.store`) -> evaluation (:mod:`.evaluate`, cached)
-> gate (:mod:`.gates`) -> report (:mod:`.report`).
"""

__version__ = "0.1.0"

"""The shipped gate suite: ``pytest --pyargs pytest_quant.suite --quant-model MODEL_ID``."""

"""Stand-in for torch in the compile venv (Python 3.10, where no CPU torch wheel is at hand).

tpu-mlir 1.30.2 imports torch at the top of its ONNX optimiser only to call
``torch.tensor(array).numpy()``; everything else asks for torch inside try/except ImportError,
so any other attribute raises ImportError and those callers take their torch-free path.
"""

from typing import Any

import numpy


class _Tensor:
    def __init__(self, data: Any) -> None:
        self._array = numpy.asarray(data)

    def numpy(self) -> Any:
        return self._array


def tensor(data: Any, *args: Any, **kwargs: Any) -> _Tensor:
    return _Tensor(data)


def __getattr__(name: str) -> Any:
    raise ImportError(f"torch stub (tests/engine/gen/torch_stub): torch.{name} is not available")

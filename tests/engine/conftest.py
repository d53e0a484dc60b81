"""Engine fixtures: the engine built once per session with cmake, and the cmodel libraries.

The cmodel libraries come from .ci/engine-deps.sh, which prints their folder: tests read it from
$LLMTPU_CMODEL_LIB, else look in its default cache folder, and skip when neither has them
(CI sets LLMTPU_REQUIRE_ALL=1, and then they fail instead).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from llmtpu.runtime.build import SOURCE_DIR, BuiltEngine, build_engine
from llmtpu.target import LocalTarget
from tests.conftest import require

CMODEL_VERSION = "1.30.2"
DEFAULT_CMODEL_LIB = Path.home() / ".cache" / "llmtpu" / f"cmodel-{CMODEL_VERSION}"


def cmodel_lib_dir() -> Path | None:
    folder = Path(os.environ.get("LLMTPU_CMODEL_LIB") or DEFAULT_CMODEL_LIB)
    return folder if (folder / "libbmrt.so").exists() and (folder / "libcmodel.so").exists() else None


@pytest.fixture(scope="session")
def built_engine(tmp_path_factory: pytest.TempPathFactory) -> BuiltEngine:
    """The engine compiled from csrc/ the way `llmtpu engine build` does it."""
    require(shutil.which("cmake") is not None and shutil.which("g++") is not None,
            "cmake and g++ are needed to build the engine (bash .ci/engine-deps.sh installs them)")
    build_dir = tmp_path_factory.mktemp("engine-build")
    return build_engine(LocalTarget(), str(SOURCE_DIR), str(build_dir))


@pytest.fixture(scope="session")
def cmodel_lib() -> Path:
    folder = cmodel_lib_dir()
    require(folder is not None,
            f"BM1684X cmodel libraries not found in $LLMTPU_CMODEL_LIB or {DEFAULT_CMODEL_LIB} "
            "(bash .ci/engine-deps.sh fetches them)")
    assert folder is not None
    return folder

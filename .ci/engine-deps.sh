#!/usr/bin/env bash
# Install what the engine tests (tests/engine) need on a fresh Debian 12 x86_64 machine, and
# print, as the last line of stdout, the folder holding the BM1684X cmodel runtime libraries:
#
#   export LLMTPU_CMODEL_LIB=$(bash .ci/engine-deps.sh | tail -n 1)
#
# - cmake, g++, g++-aarch64-linux-gnu and qemu-user from Debian (apt-get only when one is
#   missing; the last two take about 10 s);
# - the tpu-mlir wheel, pinned and sha256-checked, from PyPI: only its three runtime libraries
#   (libbmrt, libbmlib, libcmodel: 19 MB of its 312 MB) are kept, in a cache folder that later
#   runs reuse. The wheel is for Python 3.10, but these C libraries are not: any pip downloads it.
# Runs as root or as a user with a cache folder (then apt-get must not be needed).
# Measured on a 2-core Debian 12 VM with cmake/g++ present: 4 s from nothing (the download is
# 312 MB), 0.01 s when the cache is there.
set -euo pipefail

TPU_MLIR_VERSION=1.30.2
TPU_MLIR_SHA256=542807361c9eeb0777a7bd35e501d8c71cce767e4bce021a3cb3a7c25c35f909
CACHE_DIR=${LLMTPU_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llmtpu}
LIB_DIR=$CACHE_DIR/cmodel-$TPU_MLIR_VERSION
LIBS=(libbmrt.so.1.0 libbmlib.so.0 libcmodel.so)

log() { echo "engine-deps: $*" >&2; }

missing=()
command -v cmake > /dev/null || missing+=(cmake)
command -v g++ > /dev/null || missing+=(g++)
python3 -m pip --version > /dev/null 2>&1 || missing+=(python3 python3-pip)
# The aarch64 cross build for boards, and qemu-user to start it here.
command -v aarch64-linux-gnu-g++ > /dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 > /dev/null || missing+=(qemu-user)
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if [[ -f $LIB_DIR/.sha256 && $(cat "$LIB_DIR/.sha256") == "$TPU_MLIR_SHA256" ]]; then
  log "cmodel libraries already in $LIB_DIR"
  echo "$LIB_DIR"
  exit 0
fi

download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
log "downloading tpu_mlir $TPU_MLIR_VERSION (312 MB) from PyPI"
printf 'tpu_mlir==%s --hash=sha256:%s\n' "$TPU_MLIR_VERSION" "$TPU_MLIR_SHA256" > "$download/req.txt"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
  --require-hashes -r "$download/req.txt" -d "$download" >&2
wheel=$download/tpu_mlir-$TPU_MLIR_VERSION-py3-none-any.whl
echo "$TPU_MLIR_SHA256  $wheel" | sha256sum --check --quiet - >&2

rm -rf "$LIB_DIR.partial"
mkdir -p "$LIB_DIR.partial"
python3 - "$wheel" "$LIB_DIR.partial" "${LIBS[@]}" <<'EOF'
"""Copy the named tpu_mlir/lib/ members out of the wheel, nothing else."""
import shutil
import sys
import zipfile

wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as archive:
    for name in names:
        with archive.open(f"tpu_mlir/lib/{name}") as src, open(f"{dest}/{name}", "wb") as dst:
            shutil.copyfileobj(src, dst)
EOF
ln -s libbmrt.so.1.0 "$LIB_DIR.partial/libbmrt.so"
ln -s libbmlib.so.0 "$LIB_DIR.partial/libbmlib.so"
echo "$TPU_MLIR_SHA256" > "$LIB_DIR.partial/.sha256"
rm -rf "$LIB_DIR"
mv "$LIB_DIR.partial" "$LIB_DIR"
log "cmodel libraries in $LIB_DIR"
echo "$LIB_DIR"

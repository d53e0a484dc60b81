#!/usr/bin/env bash
# Rebuild the tiny test model from nothing: the one command.
#
#   bash tests/engine/gen/build.sh [OUT_DIR]        (default OUT_DIR: runtime/testmodel)
#
# 1. two venvs under build/testmodel/ (made once, reused):
#    - venv-export: Python 3.11 + CPU torch 2.13 + onnx, for tiny_llama.py (model, ONNX, reference)
#    - venv-compile: Python 3.10 + the tpu_mlir 1.30.2 wheel (its Python tools need 3.10) with
#      only the packages its ONNX path imports, for compile.sh
# 2. tiny_llama.py exports 7 ONNX parts and reference.json; tiny_qwen2.py, tiny_chatglm3.py and
#    tiny_gpt_bigcode.py the same for Qwen2, ChatGLM3 and GPT-BigCode (WizardCoder) in LLM-TPU's layouts for them
# 3. compile.sh makes tiny_llama_f16.bmodel, tiny_llama_w8bf16.bmodel and tiny_llama_f16tok.bmodel
#    (f16 with llm_convert's default lm_head, which gives a token id instead of logits)
# Takes about 4 minutes when the venvs are missing, 2 minutes after (5 bmodels); needs ~1.5 GB in build/.
# Environment: TESTMODEL_WORK (default build/testmodel), TORCH_WHEEL (default: the local CPU wheel in /opt/wheels, else torch==2.13.0
# from the package index), PYTHON310 / PYTHON311 (interpreters for the two venvs).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=$(realpath -m "${1:-$repo/runtime/testmodel}")
work=$(realpath -m "${TESTMODEL_WORK:-$repo/build/testmodel}")
# An interpreter of this minor version that really runs (a pyenv shim may exist and refuse).
find_python() {
  local candidate
  for candidate in "python$1" "$HOME"/.pyenv/versions/"$1".*/bin/python; do
    if "$candidate" -c '' 2> /dev/null; then echo "$candidate"; return; fi
  done
  echo "build.sh: no working python$1 (set PYTHON${1/./})" >&2
  exit 1
}
python310=${PYTHON310:-$(find_python 3.10)}
python311=${PYTHON311:-$(find_python 3.11)}
torch_wheel=${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
[[ -f $torch_wheel ]] || torch_wheel=torch==2.13.0
mkdir -p "$work"

# A venv is made in place (venvs cannot be moved) and counts only once .complete is written.
venv=$work/venv-export
if [[ ! -f $venv/.complete ]]; then
  echo "making $venv (Python 3.11, torch)"
  rm -rf "$venv"
  "$python311" -m venv "$venv"
  "$venv/bin/pip" install -q "$torch_wheel" onnx numpy
  touch "$venv/.complete"
fi

venv=$work/venv-compile
if [[ ! -f $venv/.complete ]]; then
  echo "making $venv (Python 3.10, tpu_mlir 1.30.2)"
  rm -rf "$venv"
  "$python310" -m venv "$venv"
  # The wheel's declared dependencies pull 2 GB (transformers, scikit, ...) that ONNX input
  # does not use; these are the ones its ONNX path imports.
  echo "tpu_mlir==1.30.2 --hash=sha256:542807361c9eeb0777a7bd35e501d8c71cce767e4bce021a3cb3a7c25c35f909" \
    > "$work/tpu_mlir.requirements"
  "$venv/bin/pip" install -q --no-deps --require-hashes -r "$work/tpu_mlir.requirements"
  "$venv/bin/pip" install -q numpy==1.24.3 onnx==1.14.1 onnxruntime==1.16.3 protobuf==3.20.3 \
    psutil tqdm plotly Pillow opencv-python-headless onnxruntime_extensions onnxsim filelock
  # The wheel bundles Ubuntu 22.04's glibc (2.35) in tpu_mlir/lib/third_party and puts that
  # folder on LD_LIBRARY_PATH: on a newer host every tool then dies with
  # "GLIBC_2.36 not found". The host's own glibc is the right one.
  third_party=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tpu_mlir/lib/third_party
  mkdir -p "$venv/bundled-glibc"
  for lib in libc.so.6 libm.so.6 libpthread.so.0; do
    if [[ -e $third_party/$lib ]]; then mv "$third_party/$lib" "$venv/bundled-glibc/"; fi
  done
  touch "$venv/.complete"
fi

"$work/venv-export/bin/python" "$here/tiny_llama.py" "$work/onnx"
for mode in f16 w8bf16 f16tok; do
  bash "$here/compile.sh" "$work/venv-compile" "$work/onnx" "$work/compile-$mode" "$mode" \
    "$out/tiny_llama_$mode.bmodel"
done
cp "$work/onnx/reference.json" "$out/reference.json"

# The other architectures, each in LLM-TPU's layout and quantisation for it.
"$work/venv-export/bin/python" "$here/tiny_qwen2.py" "$work/onnx-qwen2"
bash "$here/compile.sh" "$work/venv-compile" "$work/onnx-qwen2" "$work/compile-qwen2" bf16-io-alone \
  "$out/tiny_qwen2_bf16.bmodel"
cp "$work/onnx-qwen2/reference.json" "$out/reference_qwen2.json"
"$work/venv-export/bin/python" "$here/tiny_chatglm3.py" "$work/onnx-chatglm3"
bash "$here/compile.sh" "$work/venv-compile" "$work/onnx-chatglm3" "$work/compile-chatglm3" f16 \
  "$out/tiny_chatglm3_f16.bmodel"
cp "$work/onnx-chatglm3/reference.json" "$out/reference_chatglm3.json"
"$work/venv-export/bin/python" "$here/tiny_gpt_bigcode.py" "$work/onnx-bigcode"
bash "$here/compile.sh" "$work/venv-compile" "$work/onnx-bigcode" "$work/compile-bigcode" bigcode-f16 \
  "$out/tiny_gpt_bigcode_f16.bmodel"
cp "$work/onnx-bigcode/reference.json" "$out/reference_gpt_bigcode.json"
echo "tiny test model in $out"

#!/usr/bin/env bash
# Compile the ONNX parts of tiny_llama.py into one combined BM1684X bmodel with tpu-mlir.
#
#   compile.sh VENV ONNX_DIR WORK_DIR MODE OUT_BMODEL
#        MODE: f16 | bf16 | w8bf16 | f16tok | bf16-io-alone | bigcode-f16
#
# bigcode-f16 is LLM-TPU's WizardCoder compile.sh build: F16 weights, f32 at every network's
# edge (no --quant_input/--quant_output), and one `embedding` network (ids and positions) with
# two stages, compiled for [1,1] and [1,SEQ] and combined under one name. Its lm_head is F16
# here (W8F16 in LLM-TPU's script), so 8-bit rounding cannot flip the tiny model's tokens.
#
# bf16-io-alone is LLM-TPU's Qwen2 compile.sh build: BF16, block_cache_N with --addr_mode
# io_alone. greedy_head.onnx and penalty_sample_head.onnx, when ONNX_DIR has them, are compiled
# in F32 and combined too (the engine ignores them, as a real Qwen2 bmodel carries them).
#
# f16tok is f16 with llm_convert's default lm_head, which returns one int32 token id
# (lm_head_token.onnx compiled under the name lm_head).
#
# VENV is a Python 3.10 venv holding the tpu_mlir wheel (build.sh makes it). Embeddings keep
# half-precision outputs (--quant_output), blocks take and give half precision
# (--quant_input --quant_output) and lm_head takes half precision and gives f32 logits, so the
# engine moves f16/bf16 hidden states and KV caches between nets without conversions.
# The kernel module (5.6 MB, the same in every bmodel) is removed: the runtime falls back to
# its own copy, and the committed file stays a few hundred KB.
set -euo pipefail

venv=$(realpath "$1") onnx_dir=$(realpath "$2") work=$(realpath -m "$3") mode=$4
cache_flags=()
out=$(realpath -m "$5")
here=$(cd "$(dirname "$0")" && pwd)
case $mode in
  f16) half=F16 block=F16 ;;
  f16tok) half=F16 block=F16 head_onnx=lm_head_token ;;
  bf16-io-alone) half=BF16 block=BF16 cache_flags=(--addr_mode io_alone) ;;
  bigcode-f16) half=F16 block=F16 edges=f32 ;;
  bf16) half=BF16 block=BF16 ;;
  w8bf16) half=BF16 block=W8BF16 ;;
  *) echo "compile.sh: unknown mode $mode (f16, bf16, w8bf16, f16tok, bf16-io-alone, bigcode-f16)" >&2; exit 64 ;;
esac

export PATH="$venv/bin:$PATH"
export PYTHONPATH="$here/torch_stub${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$work"
cd "$work"

layers=$(find "$onnx_dir" -name 'block_cache_*.onnx' | wc -l)
parts=(embedding embedding_cache lm_head)
if [[ ${edges:-} == f32 ]]; then  # one two-stage embedding: embedding_1 and embedding_seq parts
  seq=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["config"]["seq"])' "$onnx_dir/reference.json")
  parts=(embedding_1 embedding_seq lm_head)
fi
for ((i = 0; i < layers; i++)); do parts+=("block_$i" "block_cache_$i"); done
for head in greedy_head penalty_sample_head; do
  [[ -f $onnx_dir/$head.onnx ]] && parts+=("$head")
done

for part in "${parts[@]}"; do
  name=$part source_onnx=$part shapes=()
  case $part in
    embedding_1) name=embedding source_onnx=embedding shapes=(--input_shapes "[[1,1],[1,1]]") ;;
    embedding_seq) name=embedding source_onnx=embedding shapes=(--input_shapes "[[1,$seq],[1,$seq]]") ;;
  esac
  if [[ ${edges:-} == f32 ]]; then
    quantize=$block flags=()
  else case $part in
    embedding*) quantize=$half flags=(--quant_output) ;;
    lm_head) quantize=$half flags=(--quant_input) ;;
    greedy_head | penalty_sample_head) quantize=F32 flags=() ;;
    block_cache_*) quantize=$block flags=(--quant_input --quant_output "${cache_flags[@]}") ;;
    *) quantize=$block flags=(--quant_input --quant_output) ;;
  esac fi
  [[ $part == lm_head ]] && source_onnx=${head_onnx:-lm_head}
  model_transform.py --model_name "$name" --model_def "$onnx_dir/$source_onnx.onnx" "${shapes[@]}" \
    --mlir "$part.mlir" > "$part.transform.log" 2>&1 \
    || { tail -20 "$part.transform.log" >&2; exit 1; }
  model_deploy.py --mlir "$part.mlir" --quantize "$quantize" --chip bm1684x \
    "${flags[@]}" --model "$part.bmodel" > "$part.deploy.log" 2>&1 \
    || { tail -20 "$part.deploy.log" >&2; exit 1; }
  echo "compiled $part ($quantize)"
done

bmodels=()
for part in "${parts[@]}"; do bmodels+=("$part.bmodel"); done
model_tool --combine "${bmodels[@]}" -o combined.bmodel > combine.log 2>&1
model_tool --kernel_remove combined.bmodel > kernel_remove.log 2>&1
mkdir -p "$(dirname "$out")"
cp combined.bmodel "$out"
echo "wrote $out ($(stat -c %s "$out") bytes)"

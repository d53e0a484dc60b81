// llmtpu-engine: run an LLM-TPU-format bmodel on a Sophgo BM1684X (or its cmodel simulator).
//
// One path from bmodel to tokens, read top to bottom:
//   1. find bmruntime at run time (dlopen libbmlib + libbmrt from --lib-dir)
//   2. load the bmodel; describe its networks and decide the layout from the description
//      (embedding, embedding_cache, block_N, block_cache_N, lm_head; the layer count is how many
//      block_cache_N there are): Llama-style, ChatGLM or GPT-BigCode; other layouts are
//      refused by name (multi-device, vision)
//   3. allocate device buffers once: hidden states, masks, positions, and the KV cache
//   4. answer requests on stdin, one line each (see PROTOCOL below): prefill the prompt through
//      every block_N (which writes the KV cache), then decode one token at a time through
//      block_cache_N (which reads the cache; the new K/V row is copied into it, or, ChatGLM,
//      the network returns the whole shifted cache)
//
// PROTOCOL (protocol 1). stdout carries only protocol lines; anything the libraries print goes
// to stderr. On start the engine prints either
//   ready protocol=1 layout=llama|chatglm|gpt_bigcode layers=L seq=S hidden=H head=logits vocab=V dtype=f16 load_ms=X
//   (head=token, and no vocab, when lm_head returns a token id: llm_convert's default)
// or one `error KIND message` line and exits non-zero. Then, per request line on stdin:
//   generate ids=1,2,3 max_new=8 [temperature=0] [top_p=1] [seed=0] [stop=2,3]
//     -> prefill ms=X tokens=N
//        token ID ms=X gap=G nonfinite=K        (one per generated token, flushed at once;
//                                                 a token head has no gap or nonfinite to tell)
//        done tokens=N reason=length|stop|seq_full prefill_ms=X decode_ms=X
//   info  -> net NAME inputs=... outputs=...   (one line per network), then `end`
//   quit  -> exits 0 (so does end of input)
// A bad request answers `error bad_request message` and the engine waits for the next line;
// a device failure answers `error device message` and the engine exits 5.
// `gap` is the top-1 minus top-2 logit and `nonfinite` the number of NaN/inf logits: the
// caller's checks for degenerate output need them. A token head cannot sample: a request with
// temperature > 0 gets `error bad_request`.
// `llmtpu-engine --check-layout FILE` judges a listing of `net ...` lines (what `info` prints)
// without a device: it prints `layout layers=... head=...` or the `error bad_model` line.

#include <dlfcn.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bmruntime_api.h"

#ifndef LLMTPU_ENGINE_VERSION
#define LLMTPU_ENGINE_VERSION "0.0.0-dev"
#endif

static const int kProtocol = 1;
static const float kMaskValue = -10000.0f;  // what LLM-TPU bmodels expect for "do not attend"
static const char* kDefaultLibDir = "/opt/sophon/libsophon-current/lib";

// Exit codes, so a caller can tell failures apart without parsing text.
enum ExitCode {
  kExitOk = 0,
  kExitUsage = 2,
  kExitNoRuntime = 3,
  kExitBadModel = 4,
  kExitDevice = 5,
};

// ---------------------------------------------------------------------------------------------
// Output: protocol lines go to the original stdout; the libraries' chatter is sent to stderr.

static FILE* protocol_out = stdout;
static int protocol_fd = STDOUT_FILENO;

static void reply(const char* format, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char* format, ...) {
  va_list args;
  va_start(args, format);
  vfprintf(protocol_out, format, args);
  va_end(args);
  fputc('\n', protocol_out);
  fflush(protocol_out);
}

// Keep fd 1 for the protocol only: the cmodel and bmruntime print to stdout.
static void separate_protocol_from_library_output() {
  int fd = dup(STDOUT_FILENO);
  if (fd < 0) return;  // stdout is closed: nothing to protect
  dup2(STDERR_FILENO, STDOUT_FILENO);
  protocol_fd = fd;
  protocol_out = fdopen(fd, "w");
}

// bmruntime kills the process on some bad input (a corrupt bmodel ends in SIGSEGV after its
// own "Model file is broken"). So the caller still gets one protocol line saying what was being
// done, a handler for fatal signals writes the current phase's error line and exits.
static char crash_line[512] = "error device the engine crashed\n";
static int crash_exit_code = 5;

static void on_fatal_signal(int) {
  ssize_t ignored = write(protocol_fd, crash_line, strlen(crash_line));
  (void)ignored;
  _exit(crash_exit_code);
}

static void set_crash_reply(int exit_code, const std::string& line) {
  snprintf(crash_line, sizeof crash_line, "%s\n", line.c_str());
  crash_exit_code = exit_code;
}

static void install_crash_reply() {
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) signal(sig, on_fatal_signal);
}

static double elapsed_ms(std::chrono::steady_clock::time_point start) {
  std::chrono::duration<double, std::milli> d = std::chrono::steady_clock::now() - start;
  return d.count();
}

// ---------------------------------------------------------------------------------------------
// 1. bmruntime, found at run time.

struct Runtime {
  void* bmlib = nullptr;
  void* bmrt = nullptr;
  bm::DevRequestFn dev_request;
  bm::DevFreeFn dev_free;
  bm::MallocDeviceByteFn malloc_device_byte;
  bm::FreeDeviceFn free_device;
  bm::MemcpyS2dPartialFn memcpy_s2d_partial;
  bm::MemcpyD2sPartialFn memcpy_d2s_partial;
  bm::MemcpyD2dByteFn memcpy_d2d_byte;
  bm::ThreadSyncFn thread_sync;
  bm::RtCreateFn rt_create;
  bm::RtDestroyFn rt_destroy;
  bm::RtLoadBmodelFn rt_load_bmodel;
  bm::RtGetNetworkNumberFn rt_get_network_number;
  bm::RtGetNetworkNamesFn rt_get_network_names;
  bm::RtGetNetworkInfoFn rt_get_network_info;
  bm::RtLaunchTensorExFn rt_launch_tensor_ex;
};

// dlopen the first of `names` found in `dir`; RTLD_GLOBAL so libbmrt sees libbmlib's symbols.
static void* open_library(const std::string& dir, const std::vector<std::string>& names,
                          std::string* error) {
  for (const std::string& name : names) {
    std::string path = dir + "/" + name;
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (handle) return handle;
    if (name == names.front()) *error = dlerror();  // the usual name's reason is the useful one
  }
  return nullptr;
}

template <typename Fn>
static bool find_symbol(void* library, const char* name, Fn* fn, std::string* missing) {
  *fn = reinterpret_cast<Fn>(dlsym(library, name));
  if (*fn == nullptr) *missing = name;
  return *fn != nullptr;
}

static bool load_runtime(const std::string& lib_dir, Runtime* rt, std::string* error) {
  rt->bmlib = open_library(lib_dir, {"libbmlib.so", "libbmlib.so.0"}, error);
  if (!rt->bmlib) return false;
  rt->bmrt = open_library(lib_dir, {"libbmrt.so", "libbmrt.so.1.0"}, error);
  if (!rt->bmrt) return false;
  std::string missing;
  bool ok = find_symbol(rt->bmlib, "bm_dev_request", &rt->dev_request, &missing) &&
            find_symbol(rt->bmlib, "bm_dev_free", &rt->dev_free, &missing) &&
            find_symbol(rt->bmlib, "bm_malloc_device_byte", &rt->malloc_device_byte, &missing) &&
            find_symbol(rt->bmlib, "bm_free_device", &rt->free_device, &missing) &&
            find_symbol(rt->bmlib, "bm_memcpy_s2d_partial", &rt->memcpy_s2d_partial, &missing) &&
            find_symbol(rt->bmlib, "bm_memcpy_d2s_partial", &rt->memcpy_d2s_partial, &missing) &&
            find_symbol(rt->bmlib, "bm_memcpy_d2d_byte", &rt->memcpy_d2d_byte, &missing) &&
            find_symbol(rt->bmlib, "bm_thread_sync", &rt->thread_sync, &missing) &&
            find_symbol(rt->bmrt, "bmrt_create", &rt->rt_create, &missing) &&
            find_symbol(rt->bmrt, "bmrt_destroy", &rt->rt_destroy, &missing) &&
            find_symbol(rt->bmrt, "bmrt_load_bmodel", &rt->rt_load_bmodel, &missing) &&
            find_symbol(rt->bmrt, "bmrt_get_network_number", &rt->rt_get_network_number,
                        &missing) &&
            find_symbol(rt->bmrt, "bmrt_get_network_names", &rt->rt_get_network_names,
                        &missing) &&
            find_symbol(rt->bmrt, "bmrt_get_network_info", &rt->rt_get_network_info, &missing) &&
            find_symbol(rt->bmrt, "bmrt_launch_tensor_ex", &rt->rt_launch_tensor_ex, &missing);
  if (!ok) *error = "symbol " + missing + " not found in libbmlib/libbmrt from " + lib_dir;
  return ok;
}

// ---------------------------------------------------------------------------------------------
// Number formats the networks use at their edges: f32, f16, bf16 (masks, logits), int32 (ids).

static uint16_t float_to_f16(float value) {
  uint32_t x;
  memcpy(&x, &value, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int exponent = static_cast<int>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mantissa = x & 0x7fffff;
  if (((x >> 23) & 0xff) == 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);  // inf/NaN
  if (exponent >= 31) return sign | 0x7c00;                                          // overflow
  if (exponent <= 0) {                                                               // subnormal
    if (exponent < -10) return sign;
    mantissa |= 0x800000;
    int shift = 14 - exponent;
    uint32_t half = mantissa >> shift;
    uint32_t rest = mantissa & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1))) half++;
    return sign | half;
  }
  uint32_t half = sign | (exponent << 10) | (mantissa >> 13);
  uint32_t rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++;  // round to nearest even
  return half;
}

static float f16_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1f;
  uint32_t mantissa = h & 0x3ff;
  uint32_t x;
  if (exponent == 0x1f) {
    x = sign | 0x7f800000 | (mantissa << 13);
  } else if (exponent != 0) {
    x = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    x = sign;
  } else {  // subnormal: normalise
    exponent = 127 - 15 + 1;
    while (!(mantissa & 0x400)) {
      mantissa <<= 1;
      exponent--;
    }
    x = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
  }
  float value;
  memcpy(&value, &x, 4);
  return value;
}

static uint16_t float_to_bf16(float value) {
  uint32_t x;
  memcpy(&x, &value, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);  // NaN
  x += 0x7fff + ((x >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(x >> 16);
}

static float bf16_to_float(uint16_t b) {
  uint32_t x = static_cast<uint32_t>(b) << 16;
  float value;
  memcpy(&value, &x, 4);
  return value;
}

static const char* dtype_name(bm::DataType t) {
  switch (t) {
    case bm::kFloat32: return "f32";
    case bm::kFloat16: return "f16";
    case bm::kBFloat16: return "bf16";
    case bm::kInt32: return "i32";
    case bm::kUint32: return "u32";
    case bm::kInt16: return "i16";
    case bm::kUint16: return "u16";
    case bm::kInt8: return "i8";
    case bm::kUint8: return "u8";
  }
  return "unknown";
}

// Host floats -> the bytes of a device tensor of type `t` (f32, f16 or bf16).
static bool encode_floats(const std::vector<float>& values, bm::DataType t,
                          std::vector<uint8_t>* bytes) {
  if (t == bm::kFloat32) {
    bytes->resize(values.size() * 4);
    memcpy(bytes->data(), values.data(), bytes->size());
    return true;
  }
  if (t != bm::kFloat16 && t != bm::kBFloat16) return false;
  bytes->resize(values.size() * 2);
  for (size_t i = 0; i < values.size(); i++) {
    uint16_t h = t == bm::kFloat16 ? float_to_f16(values[i]) : float_to_bf16(values[i]);
    memcpy(bytes->data() + 2 * i, &h, 2);
  }
  return true;
}

static std::vector<float> decode_floats(const std::vector<uint8_t>& bytes, bm::DataType t) {
  std::vector<float> values;
  if (t == bm::kFloat32) {
    values.resize(bytes.size() / 4);
    memcpy(values.data(), bytes.data(), values.size() * 4);
  } else {
    values.resize(bytes.size() / 2);
    for (size_t i = 0; i < values.size(); i++) {
      uint16_t h;
      memcpy(&h, bytes.data() + 2 * i, 2);
      values[i] = t == bm::kFloat16 ? f16_to_float(h) : bf16_to_float(h);
    }
  }
  return values;
}

// ---------------------------------------------------------------------------------------------
// 2 + 3. The model: its networks and the device buffers they share.

// A network as its description: names, stages, dtypes and shapes (see 2a below).
struct TensorDesc {
  std::string name;
  bm::DataType dtype = bm::kFloat32;
  bm::Shape shape{};  // in stage 0, the only stage whose place in bm_net_info_t is the same in
                      // every libsophon release (bm_stage_info_t grew from 2 to 4 pointers)
};

struct NetDesc {
  std::string name;
  int stages = 1;
  std::vector<TensorDesc> inputs, outputs;
};

// The two layout families the engine runs. Llama-style (LLM-TPU's Llama2/Qwen/Qwen1.5/Qwen2
// demos, llm_convert): batch-first [1,SEQ,...] tensors, the KV cache filled from row 0, and
// block_cache_N returns only the new K/V row. ChatGLM2/3 (LLM-TPU's models/ChatGLM3):
// sequence-first [SEQ,1,...] tensors, the cache kept right-aligned (newest row last) with a
// left-padded decode mask, and block_cache_N returns the whole cache shifted by one row.
// GPT-BigCode (LLM-TPU's models/WizardCoder): one `embedding` network taking token ids and
// positions, with a [1,1] and a [1,SEQ] stage; blocks without position inputs; one combined K|V
// cache per layer ([1,SEQ,2D], multi-query), filled row by row like Llama's.
enum class Family { kLlama, kChatGlm, kGptBigCode };

static const char* family_name(Family f) {
  switch (f) {
    case Family::kLlama: return "llama";
    case Family::kChatGlm: return "chatglm";
    case Family::kGptBigCode: return "gpt_bigcode";
  }
  return "?";
}

struct Layout {
  Family family = Family::kLlama;
  int layers = 0, seq = 0, hidden = 0;
  int vocab = 0;            // 0 when lm_head gives a token id: the vocabulary is not visible
  bool token_head = false;  // lm_head returns one int32 token id (llm_convert without --do_sample)
  bm::DataType hidden_dtype = bm::kFloat16;
};

struct Net {
  std::string name;
  const bm::NetInfo* info = nullptr;
};

struct Model {
  Runtime* rt = nullptr;
  bm::Handle handle = nullptr;
  void* bmrt = nullptr;

  Net embedding, embedding_cache, lm_head;
  std::vector<Net> blocks, blocks_cache;
  std::vector<NetDesc> descs;  // every network of the bmodel, for `info`
  Layout layout;

  // Device buffers, allocated once. Hidden states ping-pong between two buffers across layers.
  bm::DeviceMem ids, prefill_hidden[2], prefill_positions, prefill_mask;
  bm::DeviceMem token_id, decode_hidden[2], decode_positions, decode_mask;
  bm::DeviceMem new_k, new_v, logits;  // new_k/new_v: Llama's one new row
  std::vector<bm::DeviceMem> k_cache, v_cache;  // one per layer: SEQ rows of [kv_heads, head_dim]
  std::vector<bm::DeviceMem> k_spare, v_spare;  // ChatGLM: where block_cache_N writes the shifted
                                                // cache; it then swaps with k_cache/v_cache
  size_t kv_row_bytes = 0;                      // bytes of one position in a cache
  std::vector<bm::DeviceMem> allocated;         // everything to free at exit
};

static bool parse_int_list(const std::string& text, std::vector<int32_t>* out);

static size_t shape_elements(const bm::Shape& s) {
  size_t n = 1;
  for (int i = 0; i < s.num_dims; i++) n *= static_cast<size_t>(s.dims[i]);
  return n;
}

static std::string shape_text(const bm::Shape& s) {
  std::string text = "[";
  for (int i = 0; i < s.num_dims; i++) text += (i ? "," : "") + std::to_string(s.dims[i]);
  return text + "]";
}

static const bm::Shape& in_shape(const Net& net, int i) { return net.info->stages[0].input_shapes[i]; }
static const bm::Shape& out_shape(const Net& net, int i) {
  return net.info->stages[0].output_shapes[i];
}

static bool allocate(Model* m, size_t bytes, bm::DeviceMem* mem) {
  if (m->rt->malloc_device_byte(m->handle, mem, static_cast<unsigned int>(bytes)) != bm::kSuccess)
    return false;
  m->allocated.push_back(*mem);
  return true;
}

static void free_model(Model* m) {
  // Device memory goes back before the runtime and the handle (bmlib asserts otherwise).
  for (bm::DeviceMem& mem : m->allocated) m->rt->free_device(m->handle, mem);
  m->allocated.clear();
  if (m->bmrt) m->rt->rt_destroy(m->bmrt);
  if (m->handle) m->rt->dev_free(m->handle);
  m->bmrt = nullptr;
  m->handle = nullptr;
}

// A view of `bytes` bytes at `offset` inside a device buffer, without copying.
static bm::DeviceMem slice(bm::DeviceMem mem, size_t offset, size_t bytes) {
  mem.u.device.device_addr += offset;
  mem.size = static_cast<unsigned int>(bytes);
  return mem;
}

// ---------------------------------------------------------------------------------------------
// 2a. The layout, decided from a plain description of the networks (names, stages, dtypes and
// shapes of their inputs and outputs). The same rules judge a loaded bmodel and a listing given
// to --check-layout, so every refusal can be tested without compiling a bmodel per layout.


static const NetDesc* find_desc(const std::vector<NetDesc>& nets, const std::string& name) {
  for (const NetDesc& net : nets)
    if (net.name == name) return &net;
  return nullptr;
}

static bool refuse(std::string* error, const std::string& text) {
  *error = text;
  return false;
}

static std::string tensor_text(const NetDesc& net, bool input, int i) {
  const TensorDesc& t = input ? net.inputs[i] : net.outputs[i];
  return net.name + " " + t.name + " " + shape_text(t.shape);
}

// Layouts LLM-TPU and llm_convert produce that this engine does not run, named so the user
// knows what they have. Checked before the Llama-style rules, whose errors would mislead.
static bool refuse_other_layouts(const std::vector<NetDesc>& nets, std::string* error) {
  for (const NetDesc& net : nets) {
    if (net.name.rfind("vit", 0) == 0 || net.name.find("vision") != std::string::npos)
      return refuse(error, "vision model (network " + net.name +
                               "): not supported by llmtpu's engine; use LLM-TPU's own demo");
  }
  const NetDesc* block = find_desc(nets, "block_0");
  const NetDesc* cache = find_desc(nets, "block_cache_0");
  if (block && cache) {
    // llm_convert --num_device N gives every block its inputs once per chip.
    size_t n = block->inputs.size();
    if (n > 3 && n % 3 == 0 && cache->inputs.size() == n / 3 * 5)
      return refuse(error, "multi-device bmodel (compiled for " + std::to_string(n / 3) +
                               " chips with --num_device " + std::to_string(n / 3) +
                               "): llmtpu's engine runs one chip; convert it with --num_device 1");
    if (n >= 2 && block->inputs[1].shape.num_dims == 2 && block->inputs[1].shape.dims[0] == 3)
      return refuse(error, "vision model (position ids " + shape_text(block->inputs[1].shape) +
                               ", multimodal RoPE): not supported by llmtpu's engine");
  }
  return true;
}

static std::string tensors_text(const std::vector<TensorDesc>& tensors) {
  std::string text;
  for (size_t i = 0; i < tensors.size(); i++)
    text += std::string(i ? "," : "") + tensors[i].name + ":" + dtype_name(tensors[i].dtype) +
            shape_text(tensors[i].shape);
  return text;
}

static bool is_gpt_bigcode(const std::vector<NetDesc>& nets) {
  const NetDesc* embedding = find_desc(nets, "embedding");
  return embedding && !find_desc(nets, "embedding_cache") && embedding->inputs.size() == 2;
}

static bool check_counts(const std::vector<NetDesc>& nets, int layers, size_t block_in,
                         size_t block_out, size_t cache_in, size_t cache_out, size_t embedding_in,
                         bool embedding_cache, std::string* error) {
  std::vector<std::pair<std::string, std::pair<size_t, size_t>>> wanted = {
      {"embedding", {embedding_in, 1}}, {"lm_head", {1, 1}}};
  if (embedding_cache) wanted.push_back({"embedding_cache", {1, 1}});
  for (int i = 0; i < layers; i++) {
    wanted.push_back({"block_" + std::to_string(i), {block_in, block_out}});
    wanted.push_back({"block_cache_" + std::to_string(i), {cache_in, cache_out}});
  }
  for (const auto& [name, counts] : wanted) {
    const NetDesc* net = find_desc(nets, name);
    if (!net) return refuse(error, "network " + name + " is not in the bmodel");
    if (net->inputs.size() != counts.first || net->outputs.size() != counts.second)
      return refuse(error, "network " + name + " has " + std::to_string(net->inputs.size()) +
                               " inputs and " + std::to_string(net->outputs.size()) +
                               " outputs; an LLM-TPU bmodel's has " +
                               std::to_string(counts.first) + " and " +
                               std::to_string(counts.second));
  }
  return true;
}

static bool same_layers(const std::vector<NetDesc>& nets, int layers, std::string* error) {
  const NetDesc& block = *find_desc(nets, "block_0");
  const NetDesc& cache = *find_desc(nets, "block_cache_0");
  for (int i = 1; i < layers; i++) {  // every layer must fit the buffers of layer 0
    for (const auto& [first, other] :
         {std::make_pair(&block, find_desc(nets, "block_" + std::to_string(i))),
          std::make_pair(&cache, find_desc(nets, "block_cache_" + std::to_string(i)))}) {
      for (size_t j = 0; j < first->inputs.size(); j++) {
        if (shape_text(other->inputs[j].shape) != shape_text(first->inputs[j].shape) ||
            other->inputs[j].dtype != first->inputs[j].dtype)
          return refuse(error, "layer " + std::to_string(i) + " has other inputs than layer 0 (" +
                                   tensor_text(*other, true, j) + ")");
      }
    }
  }
  return true;
}

// GPT-BigCode (WizardCoder): embedding(ids, positions) with a [1,SEQ] and a [1,1] stage;
// block_N(hidden [1,SEQ,H], mask) -> hidden, past_layer [1,SEQ,C];
// block_cache_N(hidden [1,1,H], past_cache [1,SEQ,C], mask [1,1,1,SEQ+1]) -> hidden, [1,1,C].
static bool detect_gpt_bigcode(const std::vector<NetDesc>& nets, int layers, Layout* layout,
                               std::string* error) {
  const NetDesc* block0 = find_desc(nets, "block_0");
  const NetDesc* cache0 = find_desc(nets, "block_cache_0");
  if (block0 && cache0 && block0->inputs.size() > 2 && block0->inputs.size() % 2 == 0 &&
      cache0->inputs.size() == block0->inputs.size() / 2 * 3) {
    size_t chips = block0->inputs.size() / 2;
    return refuse(error, "multi-device bmodel (compiled for " + std::to_string(chips) +
                             " chips with --num_device " + std::to_string(chips) +
                             "): llmtpu's engine runs one chip; convert it with --num_device 1");
  }
  if (!check_counts(nets, layers, 2, 2, 3, 2, 2, false, error)) return false;
  const NetDesc& embedding = *find_desc(nets, "embedding");
  const NetDesc& block = *block0;
  const NetDesc& cache = *cache0;
  const NetDesc& lm_head = *find_desc(nets, "lm_head");
  const bm::Shape& states = block.inputs[0].shape;
  if (states.num_dims != 3 || states.dims[0] != 1)
    return refuse(error, tensor_text(block, true, 0) + " is not [1,SEQ,H]");
  const int seq = states.dims[1], hidden = states.dims[2];
  const size_t n = static_cast<size_t>(seq);
  // Its two stages are [1,1] and [1,SEQ] (compile.sh compiles it for both); the engine runs the
  // [1,SEQ] one. Only stage 0's shapes can be read in every libsophon release, so with stage 0
  // at [1,1] the other is taken to be [1,SEQ]; a bmodel without it fails at the first launch.
  const size_t ids = shape_elements(embedding.inputs[0].shape);
  if (embedding.stages != 2 || shape_elements(embedding.inputs[1].shape) != ids ||
      (ids != 1 && ids != n))
    return refuse(error, "GPT-BigCode embedding " + tensors_text(embedding.inputs) + " with " +
                             std::to_string(embedding.stages) +
                             " stages: expected 2 stages, [1,1] and [1,SEQ], for ids and positions");
  const bm::Shape& history = cache.inputs[1].shape;
  if (history.num_dims != 3 || history.dims[0] != 1 || history.dims[1] != seq)
    return refuse(error, tensor_text(cache, true, 1) + " is not [1,SEQ,C] with SEQ " +
                             std::to_string(seq));
  const size_t row = static_cast<size_t>(history.dims[2]);
  struct Expect {
    const TensorDesc* tensor;
    const NetDesc* net;
    size_t elements;
    const char* form;
  };
  const Expect expected[] = {
      {&block.inputs[1], &block, n * n, "[1,1,SEQ,SEQ]"},
      {&block.outputs[1], &block, n * row, "[1,SEQ,C]"},
      {&cache.inputs[0], &cache, static_cast<size_t>(hidden), "[1,1,H]"},
      {&cache.inputs[2], &cache, n + 1, "[1,1,1,SEQ+1]"},
      {&cache.outputs[1], &cache, row, "[1,1,C]"},
      {&lm_head.inputs[0], &lm_head, static_cast<size_t>(hidden), "[1,H]"},
  };
  for (const Expect& e : expected) {
    if (shape_elements(e.tensor->shape) != e.elements)
      return refuse(error, e.net->name + " " + e.tensor->name + " " + shape_text(e.tensor->shape) +
                               " does not fit SEQ " + std::to_string(seq) + ", H " +
                               std::to_string(hidden) + " (expected " + e.form + ")");
  }
  if (embedding.inputs[0].dtype != bm::kInt32 || embedding.inputs[1].dtype != bm::kInt32)
    return refuse(error, "embedding inputs are " + tensors_text(embedding.inputs) +
                             "; this engine feeds int32 token ids and positions");
  if (!same_layers(nets, layers, error)) return false;
  layout->family = Family::kGptBigCode;
  layout->layers = layers;
  layout->seq = seq;
  layout->hidden = hidden;
  layout->hidden_dtype = block.inputs[0].dtype;
  layout->token_head = lm_head.outputs[0].dtype == bm::kInt32;
  layout->vocab = layout->token_head ? 0 : static_cast<int>(shape_elements(lm_head.outputs[0].shape));
  return true;
}

// The Llama-style and ChatGLM layouts (LLM-TPU's demos, llm_convert), and GPT-BigCode's.
static bool detect_layout(const std::vector<NetDesc>& nets, Layout* layout, std::string* error) {
  if (!refuse_other_layouts(nets, error)) return false;
  int layers = 0;
  while (find_desc(nets, "block_cache_" + std::to_string(layers))) layers++;
  if (layers == 0) return refuse(error, "no block_cache_0 network: not an LLM-TPU bmodel");
  if (is_gpt_bigcode(nets)) return detect_gpt_bigcode(nets, layers, layout, error);
  if (!check_counts(nets, layers, 3, 3, 5, 3, 1, true, error)) return false;
  const NetDesc& block = *find_desc(nets, "block_0");
  const NetDesc& cache = *find_desc(nets, "block_cache_0");
  const NetDesc& embedding = *find_desc(nets, "embedding");
  const NetDesc& embedding_cache = *find_desc(nets, "embedding_cache");
  const NetDesc& lm_head = *find_desc(nets, "lm_head");
  const bm::Shape& states = block.inputs[0].shape;
  const bool sequence_first = states.num_dims == 3 && states.dims[0] > 1 && states.dims[1] == 1;
  if (states.num_dims != 3 || (states.dims[0] != 1 && !sequence_first))
    return refuse(error, tensor_text(block, true, 0) + " is neither [1,SEQ,H] nor [SEQ,1,H]");
  const Family family = sequence_first ? Family::kChatGlm : Family::kLlama;
  const int seq = sequence_first ? states.dims[0] : states.dims[1], hidden = states.dims[2];
  const size_t n = static_cast<size_t>(seq);
  // Each input whose size the engine fills, against what SEQ and H make it.
  struct Expect {
    const NetDesc* net;
    int input;
    size_t elements;
    const char* form;
  };
  const Expect expected[] = {
      {&embedding, 0, n, "[1,SEQ]"},
      {&embedding_cache, 0, 1, "[1,1]"},
      {&block, 1, n, "[1,SEQ]"},
      {&block, 2, n * n, "[1,1,SEQ,SEQ]"},
      {&cache, 0, static_cast<size_t>(hidden), "[1,1,H]"},
      {&cache, 1, 1, "[1,1]"},
      {&cache, 2, n + 1, "[1,1,1,SEQ+1]"},
      {&lm_head, 0, static_cast<size_t>(hidden), "[1,H] or [1,1,H]"},
  };
  for (const Expect& e : expected) {
    if (shape_elements(e.net->inputs[e.input].shape) != e.elements)
      return refuse(error, tensor_text(*e.net, true, e.input) + " does not fit SEQ " +
                               std::to_string(seq) + ", H " + std::to_string(hidden) +
                               " (expected " + e.form + ")");
  }
  for (const Expect& e : {expected[0], expected[1], expected[2], expected[5]}) {
    if (e.net->inputs[e.input].dtype != bm::kInt32)
      return refuse(error, tensor_text(*e.net, true, e.input) + " is " +
                               dtype_name(e.net->inputs[e.input].dtype) +
                               "; this engine feeds int32 token ids and positions");
  }
  for (int k = 3; k <= 4; k++) {  // history_k/v: the cache the engine keeps
    const bm::Shape& history = cache.inputs[k].shape;
    const int batch_axis = family == Family::kLlama ? 0 : 1, seq_axis = 1 - batch_axis;
    if (history.num_dims < 3 || history.dims[batch_axis] != 1 || history.dims[seq_axis] != seq)
      return refuse(error, tensor_text(cache, true, k) + " is not " +
                               (family == Family::kLlama ? "[1,SEQ,...]" : "[SEQ,1,...]") +
                               " with SEQ " + std::to_string(seq));
    // What block_N writes (the prefill's K/V) and what block_cache_N gives back: one new row
    // (Llama), or the whole cache shifted (ChatGLM).
    const size_t cache_elements = shape_elements(history);
    const size_t returned = family == Family::kLlama ? cache_elements / n : cache_elements;
    if (shape_elements(block.outputs[k - 2].shape) != cache_elements ||
        shape_elements(cache.outputs[k - 2].shape) != returned)
      return refuse(error, tensor_text(block, false, k - 2) + " / " +
                               tensor_text(cache, false, k - 2) + " do not fit the cache " +
                               shape_text(history) + " of a " + family_name(family) + " layout");
  }
  if (!same_layers(nets, layers, error)) return false;
  layout->family = family;
  layout->layers = layers;
  layout->seq = seq;
  layout->hidden = hidden;
  layout->hidden_dtype = block.inputs[0].dtype;
  layout->token_head = lm_head.outputs[0].dtype == bm::kInt32;
  layout->vocab = layout->token_head ? 0 : static_cast<int>(shape_elements(lm_head.outputs[0].shape));
  return true;
}

// The ready line's description of a layout. A token head reports no vocab: it is not visible.
static std::string layout_fields(const Layout& layout) {
  std::string text = std::string("layout=") + family_name(layout.family) +
                     " layers=" + std::to_string(layout.layers) + " seq=" +
                     std::to_string(layout.seq) + " hidden=" + std::to_string(layout.hidden);
  text += layout.token_head ? " head=token" : " head=logits vocab=" + std::to_string(layout.vocab);
  return text + " dtype=" + dtype_name(layout.hidden_dtype);
}

// Text form of a network, one line: `net NAME stages=N inputs=name:dtype[shape],... outputs=...`.
// `info` prints it and --check-layout reads it back.
static std::string describe_net(const NetDesc& net) {
  return "net " + net.name + " stages=" + std::to_string(net.stages) + " inputs=" +
         tensors_text(net.inputs) + " outputs=" + tensors_text(net.outputs);
}

static bool parse_dtype(const std::string& text, bm::DataType* t) {
  for (bm::DataType candidate : {bm::kFloat32, bm::kFloat16, bm::kBFloat16, bm::kInt32, bm::kUint32,
                                 bm::kInt16, bm::kUint16, bm::kInt8, bm::kUint8}) {
    if (text == dtype_name(candidate)) {
      *t = candidate;
      return true;
    }
  }
  return false;
}

// `name:dtype[d0,d1,...],name:dtype[...]` (an empty list is allowed).
static bool parse_tensors(const std::string& text, std::vector<TensorDesc>* out) {
  size_t at = 0;
  while (at < text.size()) {
    size_t colon = text.find(':', at), open = text.find('[', at), close = text.find(']', at);
    if (colon == std::string::npos || open == std::string::npos || close == std::string::npos ||
        !(at < colon && colon < open && open < close))
      return false;
    TensorDesc t;
    t.name = text.substr(at, colon - at);
    if (!parse_dtype(text.substr(colon + 1, open - colon - 1), &t.dtype)) return false;
    std::vector<int32_t> dims;
    std::string inside = text.substr(open + 1, close - open - 1);
    if (!inside.empty() && !parse_int_list(inside, &dims)) return false;
    if (dims.size() > static_cast<size_t>(bm::kMaxDims)) return false;
    t.shape.num_dims = static_cast<int>(dims.size());
    for (size_t i = 0; i < dims.size(); i++) {
      if (dims[i] < 0) return false;
      t.shape.dims[i] = dims[i];
    }
    out->push_back(t);
    at = close + 1;
    if (at < text.size() && text[at++] != ',') return false;
  }
  return true;
}

static bool parse_net_line(const std::string& line, NetDesc* net) {
  std::istringstream words(line);
  std::string word;
  if (!(words >> word) || word != "net" || !(words >> net->name)) return false;
  bool has_inputs = false, has_outputs = false;
  while (words >> word) {
    size_t eq = word.find('=');
    std::string key = word.substr(0, eq), value = eq == std::string::npos ? "" : word.substr(eq + 1);
    if (key == "stages") {
      char* end = nullptr;
      net->stages = static_cast<int>(strtol(value.c_str(), &end, 10));
      if (value.empty() || *end != '\0' || net->stages < 1) return false;
    } else if (key == "inputs") {
      has_inputs = parse_tensors(value, &net->inputs);
      if (!has_inputs) return false;
    } else if (key == "outputs") {
      has_outputs = parse_tensors(value, &net->outputs);
      if (!has_outputs) return false;
    } else {
      return false;
    }
  }
  return has_inputs && has_outputs;
}

static bool find_net(Model* m, const std::string& name, Net* net) {
  net->name = name;
  net->info = m->rt->rt_get_network_info(m->bmrt, name.c_str());
  return net->info != nullptr;
}

// The description of one loaded network (its first stage's shapes: the largest, for the
// dynamic networks LLM-TPU compiles).
static NetDesc net_desc(const bm::NetInfo* info, const std::string& name) {
  NetDesc net;
  net.name = name;
  net.stages = info->stage_num;
  for (int i = 0; i < info->input_num; i++)
    net.inputs.push_back({info->input_names[i], info->input_dtypes[i],
                          info->stage_num ? info->stages[0].input_shapes[i] : bm::Shape{}});
  for (int i = 0; i < info->output_num; i++)
    net.outputs.push_back({info->output_names[i], info->output_dtypes[i],
                           info->stage_num ? info->stages[0].output_shapes[i] : bm::Shape{}});
  return net;
}

// Describe every network, judge the layout, then keep the networks the engine runs.
static bool inspect_model(Model* m, std::string* error) {
  const char** names = nullptr;
  int count = m->rt->rt_get_network_number(m->bmrt);
  m->rt->rt_get_network_names(m->bmrt, &names);
  std::vector<std::string> net_names(names, names + count);
  free(names);
  for (const std::string& name : net_names) {
    const bm::NetInfo* info = m->rt->rt_get_network_info(m->bmrt, name.c_str());
    if (!info) return refuse(error, "bmruntime lists network " + name + " but gives no info on it");
    m->descs.push_back(net_desc(info, name));
  }
  if (!detect_layout(m->descs, &m->layout, error)) return false;
  m->blocks.resize(m->layout.layers);
  m->blocks_cache.resize(m->layout.layers);
  const bool bigcode = m->layout.family == Family::kGptBigCode;  // one embedding, two stages
  bool found = find_net(m, "embedding", &m->embedding) &&
               (bigcode || find_net(m, "embedding_cache", &m->embedding_cache)) &&
               find_net(m, "lm_head", &m->lm_head);
  for (int i = 0; found && i < m->layout.layers; i++)
    found = find_net(m, "block_" + std::to_string(i), &m->blocks[i]) &&
            find_net(m, "block_cache_" + std::to_string(i), &m->blocks_cache[i]);
  if (!found) return refuse(error, "bmruntime lost a network it listed");
  m->kv_row_bytes = m->blocks_cache[0].info->max_input_bytes[bigcode ? 1 : 3] / m->layout.seq;
  return true;
}

static bool upload(Model* m, bm::DeviceMem dst, const void* data, size_t bytes, std::string* error);

static bool allocate_buffers(Model* m, std::string* error) {
  const bm::NetInfo* block = m->blocks[0].info;
  const bm::NetInfo* cache = m->blocks_cache[0].info;
  const bool chatglm = m->layout.family == Family::kChatGlm;
  const bool bigcode = m->layout.family == Family::kGptBigCode;
  // Where each family's networks take positions, masks and the cache (GPT-BigCode's embedding
  // takes the positions; its blocks take none).
  const bm::NetInfo* position_net = bigcode ? m->embedding.info : block;
  const size_t prefill_positions = position_net->max_input_bytes[1];
  const size_t prefill_mask = block->max_input_bytes[bigcode ? 1 : 2];
  const size_t decode_mask = cache->max_input_bytes[2];
  const int k_input = bigcode ? 1 : 3;
  bool ok = allocate(m, m->embedding.info->max_input_bytes[0], &m->ids) &&
            allocate(m, block->max_input_bytes[0], &m->prefill_hidden[0]) &&
            allocate(m, block->max_input_bytes[0], &m->prefill_hidden[1]) &&
            allocate(m, prefill_positions, &m->prefill_positions) &&
            allocate(m, prefill_mask, &m->prefill_mask) &&
            allocate(m, sizeof(int32_t), &m->token_id) &&
            allocate(m, cache->max_input_bytes[0], &m->decode_hidden[0]) &&
            allocate(m, cache->max_input_bytes[0], &m->decode_hidden[1]) &&
            allocate(m, sizeof(int32_t), &m->decode_positions) &&
            allocate(m, decode_mask, &m->decode_mask) &&
            allocate(m, m->lm_head.info->max_output_bytes[0], &m->logits);
  if (ok && !chatglm)
    ok = allocate(m, cache->max_output_bytes[1], &m->new_k) &&
         (bigcode || allocate(m, cache->max_output_bytes[2], &m->new_v));
  const int copies = chatglm ? 2 : 1;
  const bool has_v = !bigcode;  // GPT-BigCode keeps K and V in one cache tensor
  m->k_cache.resize(m->layout.layers);
  m->v_cache.resize(has_v ? m->layout.layers : 0);
  m->k_spare.resize(chatglm ? m->layout.layers : 0);
  m->v_spare.resize(chatglm ? m->layout.layers : 0);
  // ChatGLM's cache is zeroed once: its rows left of the prompt are read by every step, masked,
  // and must still be finite numbers (0 * NaN is NaN). The other families fill rows from 0.
  std::vector<uint8_t> zeros(chatglm ? cache->max_input_bytes[k_input] : 0, 0);
  const size_t bytes = cache->max_input_bytes[k_input];
  for (int i = 0; ok && i < m->layout.layers; i++) {
    for (int c = 0; ok && c < copies; c++) {
      bm::DeviceMem* k = c == 0 ? &m->k_cache[i] : &m->k_spare[i];
      ok = allocate(m, bytes, k) && (!chatglm || upload(m, *k, zeros.data(), bytes, error));
      if (ok && has_v) {
        bm::DeviceMem* v = c == 0 ? &m->v_cache[i] : &m->v_spare[i];
        ok = allocate(m, bytes, v) && (!chatglm || upload(m, *v, zeros.data(), bytes, error));
      }
    }
  }
  if (!ok) *error = "cannot allocate device memory for the hidden states and KV cache";
  return ok;
}

// ---------------------------------------------------------------------------------------------
// 4. Running the networks.

static bm::Tensor tensor(const Net& net, bool is_input, int i, bm::DeviceMem mem,
                         const bm::Shape* shape) {
  bm::Tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = is_input ? net.info->input_dtypes[i] : net.info->output_dtypes[i];
  t.shape = shape ? *shape : is_input ? in_shape(net, i) : out_shape(net, i);
  t.device_mem = mem;
  return t;
}

// Launch one network on the given buffers and wait for it, with stage 0's shapes or, for a
// net compiled for several, the shapes given (bmruntime runs the stage that has them).
static bool launch(Model* m, const Net& net, const std::vector<bm::DeviceMem>& inputs,
                   const std::vector<bm::DeviceMem>& outputs, std::string* error,
                   const std::vector<bm::Shape>& in_shapes = {},
                   const std::vector<bm::Shape>& out_shapes = {}) {
  std::vector<bm::Tensor> in, out;
  for (size_t i = 0; i < inputs.size(); i++)
    in.push_back(tensor(net, true, i, inputs[i], in_shapes.empty() ? nullptr : &in_shapes[i]));
  for (size_t i = 0; i < outputs.size(); i++)
    out.push_back(tensor(net, false, i, outputs[i], out_shapes.empty() ? nullptr : &out_shapes[i]));
  bool ok = m->rt->rt_launch_tensor_ex(m->bmrt, net.name.c_str(), in.data(),
                                       static_cast<int>(in.size()), out.data(),
                                       static_cast<int>(out.size()), true, false);
  if (ok) ok = m->rt->thread_sync(m->handle) == bm::kSuccess;
  if (!ok) *error = "running network " + net.name + " failed";
  return ok;
}

static bool upload(Model* m, bm::DeviceMem dst, const void* data, size_t bytes,
                   std::string* error) {
  if (m->rt->memcpy_s2d_partial(m->handle, dst, const_cast<void*>(data),
                                static_cast<unsigned int>(bytes)) == bm::kSuccess)
    return true;
  *error = "copy to device failed";
  return false;
}

static bool upload_floats(Model* m, bm::DeviceMem dst, const std::vector<float>& values,
                          bm::DataType t, std::string* error) {
  std::vector<uint8_t> bytes;
  if (!encode_floats(values, t, &bytes)) {
    *error = std::string("attention mask of type ") + dtype_name(t) + " is not supported";
    return false;
  }
  return upload(m, dst, bytes.data(), bytes.size(), error);
}

// Read the logits back (float lm_heads only; a token head's id is read by read_token_id).
static bool read_logits(Model* m, std::vector<float>* logits, std::string* error) {
  bm::DataType t = m->lm_head.info->output_dtypes[0];
  size_t bytes = m->lm_head.info->max_output_bytes[0];
  std::vector<uint8_t> raw(bytes);
  if (m->rt->memcpy_d2s_partial(m->handle, raw.data(), m->logits,
                                static_cast<unsigned int>(bytes)) != bm::kSuccess) {
    *error = "copy of logits from device failed";
    return false;
  }
  if (t != bm::kFloat32 && t != bm::kFloat16 && t != bm::kBFloat16) {
    *error = std::string("lm_head output of type ") + dtype_name(t) + " is not supported";
    return false;
  }
  *logits = decode_floats(raw, t);
  return true;
}

// llm_convert's default lm_head ends in TopK and returns the chosen token id itself.
static bool read_token_id(Model* m, int32_t* id, std::string* error) {
  if (m->rt->memcpy_d2s_partial(m->handle, id, m->logits, 4) == bm::kSuccess) return true;
  *error = "copy of the token id from device failed";
  return false;
}

static bool copy_rows(Model* m, bm::DeviceMem dst, size_t dst_row, bm::DeviceMem src, size_t src_row,
                      size_t rows, std::string* error) {
  size_t row = m->kv_row_bytes;
  if (m->rt->memcpy_d2d_byte(m->handle, dst, dst_row * row, src, src_row * row, rows * row) ==
      bm::kSuccess)
    return true;
  *error = "copy of K/V rows inside the cache failed";
  return false;
}

// Prefill: the whole prompt through embedding and every block_N, which gives the K/V of
// positions 0..n-1; leaves the last prompt position's logits in m->logits.
// Llama: block_N writes them straight into the cache (rows 0..n-1).
// ChatGLM: block_N writes them into the spare copy; they are moved to the cache's last n rows.
static bool prefill(Model* m, const std::vector<int32_t>& prompt, std::string* error) {
  const int seq = m->layout.seq, n = static_cast<int>(prompt.size());
  const bool chatglm = m->layout.family == Family::kChatGlm;
  std::vector<int32_t> ids(seq, 0), positions(seq, 0);
  std::vector<float> mask(static_cast<size_t>(seq) * seq, kMaskValue);
  for (int i = 0; i < n; i++) {
    ids[i] = prompt[i];
    positions[i] = i;
    for (int j = 0; j <= i; j++) mask[static_cast<size_t>(i) * seq + j] = 0.0f;  // causal
  }
  const Net& block0 = m->blocks[0];
  if (!upload(m, m->ids, ids.data(), ids.size() * 4, error) ||
      !upload(m, m->prefill_positions, positions.data(), positions.size() * 4, error) ||
      !upload_floats(m, m->prefill_mask, mask, block0.info->input_dtypes[2], error) ||
      !launch(m, m->embedding, {m->ids}, {m->prefill_hidden[0]}, error))
    return false;
  int current = 0;
  for (int i = 0; i < m->layout.layers; i++) {
    bm::DeviceMem k = chatglm ? m->k_spare[i] : m->k_cache[i];
    bm::DeviceMem v = chatglm ? m->v_spare[i] : m->v_cache[i];
    if (!launch(m, m->blocks[i], {m->prefill_hidden[current], m->prefill_positions, m->prefill_mask},
                {m->prefill_hidden[1 - current], k, v}, error))
      return false;
    if (chatglm && (!copy_rows(m, m->k_cache[i], seq - n, k, 0, n, error) ||
                    !copy_rows(m, m->v_cache[i], seq - n, v, 0, n, error)))
      return false;
    current = 1 - current;
  }
  size_t row_bytes = m->lm_head.info->max_input_bytes[0];  // one position's hidden state
  bm::DeviceMem last_row = slice(m->prefill_hidden[current], (n - 1) * row_bytes, row_bytes);
  return launch(m, m->lm_head, {last_row}, {m->logits}, error);
}

// Decode: one token at position `position` through embedding_cache and every block_cache_N,
// which attend to the `position` cached rows plus the token itself.
// Llama: the cached rows are 0..position-1; the token's K/V row is copied to row `position`.
// ChatGLM: they are the last `position` rows; block_cache_N writes the whole cache shifted by
// one row (the token's K/V last) into the spare copy, which then becomes the cache.
static bool decode(Model* m, int32_t token, int position, std::string* error) {
  const int seq = m->layout.seq;
  const bool chatglm = m->layout.family == Family::kChatGlm;
  std::vector<float> mask(seq + 1, kMaskValue);
  for (int j = 0; j < position; j++) mask[chatglm ? seq - position + j : j] = 0.0f;
  mask[seq] = 0.0f;  // the last slot is the new token itself
  const Net& cache0 = m->blocks_cache[0];
  int32_t position_id = position;
  if (!upload(m, m->token_id, &token, 4, error) ||
      !upload(m, m->decode_positions, &position_id, 4, error) ||
      !upload_floats(m, m->decode_mask, mask, cache0.info->input_dtypes[2], error) ||
      !launch(m, m->embedding_cache, {m->token_id}, {m->decode_hidden[0]}, error))
    return false;
  int current = 0;
  for (int i = 0; i < m->layout.layers; i++) {
    bm::DeviceMem k_out = chatglm ? m->k_spare[i] : m->new_k;
    bm::DeviceMem v_out = chatglm ? m->v_spare[i] : m->new_v;
    if (!launch(m, m->blocks_cache[i],
                {m->decode_hidden[current], m->decode_positions, m->decode_mask, m->k_cache[i],
                 m->v_cache[i]},
                {m->decode_hidden[1 - current], k_out, v_out}, error))
      return false;
    if (chatglm) {
      std::swap(m->k_cache[i], m->k_spare[i]);
      std::swap(m->v_cache[i], m->v_spare[i]);
    } else if (!copy_rows(m, m->k_cache[i], position, k_out, 0, 1, error) ||
               !copy_rows(m, m->v_cache[i], position, v_out, 0, 1, error)) {
      return false;
    }
    current = 1 - current;
  }
  return launch(m, m->lm_head, {m->decode_hidden[current]}, {m->logits}, error);
}

// GPT-BigCode: the same steps with its own networks. The embedding adds learned positions
// (its [1,SEQ] stage for the prompt, its [1,1] stage for a token); each layer's one K|V cache
// is filled from row 0 like Llama's.
// The embedding's [1,SEQ] stage ([1,SEQ] ids and positions -> [1,SEQ,H]). Decode uses it too,
// for row 0: on the cmodel (tpu-mlir 1.30.2) the [1,1] stage, launched on the engine's buffers,
// read zeros instead of its inputs (cause not found); one gather of SEQ rows costs little.
static bool launch_embedding(Model* m, bm::DeviceMem hidden, std::string* error) {
  bm::Shape ids{}, out{};
  ids.num_dims = 2;
  ids.dims[0] = 1;
  ids.dims[1] = m->layout.seq;
  out.num_dims = 3;
  out.dims[0] = 1;
  out.dims[1] = m->layout.seq;
  out.dims[2] = m->layout.hidden;
  return launch(m, m->embedding, {m->ids, m->prefill_positions}, {hidden}, error, {ids, ids}, {out});
}

static bool prefill_gpt_bigcode(Model* m, const std::vector<int32_t>& prompt, std::string* error) {
  const int seq = m->layout.seq, n = static_cast<int>(prompt.size());
  std::vector<int32_t> ids(seq, 0), positions(seq, 0);
  std::vector<float> mask(static_cast<size_t>(seq) * seq, kMaskValue);
  for (int i = 0; i < n; i++) {
    ids[i] = prompt[i];
    positions[i] = i;
    for (int j = 0; j <= i; j++) mask[static_cast<size_t>(i) * seq + j] = 0.0f;  // causal
  }
  if (!upload(m, m->ids, ids.data(), ids.size() * 4, error) ||
      !upload(m, m->prefill_positions, positions.data(), positions.size() * 4, error) ||
      !upload_floats(m, m->prefill_mask, mask, m->blocks[0].info->input_dtypes[1], error) ||
      !launch_embedding(m, m->prefill_hidden[0], error))
    return false;
  int current = 0;
  for (int i = 0; i < m->layout.layers; i++) {
    if (!launch(m, m->blocks[i], {m->prefill_hidden[current], m->prefill_mask},
                {m->prefill_hidden[1 - current], m->k_cache[i]}, error))
      return false;
    current = 1 - current;
  }
  size_t row_bytes = m->lm_head.info->max_input_bytes[0];
  bm::DeviceMem last_row = slice(m->prefill_hidden[current], (n - 1) * row_bytes, row_bytes);
  return launch(m, m->lm_head, {last_row}, {m->logits}, error);
}

static bool decode_gpt_bigcode(Model* m, int32_t token, int position, std::string* error) {
  const int seq = m->layout.seq;
  std::vector<float> mask(seq + 1, kMaskValue);
  for (int j = 0; j < position; j++) mask[j] = 0.0f;
  mask[seq] = 0.0f;
  int32_t position_id = position;
  size_t row_bytes = m->blocks_cache[0].info->max_input_bytes[0];  // one position's hidden
  if (!upload(m, m->ids, &token, 4, error) ||
      !upload(m, m->prefill_positions, &position_id, 4, error) ||
      !upload_floats(m, m->decode_mask, mask, m->blocks_cache[0].info->input_dtypes[2], error) ||
      !launch_embedding(m, m->prefill_hidden[0], error))
    return false;
  if (m->rt->memcpy_d2d_byte(m->handle, m->decode_hidden[0], 0, m->prefill_hidden[0], 0,
                             row_bytes) != bm::kSuccess) {
    *error = "copy of the token's embedding failed";
    return false;
  }
  int current = 0;
  for (int i = 0; i < m->layout.layers; i++) {
    if (!launch(m, m->blocks_cache[i], {m->decode_hidden[current], m->k_cache[i], m->decode_mask},
                {m->decode_hidden[1 - current], m->new_k}, error) ||
        !copy_rows(m, m->k_cache[i], position, m->new_k, 0, 1, error))
      return false;
    current = 1 - current;
  }
  return launch(m, m->lm_head, {m->decode_hidden[current]}, {m->logits}, error);
}

// ---------------------------------------------------------------------------------------------
// Choosing the next token.

struct Sampling {
  float temperature = 0.0f;  // 0: greedy
  float top_p = 1.0f;
  std::mt19937_64 rng;
};

struct Choice {
  int token = 0;
  float gap = 0.0f;   // top-1 minus top-2 logit
  int nonfinite = 0;  // NaN/inf logits seen
};

static Choice choose(const std::vector<float>& logits, Sampling* sampling) {
  Choice c;
  int best = -1, second = -1;
  for (int i = 0; i < static_cast<int>(logits.size()); i++) {
    if (!std::isfinite(logits[i])) {
      c.nonfinite++;
      continue;
    }
    if (best < 0 || logits[i] > logits[best]) {
      second = best;
      best = i;
    } else if (second < 0 || logits[i] > logits[second]) {
      second = i;
    }
  }
  c.token = std::max(best, 0);
  c.gap = (best >= 0 && second >= 0) ? logits[best] - logits[second] : 0.0f;
  if (sampling->temperature <= 0.0f || best < 0) return c;

  // Temperature, then keep the smallest set of most likely tokens whose mass reaches top_p.
  std::vector<std::pair<float, int>> probs;
  for (int i = 0; i < static_cast<int>(logits.size()); i++) {
    if (std::isfinite(logits[i]))
      probs.push_back({std::exp((logits[i] - logits[best]) / sampling->temperature), i});
  }
  std::sort(probs.begin(), probs.end(), [](auto& a, auto& b) { return a.first > b.first; });
  float total = 0.0f;
  for (auto& p : probs) total += p.first;
  float kept = 0.0f;
  size_t keep = 0;
  while (keep < probs.size() && (keep == 0 || kept < sampling->top_p * total)) {
    kept += probs[keep].first;
    keep++;
  }
  std::uniform_real_distribution<float> uniform(0.0f, kept);
  float r = uniform(sampling->rng);
  for (size_t i = 0; i < keep; i++) {
    r -= probs[i].first;
    if (r <= 0.0f) {
      c.token = probs[i].second;
      return c;
    }
  }
  c.token = probs[keep - 1].second;
  return c;
}

// The next token from what lm_head left on the device. A token head has no logits, so its
// choice has no gap and no count of non-finite values (`known` is false).
static bool next_choice(Model* m, Sampling* sampling, Choice* c, bool* known, std::string* error) {
  *known = !m->layout.token_head;
  if (m->layout.token_head) {
    *c = Choice();
    return read_token_id(m, &c->token, error);
  }
  std::vector<float> logits;
  if (!read_logits(m, &logits, error)) return false;
  *c = choose(logits, sampling);
  return true;
}

static void reply_token(const Choice& c, bool known, double ms) {
  if (known)
    reply("token %d ms=%.1f gap=%.4f nonfinite=%d", c.token, ms, c.gap, c.nonfinite);
  else
    reply("token %d ms=%.1f", c.token, ms);
}

// ---------------------------------------------------------------------------------------------
// The request loop.

struct Request {
  std::vector<int32_t> ids;
  int max_new = 16;
  std::vector<int32_t> stop;
  float temperature = 0.0f, top_p = 1.0f;
  uint64_t seed = 0;
};

static bool parse_int_list(const std::string& text, std::vector<int32_t>* out) {
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long value = strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || value < INT32_MIN || value > INT32_MAX) return false;
    out->push_back(static_cast<int32_t>(value));
  }
  return true;
}

static bool parse_request(std::istringstream& words, Request* r, std::string* error) {
  std::string word;
  while (words >> word) {
    size_t eq = word.find('=');
    std::string key = word.substr(0, eq), value = eq == std::string::npos ? "" : word.substr(eq + 1);
    char* end = nullptr;
    bool ok = !value.empty();
    if (key == "ids") {
      ok = ok && parse_int_list(value, &r->ids);
    } else if (key == "stop") {
      ok = ok && parse_int_list(value, &r->stop);
    } else if (key == "max_new") {
      r->max_new = static_cast<int>(strtol(value.c_str(), &end, 10));
      ok = ok && *end == '\0' && r->max_new >= 1;
    } else if (key == "temperature") {
      r->temperature = strtof(value.c_str(), &end);
      ok = ok && *end == '\0' && r->temperature >= 0.0f;
    } else if (key == "top_p") {
      r->top_p = strtof(value.c_str(), &end);
      ok = ok && *end == '\0' && r->top_p > 0.0f && r->top_p <= 1.0f;
    } else if (key == "seed") {
      r->seed = strtoull(value.c_str(), &end, 10);
      ok = ok && *end == '\0';
    } else {
      *error = "unknown field " + key + " (ids, max_new, temperature, top_p, seed, stop)";
      return false;
    }
    if (!ok) {
      *error = "bad value in " + word;
      return false;
    }
  }
  if (r->ids.empty()) {
    *error = "ids=... is required";
    return false;
  }
  return true;
}

// Returns false only on a device failure (the engine then exits).
static bool generate(Model* m, const Request& r) {
  const int n = static_cast<int>(r.ids.size());
  if (n > m->layout.seq) {
    reply("error bad_request prompt has %d tokens; this bmodel holds at most SEQ=%d", n, m->layout.seq);
    return true;
  }
  for (int32_t id : r.ids) {
    if (id < 0 || (m->layout.vocab > 0 && id >= m->layout.vocab)) {
      reply("error bad_request token id %d is outside the vocabulary 0..%d", id, m->layout.vocab - 1);
      return true;
    }
  }
  if (m->layout.token_head && r.temperature > 0.0f) {
    reply("error bad_request this bmodel's lm_head returns a token id, not logits (llm_convert "
          "without --do_sample), so it cannot sample: use temperature=0, or a bmodel converted "
          "with --do_sample");
    return true;
  }
  Sampling sampling;
  sampling.temperature = r.temperature;
  sampling.top_p = r.top_p;
  sampling.rng.seed(r.seed);

  std::string error;
  Choice c;
  bool known = false;
  auto start = std::chrono::steady_clock::now();
  const bool bigcode = m->layout.family == Family::kGptBigCode;
  bool prefilled = bigcode ? prefill_gpt_bigcode(m, r.ids, &error) : prefill(m, r.ids, &error);
  if (!prefilled || !next_choice(m, &sampling, &c, &known, &error)) {
    reply("error device %s", error.c_str());
    return false;
  }
  double prefill_ms = elapsed_ms(start);
  reply("prefill ms=%.1f tokens=%d", prefill_ms, n);

  auto decode_start = std::chrono::steady_clock::now();
  auto step_start = start;
  int produced = 0, position = n;
  const char* reason = "length";
  while (true) {
    reply_token(c, known, elapsed_ms(step_start));
    produced++;
    if (std::find(r.stop.begin(), r.stop.end(), c.token) != r.stop.end()) {
      reason = "stop";
      break;
    }
    if (produced >= r.max_new) break;
    if (position >= m->layout.seq) {
      reason = "seq_full";
      break;
    }
    step_start = std::chrono::steady_clock::now();
    bool decoded = bigcode ? decode_gpt_bigcode(m, c.token, position, &error)
                           : decode(m, c.token, position, &error);
    if (!decoded || !next_choice(m, &sampling, &c, &known, &error)) {
      reply("error device %s", error.c_str());
      return false;
    }
    position++;
  }
  reply("done tokens=%d reason=%s prefill_ms=%.1f decode_ms=%.1f", produced, reason, prefill_ms,
        produced > 1 ? elapsed_ms(decode_start) : 0.0);
  return true;
}

static void describe(Model* m) {
  for (const NetDesc& net : m->descs) reply("%s", describe_net(net).c_str());
  reply("end");
}

static int serve(Model* m) {
  std::string line;
  char buffer[1 << 16];
  while (fgets(buffer, sizeof buffer, stdin)) {
    line = buffer;
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    std::istringstream words(line);
    std::string command;
    if (!(words >> command)) continue;
    if (command == "quit") return kExitOk;
    if (command == "info") {
      describe(m);
    } else if (command == "generate") {
      Request request;
      std::string error;
      if (!parse_request(words, &request, &error)) {
        reply("error bad_request %s", error.c_str());
      } else if (!generate(m, request)) {
        return kExitDevice;
      }
    } else {
      reply("error bad_request unknown command %s (generate, info, quit)", command.c_str());
    }
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------

// --check-layout FILE: judge a listing of networks (the lines `info` prints) without a device.
static int check_layout(const std::string& path) {
  FILE* in = fopen(path.c_str(), "r");
  if (!in) {
    reply("error bad_model cannot read %s: %s", path.c_str(), strerror(errno));
    return kExitBadModel;
  }
  std::vector<NetDesc> nets;
  char buffer[1 << 16];
  int number = 0;
  bool ok = true;
  while (ok && fgets(buffer, sizeof buffer, in)) {
    number++;
    std::string line = buffer;
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (line.empty() || line[0] == '#' || line == "end") continue;
    NetDesc net;
    ok = parse_net_line(line, &net);
    if (ok) nets.push_back(net);
  }
  fclose(in);
  if (!ok) {
    reply("error bad_model %s line %d is not `net NAME [stages=N] inputs=name:dtype[dims],... "
          "outputs=...`", path.c_str(), number);
    return kExitBadModel;
  }
  Layout layout;
  std::string error;
  if (!detect_layout(nets, &layout, &error)) {
    reply("error bad_model %s: %s", path.c_str(), error.c_str());
    return kExitBadModel;
  }
  reply("layout %s", layout_fields(layout).c_str());
  return kExitOk;
}

static void usage(FILE* to) {
  fprintf(to,
          "usage: llmtpu-engine --model FILE.bmodel [--lib-dir DIR] [--device N]\n"
          "       llmtpu-engine --check-layout NETWORKS.txt   (judge a listing of `info` lines)\n"
          "       llmtpu-engine --version\n"
          "Runs an LLM-TPU bmodel; requests on stdin, answers on stdout (see csrc/README.md).\n"
          "--lib-dir: folder with libbmrt.so and libbmlib.so (default $LLMTPU_BMRT_LIB_DIR,\n"
          "           else %s)\n",
          kDefaultLibDir);
}

int main(int argc, char** argv) {
  std::string model_path, lib_dir;
  int device = 0;
  for (int i = 1; i < argc; i++) {
    std::string arg = argv[i];
    bool has_value = i + 1 < argc;
    if (arg == "--version") {
      printf("llmtpu-engine %s protocol=%d\n", LLMTPU_ENGINE_VERSION, kProtocol);
      return kExitOk;
    } else if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return kExitOk;
    } else if (arg == "--check-layout" && has_value) {
      return check_layout(argv[++i]);
    } else if (arg == "--model" && has_value) {
      model_path = argv[++i];
    } else if (arg == "--lib-dir" && has_value) {
      lib_dir = argv[++i];
    } else if (arg == "--device" && has_value) {
      device = atoi(argv[++i]);
    } else {
      usage(stderr);
      return kExitUsage;
    }
  }
  if (model_path.empty()) {
    usage(stderr);
    return kExitUsage;
  }
  if (lib_dir.empty()) {
    const char* from_env = getenv("LLMTPU_BMRT_LIB_DIR");
    lib_dir = from_env && *from_env ? from_env : kDefaultLibDir;
  }
  separate_protocol_from_library_output();

  Runtime rt;
  std::string error;
  if (!load_runtime(lib_dir, &rt, &error)) {
    reply("error no_runtime bmruntime not found in %s (%s); give --lib-dir or "
          "LLMTPU_BMRT_LIB_DIR the folder holding libbmrt.so and libbmlib.so",
          lib_dir.c_str(), error.c_str());
    return kExitNoRuntime;
  }
  if (access(model_path.c_str(), R_OK) != 0) {
    reply("error bad_model cannot read %s: %s", model_path.c_str(), strerror(errno));
    return kExitBadModel;
  }

  install_crash_reply();
  set_crash_reply(kExitDevice, "error device bmlib crashed while opening TPU device " +
                                   std::to_string(device));
  auto start = std::chrono::steady_clock::now();
  Model model;
  model.rt = &rt;
  if (rt.dev_request(&model.handle, device) != bm::kSuccess) {
    model.handle = nullptr;
    reply("error device cannot open TPU device %d (bm_dev_request failed)", device);
    return kExitDevice;
  }
  model.bmrt = rt.rt_create(model.handle);
  if (!model.bmrt) {
    free_model(&model);
    reply("error device bmrt_create failed on device %d", device);
    return kExitDevice;
  }
  set_crash_reply(kExitBadModel, "error bad_model bmruntime crashed while loading " + model_path +
                                     " (a corrupt bmodel; see the engine's stderr)");
  if (!rt.rt_load_bmodel(model.bmrt, model_path.c_str())) {
    free_model(&model);
    reply("error bad_model bmruntime could not load %s (corrupt, or built for another chip)",
          model_path.c_str());
    return kExitBadModel;
  }
  if (!inspect_model(&model, &error)) {
    free_model(&model);
    reply("error bad_model %s: %s", model_path.c_str(), error.c_str());
    return kExitBadModel;
  }
  if (!allocate_buffers(&model, &error)) {
    free_model(&model);
    reply("error device %s", error.c_str());
    return kExitDevice;
  }
  reply("ready protocol=%d %s load_ms=%.1f", kProtocol, layout_fields(model.layout).c_str(),
        elapsed_ms(start));
  set_crash_reply(kExitDevice, "error device bmruntime crashed while running the model (see the "
                               "engine's stderr)");
  int code = serve(&model);
  free_model(&model);
  return code;
}

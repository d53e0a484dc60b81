// llmtpu-engine: run an LLM-TPU-format bmodel on a Sophgo BM1684X (or its cmodel simulator).
//
// One path from bmodel to tokens, read top to bottom:
//   1. find bmruntime at run time (dlopen libbmlib + libbmrt from --lib-dir)
//   2. load the bmodel; find the networks embedding, embedding_cache, block_N, block_cache_N,
//      lm_head; the layer count is how many block_cache_N there are
//   3. allocate device buffers once: hidden states, masks, positions, and the KV cache
//   4. answer requests on stdin, one line each (see PROTOCOL below): prefill the prompt through
//      every block_N (which writes the KV cache), then decode one token at a time through
//      block_cache_N (which reads the cache; the new K/V row is copied into it)
//
// PROTOCOL (protocol 1). stdout carries only protocol lines; anything the libraries print goes
// to stderr. On start the engine prints either
//   ready protocol=1 layers=L seq=S hidden=H vocab=V dtype=f16 load_ms=X     (vocab 0: unknown)
// or one `error KIND message` line and exits non-zero. Then, per request line on stdin:
//   generate ids=1,2,3 max_new=8 [temperature=0] [top_p=1] [seed=0] [stop=2,3]
//     -> prefill ms=X tokens=N
//        token ID ms=X gap=G nonfinite=K        (one per generated token, flushed at once)
//        done tokens=N reason=length|stop|seq_full prefill_ms=X decode_ms=X
//   info  -> net NAME inputs=... outputs=...   (one line per network), then `end`
//   quit  -> exits 0 (so does end of input)
// A bad request answers `error bad_request message` and the engine waits for the next line;
// a device failure answers `error device message` and the engine exits 5.
// `gap` is the top-1 minus top-2 logit and `nonfinite` the number of NaN/inf logits: the
// caller's checks for degenerate output need them.

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
  int layers = 0, seq = 0, hidden = 0, vocab = 0;
  bm::DataType hidden_dtype = bm::kFloat16;

  // Device buffers, allocated once. Hidden states ping-pong between two buffers across layers.
  bm::DeviceMem ids, prefill_hidden[2], prefill_positions, prefill_mask;
  bm::DeviceMem token_id, decode_hidden[2], decode_positions, decode_mask;
  bm::DeviceMem new_k, new_v, logits;
  std::vector<bm::DeviceMem> k_cache, v_cache;  // one per layer: [1, SEQ, kv_heads, head_dim]
  size_t kv_row_bytes = 0;                      // bytes of one position in a cache
  std::vector<bm::DeviceMem> allocated;         // everything to free at exit
};

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

static bool find_net(Model* m, const std::string& name, Net* net, std::string* error) {
  net->name = name;
  net->info = m->rt->rt_get_network_info(m->bmrt, name.c_str());
  if (!net->info) *error = "network " + name + " is not in the bmodel";
  return net->info != nullptr;
}

static bool check_net(const Net& net, int inputs, int outputs, std::string* error) {
  if (net.info->input_num == inputs && net.info->output_num == outputs &&
      net.info->stage_num >= 1)
    return true;
  *error = "network " + net.name + " has " + std::to_string(net.info->input_num) + " inputs and " +
           std::to_string(net.info->output_num) + " outputs; an LLM-TPU bmodel's has " +
           std::to_string(inputs) + " and " + std::to_string(outputs);
  return false;
}

// Find the networks, check they have the LLM-TPU shapes, read the sizes off them.
static bool inspect_model(Model* m, std::string* error) {
  const char** names = nullptr;
  int count = m->rt->rt_get_network_number(m->bmrt);
  m->rt->rt_get_network_names(m->bmrt, &names);
  std::vector<std::string> net_names(names, names + count);
  free(names);
  while (std::count(net_names.begin(), net_names.end(),
                    "block_cache_" + std::to_string(m->layers)) > 0)
    m->layers++;
  if (m->layers == 0) {
    *error = "no block_cache_0 network: not an LLM-TPU bmodel";
    return false;
  }
  if (!find_net(m, "embedding", &m->embedding, error) ||
      !find_net(m, "embedding_cache", &m->embedding_cache, error) ||
      !find_net(m, "lm_head", &m->lm_head, error))
    return false;
  m->blocks.resize(m->layers);
  m->blocks_cache.resize(m->layers);
  for (int i = 0; i < m->layers; i++) {
    if (!find_net(m, "block_" + std::to_string(i), &m->blocks[i], error) ||
        !find_net(m, "block_cache_" + std::to_string(i), &m->blocks_cache[i], error))
      return false;
  }
  if (!check_net(m->embedding, 1, 1, error) || !check_net(m->embedding_cache, 1, 1, error) ||
      !check_net(m->lm_head, 1, 1, error))
    return false;
  for (int i = 0; i < m->layers; i++) {
    if (!check_net(m->blocks[i], 3, 3, error) || !check_net(m->blocks_cache[i], 5, 3, error))
      return false;
  }

  const Net& block = m->blocks[0];
  const Net& cache = m->blocks_cache[0];
  m->seq = in_shape(block, 0).dims[1];                       // input_states [1, SEQ, H]
  m->hidden = in_shape(block, 0).dims[in_shape(block, 0).num_dims - 1];
  m->hidden_dtype = block.info->input_dtypes[0];
  // 0: unknown, for bmodels whose lm_head does the argmax and gives one int32 token id.
  bool lm_head_gives_id = m->lm_head.info->output_dtypes[0] == bm::kInt32;
  m->vocab = lm_head_gives_id ? 0 : static_cast<int>(shape_elements(out_shape(m->lm_head, 0)));
  const bm::Shape& history = in_shape(cache, 3);             // history_k [1, SEQ, kv_heads, D]
  if (history.num_dims < 2 || history.dims[1] != m->seq ||
      shape_elements(in_shape(cache, 2)) != static_cast<size_t>(m->seq) + 1) {
    *error = "block_cache_0 history_k " + shape_text(history) + " / attention_mask " +
             shape_text(in_shape(cache, 2)) + " do not match SEQ " + std::to_string(m->seq) +
             " (expected [1,SEQ,...] and SEQ+1 elements)";
    return false;
  }
  m->kv_row_bytes = cache.info->max_input_bytes[3] / m->seq;
  if (m->embedding.info->input_dtypes[0] != bm::kInt32 ||
      m->embedding_cache.info->input_dtypes[0] != bm::kInt32) {
    *error = "embedding input is " + std::string(dtype_name(m->embedding.info->input_dtypes[0])) +
             "; this engine feeds int32 token ids";
    return false;
  }
  for (int i = 0; i < m->layers; i++) {  // every layer must fit the shared buffers
    for (int j = 0; j < 3; j++) {
      if (m->blocks[i].info->max_input_bytes[j] != block.info->max_input_bytes[j] ||
          m->blocks_cache[i].info->max_input_bytes[j] != cache.info->max_input_bytes[j]) {
        *error = "layer " + std::to_string(i) + " has other input sizes than layer 0";
        return false;
      }
    }
  }
  return true;
}

static bool allocate_buffers(Model* m, std::string* error) {
  const bm::NetInfo* block = m->blocks[0].info;
  const bm::NetInfo* cache = m->blocks_cache[0].info;
  bool ok = allocate(m, m->embedding.info->max_input_bytes[0], &m->ids) &&
            allocate(m, block->max_input_bytes[0], &m->prefill_hidden[0]) &&
            allocate(m, block->max_input_bytes[0], &m->prefill_hidden[1]) &&
            allocate(m, block->max_input_bytes[1], &m->prefill_positions) &&
            allocate(m, block->max_input_bytes[2], &m->prefill_mask) &&
            allocate(m, m->embedding_cache.info->max_input_bytes[0], &m->token_id) &&
            allocate(m, cache->max_input_bytes[0], &m->decode_hidden[0]) &&
            allocate(m, cache->max_input_bytes[0], &m->decode_hidden[1]) &&
            allocate(m, cache->max_input_bytes[1], &m->decode_positions) &&
            allocate(m, cache->max_input_bytes[2], &m->decode_mask) &&
            allocate(m, cache->max_output_bytes[1], &m->new_k) &&
            allocate(m, cache->max_output_bytes[2], &m->new_v) &&
            allocate(m, m->lm_head.info->max_output_bytes[0], &m->logits);
  m->k_cache.resize(m->layers);
  m->v_cache.resize(m->layers);
  for (int i = 0; ok && i < m->layers; i++) {
    ok = allocate(m, cache->max_input_bytes[3], &m->k_cache[i]) &&
         allocate(m, cache->max_input_bytes[4], &m->v_cache[i]);
  }
  if (!ok) *error = "cannot allocate device memory for the hidden states and KV cache";
  return ok;
}

// ---------------------------------------------------------------------------------------------
// 4. Running the networks.

static bm::Tensor tensor(const Net& net, bool is_input, int i, bm::DeviceMem mem) {
  bm::Tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = is_input ? net.info->input_dtypes[i] : net.info->output_dtypes[i];
  t.shape = is_input ? in_shape(net, i) : out_shape(net, i);
  t.device_mem = mem;
  return t;
}

// Launch one network on the given buffers and wait for it.
static bool launch(Model* m, const Net& net, const std::vector<bm::DeviceMem>& inputs,
                   const std::vector<bm::DeviceMem>& outputs, std::string* error) {
  std::vector<bm::Tensor> in, out;
  for (size_t i = 0; i < inputs.size(); i++) in.push_back(tensor(net, true, i, inputs[i]));
  for (size_t i = 0; i < outputs.size(); i++) out.push_back(tensor(net, false, i, outputs[i]));
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

// Read the logits back (or lm_head's own token id, for bmodels that do the argmax on the chip).
static bool read_logits(Model* m, std::vector<float>* logits, std::string* error) {
  bm::DataType t = m->lm_head.info->output_dtypes[0];
  size_t bytes = m->lm_head.info->max_output_bytes[0];
  std::vector<uint8_t> raw(bytes);
  if (m->rt->memcpy_d2s_partial(m->handle, raw.data(), m->logits,
                                static_cast<unsigned int>(bytes)) != bm::kSuccess) {
    *error = "copy of logits from device failed";
    return false;
  }
  if (t == bm::kInt32) {  // a single token id: make it a one-hot "logit" vector
    int32_t id;
    memcpy(&id, raw.data(), 4);
    logits->assign(std::max(id + 1, 1), 0.0f);
    if (id >= 0) (*logits)[id] = 1.0f;
    return true;
  }
  if (t != bm::kFloat32 && t != bm::kFloat16 && t != bm::kBFloat16) {
    *error = std::string("lm_head output of type ") + dtype_name(t) + " is not supported";
    return false;
  }
  *logits = decode_floats(raw, t);
  return true;
}

// Prefill: the whole prompt through embedding and every block_N; fills the KV cache rows
// 0..n-1 and leaves the last prompt position's logits in m->logits.
static bool prefill(Model* m, const std::vector<int32_t>& prompt, std::string* error) {
  const int seq = m->seq, n = static_cast<int>(prompt.size());
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
  for (int i = 0; i < m->layers; i++) {
    // block_N writes its past_k/past_v straight into this layer's KV cache.
    if (!launch(m, m->blocks[i], {m->prefill_hidden[current], m->prefill_positions, m->prefill_mask},
                {m->prefill_hidden[1 - current], m->k_cache[i], m->v_cache[i]}, error))
      return false;
    current = 1 - current;
  }
  size_t row_bytes = m->lm_head.info->max_input_bytes[0];  // one position's hidden state
  bm::DeviceMem last_row = slice(m->prefill_hidden[current], (n - 1) * row_bytes, row_bytes);
  return launch(m, m->lm_head, {last_row}, {m->logits}, error);
}

// Decode: one token at position `position` through embedding_cache and every block_cache_N,
// which attend to cache rows 0..position-1 plus the token itself; its K/V become row
// `position` of the cache.
static bool decode(Model* m, int32_t token, int position, std::string* error) {
  const int seq = m->seq;
  std::vector<float> mask(seq + 1, kMaskValue);
  for (int j = 0; j < position; j++) mask[j] = 0.0f;
  mask[seq] = 0.0f;  // the last slot is the new token itself
  const Net& cache0 = m->blocks_cache[0];
  int32_t position_id = position;
  if (!upload(m, m->token_id, &token, 4, error) ||
      !upload(m, m->decode_positions, &position_id, 4, error) ||
      !upload_floats(m, m->decode_mask, mask, cache0.info->input_dtypes[2], error) ||
      !launch(m, m->embedding_cache, {m->token_id}, {m->decode_hidden[0]}, error))
    return false;
  int current = 0;
  for (int i = 0; i < m->layers; i++) {
    if (!launch(m, m->blocks_cache[i],
                {m->decode_hidden[current], m->decode_positions, m->decode_mask, m->k_cache[i],
                 m->v_cache[i]},
                {m->decode_hidden[1 - current], m->new_k, m->new_v}, error))
      return false;
    size_t offset = static_cast<size_t>(position) * m->kv_row_bytes;
    if (m->rt->memcpy_d2d_byte(m->handle, m->k_cache[i], offset, m->new_k, 0, m->kv_row_bytes) !=
            bm::kSuccess ||
        m->rt->memcpy_d2d_byte(m->handle, m->v_cache[i], offset, m->new_v, 0, m->kv_row_bytes) !=
            bm::kSuccess) {
      *error = "copy of the new K/V row into the cache failed";
      return false;
    }
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
  if (n > m->seq) {
    reply("error bad_request prompt has %d tokens; this bmodel holds at most SEQ=%d", n, m->seq);
    return true;
  }
  for (int32_t id : r.ids) {
    if (id < 0 || (m->vocab > 0 && id >= m->vocab)) {
      reply("error bad_request token id %d is outside the vocabulary 0..%d", id, m->vocab - 1);
      return true;
    }
  }
  Sampling sampling;
  sampling.temperature = r.temperature;
  sampling.top_p = r.top_p;
  sampling.rng.seed(r.seed);

  std::string error;
  std::vector<float> logits;
  auto start = std::chrono::steady_clock::now();
  if (!prefill(m, r.ids, &error) || !read_logits(m, &logits, &error)) {
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
    Choice c = choose(logits, &sampling);
    reply("token %d ms=%.1f gap=%.4f nonfinite=%d", c.token, elapsed_ms(step_start), c.gap,
          c.nonfinite);
    produced++;
    if (std::find(r.stop.begin(), r.stop.end(), c.token) != r.stop.end()) {
      reason = "stop";
      break;
    }
    if (produced >= r.max_new) break;
    if (position >= m->seq) {
      reason = "seq_full";
      break;
    }
    step_start = std::chrono::steady_clock::now();
    if (!decode(m, c.token, position, &error) || !read_logits(m, &logits, &error)) {
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
  std::vector<const Net*> nets = {&m->embedding, &m->embedding_cache, &m->lm_head};
  for (int i = 0; i < m->layers; i++) {
    nets.push_back(&m->blocks[i]);
    nets.push_back(&m->blocks_cache[i]);
  }
  for (const Net* net : nets) {
    std::string line = "net " + net->name + " inputs=";
    for (int i = 0; i < net->info->input_num; i++)
      line += std::string(i ? "," : "") + net->info->input_names[i] + ":" +
              dtype_name(net->info->input_dtypes[i]) + shape_text(in_shape(*net, i));
    line += " outputs=";
    for (int i = 0; i < net->info->output_num; i++)
      line += std::string(i ? "," : "") + net->info->output_names[i] + ":" +
              dtype_name(net->info->output_dtypes[i]) + shape_text(out_shape(*net, i));
    reply("%s", line.c_str());
  }
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

static void usage(FILE* to) {
  fprintf(to,
          "usage: llmtpu-engine --model FILE.bmodel [--lib-dir DIR] [--device N]\n"
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
  reply("ready protocol=%d layers=%d seq=%d hidden=%d vocab=%d dtype=%s load_ms=%.1f", kProtocol,
        model.layers, model.seq, model.hidden, model.vocab, dtype_name(model.hidden_dtype),
        elapsed_ms(start));
  set_crash_reply(kExitDevice, "error device bmruntime crashed while running the model (see the "
                               "engine's stderr)");
  int code = serve(&model);
  free_model(&model);
  return code;
}

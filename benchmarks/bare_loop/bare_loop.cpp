// bare_loop: the least code that decodes greedily through an LLM-TPU bmodel, as the yardstick
// for benchmarks/engine.py. No protocol, no request parsing, no sampling beyond argmax, no
// error reporting beyond "failed at X". It uses the same networks and the same kind of device
// buffers as csrc/engine.cpp, and llmtpu's own bmruntime declarations (csrc/bmruntime_api.h,
// found by include path), so the only difference the benchmark sees is the engine's own code.
//
//   bare_loop --model FILE.bmodel --lib-dir DIR --ids 1,2,3 --max-new 8   (0: load only)
//
// prints, on stdout:
//   load_ms=X            bm_dev_request .. buffers allocated (the span the engine's load_ms covers)
//   prefill_ms=X         prompt through embedding, block_N, lm_head, first argmax
//   decode_ms=X steps=N  N decode steps (embedding_cache, block_cache_N + K/V row copies, lm_head,
//                        logits to host, argmax)
//   step_ms=a,b,c        each decode step
//   tokens=a,b,c         the greedy tokens (the first one from the prefill)
//
// Build (benchmarks/engine.py does it): g++ -O2 -std=c++17 -I csrc bare_loop.cpp -o bare_loop -ldl

#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bmruntime_api.h"

using Clock = std::chrono::steady_clock;

static double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

[[noreturn]] static void fail(const std::string& what) {
  fprintf(stderr, "bare_loop: failed at %s\n", what.c_str());
  exit(1);
}

// The functions used, looked up once.
static bm::DevRequestFn dev_request;
static bm::DevFreeFn dev_free;
static bm::MallocDeviceByteFn malloc_device_byte;
static bm::FreeDeviceFn free_device;
static bm::MemcpyS2dPartialFn s2d;
static bm::MemcpyD2sPartialFn d2s;
static bm::MemcpyD2dByteFn d2d;
static bm::ThreadSyncFn thread_sync;
static bm::RtCreateFn rt_create;
static bm::RtDestroyFn rt_destroy;
static bm::RtLoadBmodelFn rt_load;
static bm::RtGetNetworkNamesFn rt_names;
static bm::RtGetNetworkNumberFn rt_count;
static bm::RtGetNetworkInfoFn rt_info;
static bm::RtLaunchTensorExFn rt_launch;

template <typename Fn>
static void bind(void* lib, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(lib, name));
  if (!*fn) fail(std::string("dlsym ") + name);
}

static void open_runtime(const std::string& dir) {
  void* bmlib = dlopen((dir + "/libbmlib.so").c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!bmlib) fail(std::string("dlopen libbmlib: ") + dlerror());
  void* bmrt = dlopen((dir + "/libbmrt.so").c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!bmrt) fail(std::string("dlopen libbmrt: ") + dlerror());
  bind(bmlib, "bm_dev_request", &dev_request);
  bind(bmlib, "bm_dev_free", &dev_free);
  bind(bmlib, "bm_malloc_device_byte", &malloc_device_byte);
  bind(bmlib, "bm_free_device", &free_device);
  bind(bmlib, "bm_memcpy_s2d_partial", &s2d);
  bind(bmlib, "bm_memcpy_d2s_partial", &d2s);
  bind(bmlib, "bm_memcpy_d2d_byte", &d2d);
  bind(bmlib, "bm_thread_sync", &thread_sync);
  bind(bmrt, "bmrt_create", &rt_create);
  bind(bmrt, "bmrt_destroy", &rt_destroy);
  bind(bmrt, "bmrt_load_bmodel", &rt_load);
  bind(bmrt, "bmrt_get_network_names", &rt_names);
  bind(bmrt, "bmrt_get_network_number", &rt_count);
  bind(bmrt, "bmrt_get_network_info", &rt_info);
  bind(bmrt, "bmrt_launch_tensor_ex", &rt_launch);
}

// Mask values are only 0 and -10000, so a plain conversion of normal numbers is enough.
static uint16_t to_f16(float v) {
  if (v == 0.0f) return 0;
  uint32_t x;
  memcpy(&x, &v, 4);
  uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
  int exp = static_cast<int>((x >> 23) & 0xff) - 127 + 15;
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  return static_cast<uint16_t>(h + ((mant >> 12) & 1));  // round half up
}

static float from_16(uint16_t h, bm::DataType t) {
  uint32_t x;
  if (t == bm::kBFloat16) {
    x = static_cast<uint32_t>(h) << 16;
  } else {  // f16, normal numbers and zero (logits); subnormals read as zero
    uint32_t exp = (h >> 10) & 0x1f, sign = (h & 0x8000u) << 16, mant = h & 0x3ff;
    x = exp == 0 ? sign : exp == 31 ? sign | 0x7f800000 | (mant << 13)
                                    : sign | ((exp + 112) << 23) | (mant << 13);
  }
  float v;
  memcpy(&v, &x, 4);
  return v;
}

// A mask of 0 (attend) / -10000 (not) in the network's dtype.
static std::vector<uint8_t> mask_bytes(const std::vector<bool>& attend, bm::DataType t) {
  size_t width = t == bm::kFloat32 ? 4 : 2;
  std::vector<uint8_t> out(attend.size() * width);
  for (size_t i = 0; i < attend.size(); i++) {
    float v = attend[i] ? 0.0f : -10000.0f;
    if (width == 4) {
      memcpy(&out[4 * i], &v, 4);
    } else {
      uint32_t x;
      memcpy(&x, &v, 4);
      uint16_t h = t == bm::kBFloat16 ? static_cast<uint16_t>(x >> 16) : to_f16(v);
      memcpy(&out[2 * i], &h, 2);
    }
  }
  return out;
}

// One network with its tensor descriptors, built once; only device addresses change per call.
struct Net {
  const char* name = nullptr;
  const bm::NetInfo* info = nullptr;
  std::vector<bm::Tensor> in, out;
};

static Net find(void* rt, const std::string& name) {
  Net n;
  n.info = rt_info(rt, name.c_str());
  if (!n.info) fail("network " + name);
  n.name = n.info->name;
  n.in.resize(n.info->input_num);
  n.out.resize(n.info->output_num);
  for (int i = 0; i < n.info->input_num; i++) {
    memset(&n.in[i], 0, sizeof(bm::Tensor));
    n.in[i].dtype = n.info->input_dtypes[i];
    n.in[i].shape = n.info->stages[0].input_shapes[i];
  }
  for (int i = 0; i < n.info->output_num; i++) {
    memset(&n.out[i], 0, sizeof(bm::Tensor));
    n.out[i].dtype = n.info->output_dtypes[i];
    n.out[i].shape = n.info->stages[0].output_shapes[i];
  }
  return n;
}

static bm::Handle handle;
static void* rt;
static std::vector<bm::DeviceMem> allocated;

static bm::DeviceMem alloc(size_t bytes) {
  bm::DeviceMem m;
  if (malloc_device_byte(handle, &m, static_cast<unsigned int>(bytes)) != bm::kSuccess)
    fail("bm_malloc_device_byte");
  allocated.push_back(m);
  return m;
}

static void run(Net& n, std::initializer_list<bm::DeviceMem> in,
                std::initializer_list<bm::DeviceMem> out) {
  size_t i = 0;
  for (const bm::DeviceMem& m : in) n.in[i++].device_mem = m;
  i = 0;
  for (const bm::DeviceMem& m : out) n.out[i++].device_mem = m;
  if (!rt_launch(rt, n.name, n.in.data(), static_cast<int>(n.in.size()), n.out.data(),
                 static_cast<int>(n.out.size()), true, false) ||
      thread_sync(handle) != bm::kSuccess)
    fail(std::string("launch ") + n.name);
}

static void upload(bm::DeviceMem dst, const void* src, size_t bytes) {
  if (s2d(handle, dst, const_cast<void*>(src), static_cast<unsigned int>(bytes)) != bm::kSuccess)
    fail("bm_memcpy_s2d_partial");
}

int main(int argc, char** argv) {
  std::string model, lib_dir;
  std::vector<int32_t> prompt;
  int max_new = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i], value = argv[i + 1];
    if (key == "--model") {
      model = value;
    } else if (key == "--lib-dir") {
      lib_dir = value;
    } else if (key == "--max-new") {
      max_new = atoi(value.c_str());
    } else if (key == "--ids") {
      for (char* p = argv[i + 1]; *p;) {
        prompt.push_back(static_cast<int32_t>(strtol(p, &p, 10)));
        if (*p == ',') p++;
      }
    }
  }
  if (model.empty() || lib_dir.empty() || prompt.empty() || max_new < 0) {
    fprintf(stderr, "usage: bare_loop --model FILE --lib-dir DIR --ids 1,2,3 [--max-new 8]\n"
                    "       (--max-new 0: load, print load_ms, exit)\n");
    return 2;
  }
  open_runtime(lib_dir);
  // The libraries print to stdout; keep ours apart.
  FILE* out = fdopen(dup(STDOUT_FILENO), "w");
  setvbuf(out, nullptr, _IOLBF, 0);  // each line as it happens (the caller times load_ms's)
  dup2(STDERR_FILENO, STDOUT_FILENO);

  // Load: device, runtime, bmodel, networks, buffers.
  auto t = Clock::now();
  if (dev_request(&handle, 0) != bm::kSuccess) fail("bm_dev_request");
  rt = rt_create(handle);
  if (!rt || !rt_load(rt, model.c_str())) fail("bmrt_load_bmodel");
  const char** names = nullptr;
  int count = rt_count(rt);
  rt_names(rt, &names);
  int layers = 0;
  for (bool more = true; more; layers += more) {
    more = false;
    std::string want = "block_cache_" + std::to_string(layers);
    for (int i = 0; i < count; i++) more = more || want == names[i];
  }
  free(names);
  Net embed = find(rt, "embedding"), embed1 = find(rt, "embedding_cache");
  Net head = find(rt, "lm_head");
  std::vector<Net> block, cache;
  for (int i = 0; i < layers; i++) {
    block.push_back(find(rt, "block_" + std::to_string(i)));
    cache.push_back(find(rt, "block_cache_" + std::to_string(i)));
  }
  const bm::NetInfo* b = block[0].info;
  const bm::NetInfo* c = cache[0].info;
  const int seq = b->stages[0].input_shapes[0].dims[1];
  bm::DeviceMem ids = alloc(embed.info->max_input_bytes[0]);
  bm::DeviceMem ph[2] = {alloc(b->max_input_bytes[0]), alloc(b->max_input_bytes[0])};
  bm::DeviceMem ppos = alloc(b->max_input_bytes[1]), pmask = alloc(b->max_input_bytes[2]);
  bm::DeviceMem tok = alloc(embed1.info->max_input_bytes[0]);
  bm::DeviceMem dh[2] = {alloc(c->max_input_bytes[0]), alloc(c->max_input_bytes[0])};
  bm::DeviceMem dpos = alloc(c->max_input_bytes[1]), dmask = alloc(c->max_input_bytes[2]);
  bm::DeviceMem new_k = alloc(c->max_output_bytes[1]), new_v = alloc(c->max_output_bytes[2]);
  bm::DeviceMem logits = alloc(head.info->max_output_bytes[0]);
  std::vector<bm::DeviceMem> kc, vc;
  for (int i = 0; i < layers; i++) {
    kc.push_back(alloc(c->max_input_bytes[3]));
    vc.push_back(alloc(c->max_input_bytes[4]));
  }
  const size_t row = c->max_input_bytes[3] / seq;  // one position of a K or V cache
  fprintf(out, "load_ms=%.3f layers=%d seq=%d\n", ms_since(t), layers, seq);
  auto release = [&]() {
    for (bm::DeviceMem& m : allocated) free_device(handle, m);  // before the handle (bmlib asserts)
    rt_destroy(rt);
    dev_free(handle);
  };
  if (max_new == 0) {
    release();
    return 0;
  }

  // Logits to host, argmax.
  const bm::DataType lt = head.info->output_dtypes[0];
  std::vector<uint8_t> raw(head.info->max_output_bytes[0]);
  auto argmax = [&]() -> int32_t {
    if (d2s(handle, raw.data(), logits, static_cast<unsigned int>(raw.size())) != bm::kSuccess)
      fail("bm_memcpy_d2s_partial");
    if (lt == bm::kInt32) return *reinterpret_cast<int32_t*>(raw.data());
    size_t width = lt == bm::kFloat32 ? 4 : 2, n = raw.size() / width, best = 0;
    float best_v = -1e30f;
    for (size_t i = 0; i < n; i++) {
      float v;
      if (width == 4) {
        memcpy(&v, &raw[4 * i], 4);
      } else {
        uint16_t h;
        memcpy(&h, &raw[2 * i], 2);
        v = from_16(h, lt);
      }
      if (v > best_v) best_v = v, best = i;
    }
    return static_cast<int32_t>(best);
  };

  // Prefill.
  t = Clock::now();
  const int n = static_cast<int>(prompt.size());
  std::vector<int32_t> id_buf(seq, 0), pos_buf(seq, 0);
  std::vector<bool> attend(static_cast<size_t>(seq) * seq, false);
  for (int i = 0; i < n; i++) {
    id_buf[i] = prompt[i];
    pos_buf[i] = i;
    for (int j = 0; j <= i; j++) attend[static_cast<size_t>(i) * seq + j] = true;
  }
  std::vector<uint8_t> mask = mask_bytes(attend, b->input_dtypes[2]);
  upload(ids, id_buf.data(), id_buf.size() * 4);
  upload(ppos, pos_buf.data(), pos_buf.size() * 4);
  upload(pmask, mask.data(), mask.size());
  run(embed, {ids}, {ph[0]});
  int cur = 0;
  for (int i = 0; i < layers; i++, cur = 1 - cur) run(block[i], {ph[cur], ppos, pmask}, {ph[1 - cur], kc[i], vc[i]});
  size_t hrow = head.info->max_input_bytes[0];
  bm::DeviceMem last = ph[cur];
  last.u.device.device_addr += (n - 1) * hrow;
  last.size = static_cast<unsigned int>(hrow);
  run(head, {last}, {logits});
  std::vector<int32_t> tokens = {argmax()};
  fprintf(out, "prefill_ms=%.3f\n", ms_since(t));

  // Decode.
  t = Clock::now();
  std::vector<bool> attend1(seq + 1, false);
  attend1[seq] = true;  // the new token itself
  int steps = 0;
  std::vector<double> step_ms;
  for (int pos = n; static_cast<int>(tokens.size()) < max_new && pos < seq; pos++, steps++) {
    for (int j = 0; j < pos; j++) attend1[j] = true;
    auto step = Clock::now();
    std::vector<uint8_t> m1 = mask_bytes(attend1, c->input_dtypes[2]);
    int32_t id = tokens.back(), p = pos;
    upload(tok, &id, 4);
    upload(dpos, &p, 4);
    upload(dmask, m1.data(), m1.size());
    run(embed1, {tok}, {dh[0]});
    cur = 0;
    for (int i = 0; i < layers; i++, cur = 1 - cur) {
      run(cache[i], {dh[cur], dpos, dmask, kc[i], vc[i]}, {dh[1 - cur], new_k, new_v});
      if (d2d(handle, kc[i], pos * row, new_k, 0, row) != bm::kSuccess ||
          d2d(handle, vc[i], pos * row, new_v, 0, row) != bm::kSuccess)
        fail("bm_memcpy_d2d_byte");
    }
    run(head, {dh[cur]}, {logits});
    tokens.push_back(argmax());
    step_ms.push_back(ms_since(step));
  }
  fprintf(out, "decode_ms=%.3f steps=%d\n", ms_since(t), steps);
  fprintf(out, "step_ms=");
  for (size_t i = 0; i < step_ms.size(); i++) fprintf(out, "%s%.3f", i ? "," : "", step_ms[i]);
  fprintf(out, "\n");
  fprintf(out, "tokens=");
  for (size_t i = 0; i < tokens.size(); i++) fprintf(out, "%s%d", i ? "," : "", tokens[i]);
  fprintf(out, "\n");
  fflush(out);

  release();
  return 0;
}

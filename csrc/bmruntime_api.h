// The few bmlib/bmruntime types and functions the engine uses, declared by llmtpu itself.
//
// Sophgo's own headers are not vendored (their text says proprietary). What is here is only
// the binary interface: struct layouts as the libraries lay them out, and the signatures of the
// functions looked up with dlsym. Layouts are for LP64 Linux (x86_64 and aarch64), where
// `unsigned long` is 64 bits. Structs the engine only reads through a pointer from the library
// (NetInfo, StageInfo) declare just the leading fields it reads; their tails differ between
// libsophon releases and are never touched.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bm {

// bm_status_t: 0 is success, anything else an error.
using Status = int;
constexpr Status kSuccess = 0;

// bm_handle_t: an opaque device handle.
using Handle = void*;

// bm_data_type_t values.
enum DataType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kInt8 = 2,
  kUint8 = 3,
  kInt16 = 4,
  kUint16 = 5,
  kInt32 = 6,
  kUint32 = 7,
  kBFloat16 = 8,
};

// bm_device_mem_t: a device address and a size, passed by value.
struct DeviceMem {
  union {
    struct {
      unsigned long device_addr;
      unsigned int reserved;
      int dmabuf_fd;
    } device;
    void* system_addr;
  } u;
  unsigned int flags;
  unsigned int size;
};

// bm_shape_t.
constexpr int kMaxDims = 8;
struct Shape {
  int num_dims;
  int dims[kMaxDims];
};

// bm_tensor_t: what bmrt_launch_tensor_ex takes for each input and output.
struct Tensor {
  DataType dtype;
  Shape shape;
  DeviceMem device_mem;
  int store_mode;  // 0: the default (1N) store mode
};

// bm_stage_info_t, leading fields only.
struct StageInfo {
  Shape* input_shapes;
  Shape* output_shapes;
};

// bm_net_info_t, leading fields only.
struct NetInfo {
  const char* name;
  bool is_dynamic;
  int input_num;
  const char** input_names;
  DataType* input_dtypes;
  float* input_scales;
  int output_num;
  const char** output_names;
  DataType* output_dtypes;
  float* output_scales;
  int stage_num;
  StageInfo* stages;
  size_t* max_input_bytes;
  size_t* max_output_bytes;
};

// Function signatures, one type per symbol looked up in libbmlib / libbmrt.
using DevRequestFn = Status (*)(Handle* handle, int device_id);
using DevFreeFn = void (*)(Handle handle);
using MallocDeviceByteFn = Status (*)(Handle handle, DeviceMem* mem, unsigned int size);
using FreeDeviceFn = void (*)(Handle handle, DeviceMem mem);
using MemcpyS2dPartialFn = Status (*)(Handle handle, DeviceMem dst, void* src, unsigned int size);
using MemcpyD2sPartialFn = Status (*)(Handle handle, void* dst, DeviceMem src, unsigned int size);
using MemcpyD2dByteFn = Status (*)(Handle handle, DeviceMem dst, size_t dst_offset, DeviceMem src,
                                   size_t src_offset, size_t size);
using ThreadSyncFn = Status (*)(Handle handle);

using RtCreateFn = void* (*)(Handle handle);
using RtDestroyFn = void (*)(void* runtime);
using RtLoadBmodelFn = bool (*)(void* runtime, const char* path);
using RtGetNetworkNamesFn = void (*)(void* runtime, const char*** names);
using RtGetNetworkNumberFn = int (*)(void* runtime);
using RtGetNetworkInfoFn = const NetInfo* (*)(void* runtime, const char* net_name);
using RtLaunchTensorExFn = bool (*)(void* runtime, const char* net_name, const Tensor* inputs,
                                    int input_num, Tensor* outputs, int output_num, bool user_mem,
                                    bool user_store_mode);

}  // namespace bm

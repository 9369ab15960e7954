// Device helpers every kernel shares: f32/bf16 access through float (the math is fp32 either
// way), 16-byte packs, the PTX wrappers (cp.async, ex2), and warp/block sums.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace coil::kernels::cuda {

using bf16_t = __nv_bfloat16;
constexpr float kLog2e = 1.4426950408889634f;

// ---- f32 / bf16 access -------------------------------------------------------------------
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16_t x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16_t from_f<bf16_t>(float x) { return __float2bfloat16(x); }

template <class T> __device__ __forceinline__ float load(const T* p, int64_t i) { return to_f(p[i]); }
template <class T> __device__ __forceinline__ void store(T* p, int64_t i, float v) { p[i] = from_f<T>(v); }

// N consecutive elements loaded or stored at once: by default 16 bytes (one vectorized
// access); N = 1 is a single element (rows whose length or alignment rules out packs).
template <class T, int N = 16 / int(sizeof(T))>
struct alignas(sizeof(T) * N) Pack {
  static constexpr int n = N;
  T v[N];
};

// Two floats rounded to bf16 and packed into one 32-bit register (lo in the low half): the
// operand layout of the bf16 tensor-core instructions (mma.sync, wgmma).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__host__ __device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// ---- PTX wrappers ------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte asynchronous copy global -> shared; src_bytes 0 fills the 16 bytes with zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// 2^x on the special-function unit (16 a clock per SM; relative error ~2^-22; flushes
// results below 2^-126 to zero, -inf gives +0, NaN stays NaN).
__device__ __forceinline__ float ex2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// ---- sums --------------------------------------------------------------------------------
// Sum over the warp (float or double); every lane receives it.
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32); every thread receives it. smem: 32 floats.
__device__ inline float block_sum(float v, float* smem) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  return warp_sum(lane < warps ? smem[lane] : 0.f);
}

}  // namespace coil::kernels::cuda

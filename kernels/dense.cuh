// Helpers shared by the dense op families (gemm.cu, conv.cu, norm.cu, attention.cu,
// sam_decoder.cu): activations, fp16 packing and the fp16 tensor-core MMA. Activation codes
// match `Activation` in src/ops/gemm.rs.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

namespace finesam {

enum Activation : int { kActNone = 0, kActGelu = 1, kActRelu = 2 };

// nn.GELU() (exact erf form, the PyTorch default) and nn.ReLU().
__device__ __forceinline__ float activate(float v, int act) {
    if (act == kActGelu) return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    if (act == kActRelu) return fmaxf(v, 0.f);
    return v;
}

// 8 fp16 (one 16-byte vector) <-> 8 floats.
__device__ __forceinline__ void unpack8(const uint4& raw, float (&f)[8]) {
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const float2 v = __half22float2(h[e]);
        f[2 * e] = v.x;
        f[2 * e + 1] = v.y;
    }
}

__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
    uint4 raw;
    __half2* h = reinterpret_cast<__half2*>(&raw);
#pragma unroll
    for (int e = 0; e < 4; ++e) h[e] = __floats2half2_rn(f[2 * e], f[2 * e + 1]);
    return raw;
}

// d += a (16x16, row-major fragment) * b (16x8, column-major fragment): mma.sync.m16n8k16 with
// fp16 inputs and fp32 accumulators.
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> one packed fp16 pair (an MMA operand register).
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

}  // namespace finesam

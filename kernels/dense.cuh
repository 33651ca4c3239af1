// Helpers shared by the dense op families (gemm.cu, conv.cu, norm.cu, attention.cu,
// sam_decoder.cu): activations, fp16 packing and the fp16 tensor-core MMA. Activation codes
// match `Activation` in src/ops/gemm.rs.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

namespace finesam {

enum Activation : int { kActNone = 0, kActGelu = 1, kActRelu = 2 };

// nn.GELU (exact erf form) without erff: gelu(x) = x * Phi(x) = relu(x) - |x| * q(|x|) with
// q(a) = Phi(-a) = erfc(a / sqrt 2) / 2 = 2^P(a), P a degree-7 polynomial fitted to log2 q on
// [0, 6.5] minimising the weighted error |q - 2^P| (Lawson's iteration), a clamped to 6.5
// (q(6.5) = 4e-11). The fitted q is within 3.6e-8 of q; with fp32 Horner rounding the whole
// function, evaluated in fp32 arithmetic against an mpmath reference on 40k points over
// [-12, 12], is within 9.5e-8 * max(1, |x|), plus ex2.approx's 2^-22 relative error on q
// (<= 1.2e-7 * |x|): about 1e-7 relative for x > 0, some 2000x below half an fp16 ulp. erff
// under --use_fast_math costs ~25 instructions with a branch around its ex2, which serialises
// the GELUs; this is 10 FMA/ALU instructions and one MUFU.EX2, no branch. NaN propagates;
// gelu(+inf) is NaN instead of inf (unreachable: fp32 accumulations of fp16 operands).
__device__ __forceinline__ float gelu(float x) {
    const float a = fminf(fabsf(x), 6.5f);
    float p = 8.470114153e-06f;
    p = fmaf(p, a, -5.390320075e-05f);
    p = fmaf(p, a, -4.212379863e-04f);
    p = fmaf(p, a, 7.389276288e-03f);
    p = fmaf(p, a, -5.269111693e-02f);
    p = fmaf(p, a, -4.591531456e-01f);
    p = fmaf(p, a, -1.151110888e+00f);
    p = fmaf(p, a, -9.999998808e-01f);
    float q;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(q) : "f"(p));
    return fmaf(-fabsf(x), q, fmaxf(x, 0.f));
}

// nn.GELU() (exact erf form, the PyTorch default, evaluated by `gelu`) and nn.ReLU().
__device__ __forceinline__ float activate(float v, int act) {
    if (act == kActGelu) return gelu(v);
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

// d += a (16x8, row-major fragment) * b (8x8, column-major fragment): mma.sync.m16n8k8 with fp16
// inputs and fp32 accumulators. Its A fragment is the m16n8k16 accumulator layout (lane 4g + q:
// a0 = row g, cols 2q, 2q+1; a1 = row g + 8), so a product's fp32 result packs straight into it.
__device__ __forceinline__ void mma16808(float (&d)[4], const uint32_t (&a)[2], uint32_t b0) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
}

// Two floats -> one packed fp16 pair (an MMA operand register).
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

// bar.sync on named barrier `id` (1..4) for `threads` threads. The ids are spelled out as
// constants so ptxas reserves 5 barriers, not all 16 (a register id reserves every one).
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
    switch (id) {
        case 1: asm volatile("bar.sync 1, %0;" ::"r"(threads) : "memory"); break;
        case 2: asm volatile("bar.sync 2, %0;" ::"r"(threads) : "memory"); break;
        case 3: asm volatile("bar.sync 3, %0;" ::"r"(threads) : "memory"); break;
        default: asm volatile("bar.sync 4, %0;" ::"r"(threads) : "memory"); break;
    }
}

// Row totals for mma.sync tiles whose rows are spread over several warps: each lane holds
// partial sums of rows `row` and `row + 8` (an m16 fragment's g and g + 8); they are reduced
// over the quad, and the quads' totals (lane q == 0 writes, `writer`) are staged in `s`
// ([rows][SLOTS], one slot per warp sharing the rows) and summed in slot order, so every
// thread gets the same bits. One barrier: every thread of the block must call it, or, with
// `barrier` in 1..4, the `barrier_threads` threads (the warps sharing these rows) that sync on
// that named barrier.
template <int SLOTS>
__device__ __forceinline__ float2 quad_row_totals(float lo, float hi, float (*s)[SLOTS], int row,
                                                  int slot, bool writer, int barrier = 0,
                                                  int barrier_threads = 0) {
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
        lo += __shfl_xor_sync(0xffffffffu, lo, o);
        hi += __shfl_xor_sync(0xffffffffu, hi, o);
    }
    if (writer) {
        s[row][slot] = lo;
        s[row + 8][slot] = hi;
    }
    if (barrier > 0)
        named_barrier_sync(barrier, barrier_threads);
    else
        __syncthreads();
    float2 t = make_float2(s[row][0], s[row + 8][0]);
#pragma unroll
    for (int w = 1; w < SLOTS; ++w) {
        t.x += s[row][w];
        t.y += s[row + 8][w];
    }
    return t;
}

}  // namespace finesam

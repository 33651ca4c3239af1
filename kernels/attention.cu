// Fused multi-head attention (flash-style) for TinyViT window attention, the SAM two-way
// transformer and D-FINE's decoder self-attention.
//
// Computes, for every batch b and head h,
//     O[b, i, h, :] = sum_j softmax_j(scale * Q[b, i, h, :] . K[b, j, h, :] + bias[b, h, i, j]) V[b, j, h, :]
// i.e. torch.softmax(q @ k.transpose(-2, -1) * scale + bias, dim=-1) @ v as written in
// mobile_sam/modeling/tiny_vit_sam.py (Attention.forward) and transformer.py (Attention.forward).
// Q, K, V, O are fp16 and addressed by element strides for batch, token and head (the feature
// index d is contiguous), so they can be slices of one packed qkv GEMM output and O can be
// written straight into [B, L, H*D]. The optional bias is fp32 or fp16 with strides for batch
// (0 = shared, as TinyViT's per-window table), head and query row; keys are contiguous.
//
// Scores never touch global memory: each warp owns 16 query rows, computes S = Q K^T with
// mma.sync.m16n8k16 (fp32 accumulators), runs an online softmax in fp32 (base-2 exponentials,
// log2(e) folded into the scale), converts P to fp16 in registers and accumulates O += P V with
// mma.sync again. K/V tiles are streamed through shared memory with cp.async double buffering and
// read with ldmatrix (.trans for V) from an XOR-swizzled layout that is free of bank conflicts.
//
// Two CTA shapes per head dim D in {16, 32, 64}:
//   attention_dD       4 warps x 16 query rows, every warp sees the whole key tile;
//   attention_split_dD 1 x 16 query rows, the 4 warps split each key tile and merge their partial
//                      (max, sum, O) through shared memory at the end. Used for Lq <= 16 (SAM's 7
//                      tokens against 4096 image keys) and whenever the first shape would launch
//                      fewer CTAs than the GPU has SMs (D-FINE's 300 queries). Given a workspace,
//                      the keys are also split across CTAs (gridDim.x = q_tiles * splits); the
//                      last CTA of each (b, h, q_tile) merges the splits (an atomic counter it
//                      resets, so CUDA-graph replays stay valid).
// Rows/keys past Lq/Lk are zero-filled in shared memory and masked to -inf, so any Lq, Lk >= 1
// works. A row whose every score is -inf (only possible through a -inf bias) yields 0, not NaN.
#include <cuda_fp16.h>
#include <stdint.h>

#include "dense.cuh"

namespace {

using finesam::mma16816;
using finesam::pack_half2;

// Mirrors `AttentionParams` in src/ops/attention.rs (passed by value).
struct AttentionParams {
    const __half* q;
    const __half* k;
    const __half* v;
    __half* o;
    const void* bias;
    long long q_batch, q_token, q_head;
    long long k_batch, k_token, k_head;
    long long v_batch, v_token, v_head;
    long long o_batch, o_token, o_head;
    long long bias_batch, bias_head, bias_row;
    // Key splits across CTAs (split shape only): CTA (q_tile, split) covers key tiles
    // [split * tiles_per_split, ...) and leaves its (max, sum, O) in `partial`; the last CTA of
    // a (b, h, q_tile) to finish (counted in `counters`, reset to 0 by it) merges them.
    float* partial;
    unsigned int* counters;
    int splits, tiles_per_split;
    int batch, heads, lq, lk;
    int bias_kind;     // BiasKind below
    float scale_log2;  // scale * log2(e)
    float inv_scale;   // 1 / scale (the bias seeds the Q K^T accumulators in unscaled units)
};

enum BiasKind : int {
    kNoBias = 0,
    kDenseF32 = 1,
    kDenseF16 = 2,
    // Fragment order (built by `fragment_bias` in src/ops/attention.rs): per head, blocks of 16
    // query rows x 64 keys, each [32 lanes][8 n-tiles][4] values in mma accumulator order, so a
    // thread reads exactly its own values with 16-byte loads instead of one scattered load each.
    kFragmentsF32 = 3,
    kFragmentsF16 = 4,
};

constexpr int kThreads = 128;  // 4 warps in both CTA shapes

// Shared-memory tiles are rows of D halves cut into 16-byte chunks. The chunk index is XORed
// with the 128-byte line index so that the 8 rows read by one ldmatrix phase (same logical chunk)
// and the chunks written by cp.async land in 8 distinct bank groups for every D.
template <int D>
__device__ __forceinline__ int swizzle(int row, int chunk) {
    const int unit = row * (D / 8) + chunk;
    return (unit ^ ((unit >> 3) & 7)) * 8;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; with `valid` false the destination is zero-filled and nothing is read.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// Eight fp32 values -> one 16-byte fp16 store.
__device__ __forceinline__ void store_row_chunk(__half* dst, const float (&v)[8]) {
    uint4 out;
    out.x = pack_half2(v[0], v[1]);
    out.y = pack_half2(v[2], v[3]);
    out.z = pack_half2(v[4], v[5]);
    out.w = pack_half2(v[6], v[7]);
    *reinterpret_cast<uint4*>(dst) = out;
}

// WM warps along queries x WN warps along keys (WM * WN = 4); KW keys per warp per stage.
template <int D, int WM, int WN, int KW>
struct Shape {
    static_assert(WM * WN * 32 == kThreads, "4 warps");
    static_assert(D % 16 == 0 && KW % 16 == 0, "mma tiles");
    static constexpr int kChunks = D / 8;        // 16-byte chunks per row
    static constexpr int kBlockM = 16 * WM;      // query rows per CTA
    static constexpr int kBlockN = KW * WN;      // keys per pipeline stage
    static constexpr int kKvHalves = kBlockN * D;
};

template <int D, int WM, int WN, int KW>
__device__ __forceinline__ void attention_body(const AttentionParams& p) {
    using S = Shape<D, WM, WN, KW>;
    constexpr int kChunks = S::kChunks;
    constexpr int kBlockM = S::kBlockM;
    constexpr int kBlockN = S::kBlockN;
    constexpr int NT = KW / 8;   // S n-tiles per warp
    constexpr int DT = D / 8;    // O n-tiles
    constexpr int DK = D / 16;   // k-steps of Q K^T

    __shared__ __align__(128) __half smem_q[kBlockM * D];
    // [stage][K, V]; reused as the fp32 merge buffer of the split shape at the end.
    __shared__ __align__(128) __half smem_kv[2][2][S::kKvHalves];
    __shared__ float smem_stats[WN > 1 ? 2 * WN * 16 : 1];

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm = warp % WM;
    const int wn = warp / WM;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int q_tile = blockIdx.x / p.splits;
    const int split = blockIdx.x % p.splits;
    const int q0 = q_tile * kBlockM;

    const __half* qg = p.q + b * p.q_batch + h * p.q_head;
    const __half* kg = p.k + b * p.k_batch + h * p.k_head;
    const __half* vg = p.v + b * p.v_batch + h * p.v_head;

    for (int i = tid; i < kBlockM * kChunks; i += kThreads) {
        const int r = i / kChunks, c = i % kChunks;
        const bool ok = q0 + r < p.lq;
        cp_async16(smem_q + swizzle<D>(r, c), qg + (ok ? q0 + r : 0) * p.q_token + c * 8, ok);
    }
    cp_async_commit();

    auto load_kv = [&](int tile, int stage) {
        const int k0 = tile * kBlockN;
        for (int i = tid; i < kBlockN * kChunks; i += kThreads) {
            const int r = i / kChunks, c = i % kChunks;
            const bool ok = k0 + r < p.lk;
            const long long row = ok ? k0 + r : 0;
            cp_async16(smem_kv[stage][0] + swizzle<D>(r, c), kg + row * p.k_token + c * 8, ok);
            cp_async16(smem_kv[stage][1] + swizzle<D>(r, c), vg + row * p.v_token + c * 8, ok);
        }
    };
    const int total_tiles = (p.lk + kBlockN - 1) / kBlockN;
    const int first_tile = split * p.tiles_per_split;
    const int end_tile = min(total_tiles, first_tile + p.tiles_per_split);
    load_kv(first_tile, 0);
    cp_async_commit();

    // Q fragments stay in registers for the whole key loop.
    cp_async_wait<1>();
    __syncthreads();
    uint32_t qf[DK][4];
#pragma unroll
    for (int kk = 0; kk < DK; ++kk) {
        ldmatrix_x4(qf[kk], smem_q + swizzle<D>(wm * 16 + (lane & 15), 2 * kk + (lane >> 4)));
    }

    // This thread's two query rows (g and g + 8 of the warp's 16) and its bias rows.
    const int g = lane >> 2;
    const int tq = lane & 3;
    const int row0 = q0 + wm * 16 + g;
    const bool row_ok[2] = {row0 < p.lq, row0 + 8 < p.lq};
    const bool warp_rows = q0 + wm * 16 < p.lq;  // the warp has at least one real row
    const long long bias_base = b * p.bias_batch + h * p.bias_head;
    const int key_blocks = (p.lk + 63) / 64;

    float o[DT][4];
#pragma unroll
    for (int j = 0; j < DT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};  // this thread's partial sums; quad-reduced at the end

    for (int t = first_tile; t < end_tile; ++t) {
        const int stage = (t - first_tile) & 1;
        if (t + 1 < end_tile) {
            load_kv(t + 1, stage ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        const int key0 = t * kBlockN + wn * KW;  // first key of this warp's slice
        const int valid = p.lk - key0;           // keys of the slice below Lk (may be <= 0)
        const __half* ks = smem_kv[stage][0];
        const __half* vs = smem_kv[stage][1];

        // The bias (in units of Q K^T) seeds the accumulators: no extra registers for it.
        float s[NT][4];
#pragma unroll
        for (int j = 0; j < NT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
        if (p.bias_kind >= kFragmentsF32) {
            if (valid > 0 && warp_rows) {
                const long long offset =
                    bias_base +
                    ((((q0 + wm * 16) / 16) * (long long)key_blocks + key0 / 64) * 32 + lane) * 32 +
                    (key0 % 64) / 8 * 4;
                if (p.bias_kind == kFragmentsF32) {
                    const float4* src = reinterpret_cast<const float4*>(static_cast<const float*>(p.bias) + offset);
#pragma unroll
                    for (int j = 0; j < NT; ++j) {
                        const float4 v = __ldg(src + j);
                        s[j][0] = v.x * p.inv_scale;
                        s[j][1] = v.y * p.inv_scale;
                        s[j][2] = v.z * p.inv_scale;
                        s[j][3] = v.w * p.inv_scale;
                    }
                } else {
                    const uint4* src = reinterpret_cast<const uint4*>(static_cast<const __half*>(p.bias) + offset);
#pragma unroll
                    for (int j2 = 0; j2 < NT / 2; ++j2) {
                        uint4 u = __ldg(src + j2);
                        const __half2* hv = reinterpret_cast<const __half2*>(&u);
#pragma unroll
                        for (int k = 0; k < 4; ++k) {
                            const float2 f = __half22float2(hv[k]);
                            s[2 * j2 + k / 2][2 * (k % 2)] = f.x * p.inv_scale;
                            s[2 * j2 + k / 2][2 * (k % 2) + 1] = f.y * p.inv_scale;
                        }
                    }
                }
            }
        } else if (p.bias_kind != kNoBias) {
#pragma unroll
            for (int j = 0; j < NT; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = key0 + j * 8 + 2 * tq + (e & 1);
                    const int i = e >> 1;
                    if (col < p.lk && row_ok[i]) {
                        const long long at = bias_base + (long long)(row0 + 8 * i) * p.bias_row + col;
                        const float bv = p.bias_kind == kDenseF32
                                             ? __ldg(static_cast<const float*>(p.bias) + at)
                                             : __half2float(static_cast<const __half*>(p.bias)[at]);
                        s[j][e] = bv * p.inv_scale;
                    }
                }
            }
        }
#pragma unroll
        for (int j2 = 0; j2 < NT / 2; ++j2) {
            if (j2 * 16 < valid) {  // 16-key groups wholly past Lk are skipped (masked below)
#pragma unroll
                for (int kk = 0; kk < DK; ++kk) {
                    const int mi = lane >> 3;
                    const int r = wn * KW + j2 * 16 + (mi >> 1) * 8 + (lane & 7);
                    uint32_t kf[4];
                    ldmatrix_x4(kf, ks + swizzle<D>(r, 2 * kk + (mi & 1)));
                    mma16816(s[2 * j2], qf[kk], kf[0], kf[1]);
                    mma16816(s[2 * j2 + 1], qf[kk], kf[2], kf[3]);
                }
            }
        }

        // Scale into log2 units, mask keys past Lk.
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = key0 + j * 8 + 2 * tq + (e & 1);
                s[j][e] = col < p.lk ? s[j][e] * p.scale_log2 : -INFINITY;
            }
        }

        // Online softmax: new running max per row (reduced over the 4 threads of a quad), rescale
        // what was accumulated so far, exponentiate this tile.
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float mx = row_max[i];
#pragma unroll
            for (int j = 0; j < NT; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * i], s[j][2 * i + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            // All -inf so far: keep exponents finite (exp2(-inf - 0) = 0).
            const float m_use = mx == -INFINITY ? 0.f : mx;
            const float alpha = exp2f(row_max[i] - m_use);
            row_max[i] = mx;
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                s[j][2 * i] = exp2f(s[j][2 * i] - m_use);
                s[j][2 * i + 1] = exp2f(s[j][2 * i + 1] - m_use);
                sum += s[j][2 * i] + s[j][2 * i + 1];
            }
            row_sum[i] = row_sum[i] * alpha + sum;
#pragma unroll
            for (int j = 0; j < DT; ++j) {
                o[j][2 * i] *= alpha;
                o[j][2 * i + 1] *= alpha;
            }
        }

        // O += P V: the S accumulators of two n-tiles are exactly one A fragment of P.
#pragma unroll
        for (int kk = 0; kk < KW / 16; ++kk) {
            if (kk * 16 < valid) {
                uint32_t pf[4];
                pf[0] = pack_half2(s[2 * kk][0], s[2 * kk][1]);
                pf[1] = pack_half2(s[2 * kk][2], s[2 * kk][3]);
                pf[2] = pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pf[3] = pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int jd = 0; jd < DT; jd += 2) {
                    const int mi = lane >> 3;
                    const int r = wn * KW + kk * 16 + (mi & 1) * 8 + (lane & 7);
                    uint32_t vf[4];
                    ldmatrix_x4_trans(vf, vs + swizzle<D>(r, jd + (mi >> 1)));
                    mma16816(o[jd], pf, vf[0], vf[1]);
                    mma16816(o[jd + 1], pf, vf[2], vf[3]);
                }
            }
        }
        __syncthreads();  // the stage is refilled by the next iteration's prefetch
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 1);
        row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 2);
    }

    __half* og = p.o + b * p.o_batch + h * p.o_head;
    if constexpr (WN == 1) {
        // Normalise, stage the warp's 16 rows in its (no longer needed) part of smem_q, then
        // write whole 16-byte chunks.
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float inv = row_sum[i] > 0.f ? 1.f / row_sum[i] : 0.f;
            const int r = wm * 16 + g + 8 * i;
#pragma unroll
            for (int j = 0; j < DT; ++j) {
                const uint32_t packed = pack_half2(o[j][2 * i] * inv, o[j][2 * i + 1] * inv);
                *reinterpret_cast<uint32_t*>(smem_q + swizzle<D>(r, j) + 2 * tq) = packed;
            }
        }
        __syncwarp();
        for (int i = lane; i < 16 * kChunks; i += 32) {
            const int r = wm * 16 + i / kChunks, c = i % kChunks;
            if (q0 + r < p.lq) {
                *reinterpret_cast<uint4*>(og + (q0 + r) * p.o_token + c * 8) =
                    *reinterpret_cast<const uint4*>(smem_q + swizzle<D>(r, c));
            }
        }
    } else {
        // Merge the WN partial results of the same 16 rows: global max, rescaled sums, and the
        // sum of rescaled O fragments through an fp32 buffer that reuses the K/V tiles. With
        // several key splits the sum stays unnormalised and goes to `partial` instead.
        float* max_s = smem_stats;
        float* sum_s = smem_stats + WN * 16;
        if (tq == 0) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                max_s[wn * 16 + g + 8 * i] = row_max[i];
                sum_s[wn * 16 + g + 8 * i] = row_sum[i];
            }
        }
        __syncthreads();
        const bool final_split = p.splits == 1;
        // Partials of this (b, h, q_tile): `splits` blocks of [16 x D] O, 16 maxima, 16 sums.
        const long long group = (long long)(b * p.heads + h) * (gridDim.x / p.splits) + q_tile;
        constexpr int kPart = 16 * (D + 2);
        float* my_part = p.partial + (group * p.splits + split) * kPart;
        float* merge = reinterpret_cast<float*>(&smem_kv[0][0][0]);
        static_assert(WN * 16 * D * 4 <= sizeof(__half) * 4 * S::kKvHalves, "merge buffer");
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = g + 8 * i;
            float m = -INFINITY;
#pragma unroll
            for (int w = 0; w < WN; ++w) m = fmaxf(m, max_s[w * 16 + r]);
            const float m_use = m == -INFINITY ? 0.f : m;
            float total = 0.f;
#pragma unroll
            for (int w = 0; w < WN; ++w) total += sum_s[w * 16 + r] * exp2f(max_s[w * 16 + r] - m_use);
            float f = exp2f(row_max[i] - m_use);
            if (final_split) f = total > 0.f ? f / total : 0.f;
#pragma unroll
            for (int j = 0; j < DT; ++j) {
                *reinterpret_cast<float2*>(merge + (wn * 16 + r) * D + j * 8 + 2 * tq) =
                    make_float2(o[j][2 * i] * f, o[j][2 * i + 1] * f);
            }
            if (!final_split && wn == 0 && tq == 0) {
                my_part[16 * D + r] = m;
                my_part[16 * D + 16 + r] = total;
            }
        }
        __syncthreads();
        for (int i = tid; i < 16 * kChunks; i += kThreads) {
            const int r = i / kChunks, c = i % kChunks;
            if (q0 + r >= p.lq) continue;
            float acc[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] = 0.f;
#pragma unroll
            for (int w = 0; w < WN; ++w) {
                const float4* src = reinterpret_cast<const float4*>(merge + (w * 16 + r) * D + c * 8);
                const float4 a = src[0], bq = src[1];
                acc[0] += a.x; acc[1] += a.y; acc[2] += a.z; acc[3] += a.w;
                acc[4] += bq.x; acc[5] += bq.y; acc[6] += bq.z; acc[7] += bq.w;
            }
            if (final_split) {
                store_row_chunk(og + (q0 + r) * p.o_token + c * 8, acc);
            } else {
                float4* dst = reinterpret_cast<float4*>(my_part + r * D + c * 8);
                dst[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
                dst[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
            }
        }
        if (final_split) return;

        // Publish this split; the last one to arrive merges all of them.
        __shared__ bool is_last;
        __threadfence();
        __syncthreads();
        if (tid == 0) {
            const unsigned int done = atomicAdd(p.counters + group, 1u);
            is_last = done == (unsigned int)p.splits - 1;
        }
        __syncthreads();
        if (!is_last) return;
        __threadfence();
        const float* parts = p.partial + group * p.splits * kPart;
        for (int i = tid; i < 16 * kChunks; i += kThreads) {
            const int r = i / kChunks, c = i % kChunks;
            if (q0 + r >= p.lq) continue;
            float m = -INFINITY;
            for (int sp = 0; sp < p.splits; ++sp) m = fmaxf(m, __ldcg(parts + sp * kPart + 16 * D + r));
            const float m_use = m == -INFINITY ? 0.f : m;
            float total = 0.f, acc[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] = 0.f;
            for (int sp = 0; sp < p.splits; ++sp) {
                const float* part = parts + sp * kPart;
                const float w = exp2f(__ldcg(part + 16 * D + r) - m_use);
                total += w * __ldcg(part + 16 * D + 16 + r);
                const float4 a = __ldcg(reinterpret_cast<const float4*>(part + r * D + c * 8));
                const float4 bq = __ldcg(reinterpret_cast<const float4*>(part + r * D + c * 8) + 1);
                acc[0] += w * a.x; acc[1] += w * a.y; acc[2] += w * a.z; acc[3] += w * a.w;
                acc[4] += w * bq.x; acc[5] += w * bq.y; acc[6] += w * bq.z; acc[7] += w * bq.w;
            }
            const float inv = total > 0.f ? 1.f / total : 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] *= inv;
            store_row_chunk(og + (q0 + r) * p.o_token + c * 8, acc);
        }
        if (tid == 0) p.counters[group] = 0;  // ready for the next launch (graph replays)
    }
}

}  // namespace

// Lq > 16: 64 query rows per CTA, 64 keys per stage.
#define FINESAM_ATTENTION(D)                                                               \
    extern "C" __global__ void __launch_bounds__(kThreads, 4) attention_d##D(AttentionParams p) { \
        attention_body<D, 4, 1, 64>(p);                                                    \
    }
// Lq <= 16: 16 query rows per CTA, 4 warps split each stage of 128 (D <= 32) or 64 keys.
#define FINESAM_ATTENTION_SPLIT(D, KW)                                                     \
    extern "C" __global__ void __launch_bounds__(kThreads, 4)                              \
        attention_split_d##D(AttentionParams p) {                                          \
        attention_body<D, 1, 4, KW>(p);                                                    \
    }

FINESAM_ATTENTION(16)
FINESAM_ATTENTION(32)
FINESAM_ATTENTION(64)
FINESAM_ATTENTION_SPLIT(16, 32)
FINESAM_ATTENTION_SPLIT(32, 32)
FINESAM_ATTENTION_SPLIT(64, 16)

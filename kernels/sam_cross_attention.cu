// MobileSAM mask decoder, token -> image cross attention: the attention core of
// `TwoWayAttentionBlock.cross_attn_token_to_image` (both blocks) and of
// `TwoWayTransformer.final_attn_token_to_image`, i.e. `Attention` in the official
// segment_anything/modeling/transformer.py with downsample_rate 2 (internal width 128, 8 heads of
// dim 16) after its q/k/v projections:
//     O[b, i, 16h:16h+16] = softmax_j(Q[b, i, 16h:] . K[b, j, 16h:] / sqrt(16)) V[b, j, 16h:]
// for every prompt b, token i < T and head h, the heads concatenated (`_recombine_heads`). Q, K,
// V and O are fp16 rows of 128 halves addressed by a token and a batch stride (K and V share
// theirs: slices of one keys-projection buffer, row stride 384 or 512 halves; batch stride 0 when
// every prompt reads the same keys, as block 0 without mask inputs). Keys: a multiple of 64
// (4096 image pixels in the decoder); T <= 80 (5 + up to 64 points, padded to 16-row tiles).
//
// Grid (chunks, prompts), 256 threads = 8 warps, warp h computing head h. A CTA streams its
// chunk's key rows for ALL heads: per stage 64 keys x (k row + v row) = 32 KB by coalesced 16-byte
// cp.async (each 256-byte k or v row whole), double-buffered in shared memory, 16-byte chunks
// XOR-swizzled by row (conflict-free cp.async stores and ldmatrix reads). Per stage and 16-row
// query tile a warp computes S = Q K^T (mma.sync.m16n8k16, k = the head's 16 dims; Q and K by
// ldmatrix, V by ldmatrix.trans), an fp32 online softmax in base 2 (scale * log2(e) folded into
// one FFMA per score), P rounded to fp16 in registers (as attention.cu does) and O += P V.
// Padded query rows are zero (finite scores) and never stored.
//
// Chunks are combined without float atomics, in a fixed order: with one chunk the CTA normalises
// and stores O. Otherwise each CTA writes its unnormalised fp32 O rows, row maxima and sums to the
// workspace (`partial`: per (prompt, chunk) [T][128] O then [T][8 heads][max, sum]), fences and
// bumps the prompt's arrival counter; the last CTA to arrive merges the chunks in chunk order
// (rescaling by exp2(m_c - M)), stores fp16 O and resets the counter to 0, so the workspace is
// reused by the next launch or graph replay without zeroing. Bitwise deterministic for a given
// (prompts, T, keys) plan (the chunk count depends on the prompt count and the SM count).
//
// Shared memory: Q tiles QT x 16 x 128 halves (4 KB each) + 2 stages x 32 KB = 68 KB (QT 1) to
// 84 KB (QT 5): three CTAs per SM on sm_90 for QT 1 (__launch_bounds__(256, 3): <= 80
// registers), two for QT 2..5 (<= 128 registers).
//
// Estimates (not measurements), H100/H200 with 132 SMs; the launcher targets ~2 CTAs per SM
// (8 prompts: 32 chunks of 128 keys; 32 prompts: 8 chunks of 512 keys):
// - Bytes: k/v are 4096 x 512 B = 2 MB per prompt (once per launch with shared keys, then L2
//   hits). 8 prompts, per-prompt keys just written by the keys GEMM: 16 MB mostly from L2
//   (~3 us at ~5.5 TB/s). 32 prompts: 64 MB, the keys buffer (100-134 MB) does not fit L2, so
//   DRAM: ~14 us at ~4.5 TB/s (H200), ~20 us at ~3.3 TB/s (H100).
// - FLOPs: 2 x 2 x 16 (padded rows) x 4096 x 16 x 8 heads = 34 MFLOP per prompt and 16-row tile
//   (15 MFLOP useful at T = 7); 1.1 GFLOP at 32 prompts, ~2 us on mma.sync. The softmax issues
//   ~5 instructions per padded score (max, FFMA, ex2, add, pack): ~3 M warp instructions at 32
//   prompts, ~3 us at ~1 issue per scheduler cycle; 17 M ex2 at 16 per SM cycle: ~4 us.
// - Merge: the last CTA of a prompt reads chunks x T x 576 B (T 7: 32 x 4 KB at 8 prompts) ~1 us.
// So ~3-5 us at 8 prompts (13 us measured for attention_split_d16) and ~15-20 us at 32 prompts
// with per-prompt keys (30-39 us measured), ~5-7 us with shared keys (compute-bound).
// Measured (H200, ncu, 32 prompts, 2026-11-27): 15.7 us with shared keys (block 0), 24.4-24.9 us
// with per-prompt keys (was 29.9 / 37.7 / 38.7 for attention_split_d16); decode at 32 boxes
// 891 -> 872 us, at 8 boxes 346 -> 341 us.
#include <cuda_fp16.h>
#include <stdint.h>

#include "dense.cuh"
#include "key_split.cuh"
#include "mma.cuh"

using namespace finesam;

namespace {

constexpr int kHeads = 8;
constexpr int kWidth = 128;        // 8 heads x 16 dims: halves per q/k/v/o row
constexpr int kRowChunks = 16;     // 16-byte chunks per row
constexpr int kStageKeys = 64;     // keys per pipeline stage
constexpr int kThreads = 256;      // one warp per head
constexpr int kTileHalves = kStageKeys * kWidth;  // one stage's K (or V): 8192 halves, 16 KB
constexpr int kPartFloats = kWidth + 2 * kHeads;  // per token: 128 O values, 8 (max, sum)
static_assert(kThreads == 32 * kHeads, "one warp per head");

// Mirrors `CrossAttentionParams` in src/ops/sam_cross_attention.rs (passed by value).
struct CrossAttentionParams {
    const __half* q;
    const __half* k;
    const __half* v;
    __half* o;
    float* partial;           // per (prompt, chunk): [T][128] O, then [T][8][2] (max, sum)
    unsigned int* counters;   // one per prompt, left at 0
    long long q_batch, q_token;    // halves
    long long kv_batch, kv_token;  // halves (K and V alike)
    long long o_batch, o_token;    // halves
    int tokens, keys, chunks, tiles_per_chunk;
    float scale_log2;  // scale * log2(e)
};

// Offset (halves) of 16-byte chunk `chunk` (0..15) of row `row` in a [rows][128] tile: the low
// three chunk bits XOR the row, so the 8 rows of one ldmatrix phase (same logical chunk) and the
// 8 chunks of one cp.async phase (same row) fall in 8 distinct 16-byte bank groups.
__device__ __forceinline__ int swz(int row, int chunk) {
    return row * kWidth + ((chunk & 8) | ((chunk ^ row) & 7)) * 8;
}

template <int QT>
constexpr int smem_bytes() {
    return (QT * 16 * kWidth + 2 * 2 * kTileHalves) * 2;
}

template <int QT>
__device__ __forceinline__ void cross_attention_body(const CrossAttentionParams& p) {
    extern __shared__ __align__(128) unsigned char smem[];
    __half* q_s = reinterpret_cast<__half*>(smem);
    __half* kv_s = q_s + QT * 16 * kWidth;  // [stage][K, V][64][128]

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int head = tid >> 5;
    const int chunk = blockIdx.x;
    const int b = blockIdx.y;
    const __half* qg = p.q + b * p.q_batch;
    const __half* kg = p.k + b * p.kv_batch;
    const __half* vg = p.v + b * p.kv_batch;

    // Q rows (past T zero-filled), committed with stage 0.
    for (int i = tid; i < QT * 16 * kRowChunks; i += kThreads) {
        const int r = i >> 4, c = i & 15;
        const bool ok = r < p.tokens;
        cp_async16(smem_addr(q_s + swz(r, c)), qg + (ok ? r : 0) * p.q_token + c * 8, ok ? 16 : 0);
    }
    // One stage: 64 key rows, each a 256-byte k row then a 256-byte v row (a warp covers one
    // key). Thread tid copies chunk tid & 15 of the k (or v) row tid / 32 + 8 it, it = 0..7: a
    // fixed source stride and (rows 8 apart: same swizzle) a fixed destination stride.
    constexpr int kLoadIters = kStageKeys * 2 * kRowChunks / kThreads;
    const int load_row = tid >> 5, load_which = (tid >> 4) & 1, load_chunk = tid & 15;
    const __half* load_src =
        (load_which ? vg : kg) + load_row * p.kv_token + load_chunk * 8;
    const long long load_step = 8 * p.kv_token;  // halves between a thread's rows
    const uint32_t kv_base = smem_addr(kv_s);
    const uint32_t load_dst =
        kv_base + (load_which * kTileHalves + swz(load_row, load_chunk)) * 2;
    constexpr uint32_t kStageBytes = 2 * kTileHalves * 2;
    auto load_stage = [&](int tile, int stage) {
        const __half* src = load_src + (long long)tile * kStageKeys * p.kv_token;
        const uint32_t dst = load_dst + stage * kStageBytes;
#pragma unroll
        for (int it = 0; it < kLoadIters; ++it) {
            cp_async16(dst + it * 8 * kWidth * 2, src + it * load_step, 16);
        }
    };
    const int tiles = p.keys / kStageKeys;
    const int first = chunk * p.tiles_per_chunk;
    const int end = min(tiles, first + p.tiles_per_chunk);
    load_stage(first, 0);
    cp_async_commit();

    const int g = lane >> 2;       // accumulator rows g, g + 8
    const int tq = lane & 3;       // accumulator columns 2 tq, 2 tq + 1
    const int mi = lane >> 3;      // ldmatrix matrix index of this lane's address
    // Lane offsets (bytes) of the ldmatrix addresses; tiles 16 rows further add 16 x 256 B
    // (rows 16 apart share the swizzle). Q: A fragment (rows 0-15) x (dims 0-7 | 8-15). K:
    // matrices (keys 0-7 | 8-15) x (dims 0-7 | 8-15) = b0 b1 of two key n-tiles. V, transposed:
    // (keys 0-7 | 8-15) x (dims 0-7 | 8-15) = b0 b1 of the two dims n-tiles.
    const uint32_t q_lane = smem_addr(q_s) + swz(lane & 15, 2 * head + (lane >> 4)) * 2;
    const uint32_t k_lane = swz((mi >> 1) * 8 + (lane & 7), 2 * head + (mi & 1)) * 2;
    const uint32_t v_lane = kTileHalves * 2 + swz((mi & 1) * 8 + (lane & 7), 2 * head + (mi >> 1)) * 2;
    constexpr uint32_t kTile16 = 16 * kWidth * 2;  // bytes of 16 rows
    const float c = p.scale_log2;

    float o[QT][2][4];
    float row_max[QT][2];  // log2 units (scaled)
    float row_sum[QT][2];  // this thread's partial sums; quad-reduced at the end
#pragma unroll
    for (int qt = 0; qt < QT; ++qt) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            row_max[qt][i] = -INFINITY;
            row_sum[qt][i] = 0.f;
#pragma unroll
            for (int e = 0; e < 4; ++e) o[qt][i][e] = 0.f;
        }
    }

    for (int t = first; t < end; ++t) {
        const int stage = (t - first) & 1;
        if (t + 1 < end) {
            load_stage(t + 1, stage ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const uint32_t stage_base = kv_base + stage * kStageBytes;

#pragma unroll
        for (int qt = 0; qt < QT; ++qt) {
            if (qt * 16 >= p.tokens) break;  // uniform over the CTA
            uint32_t qf[4];
            ldmatrix_x4(qf, q_lane + qt * kTile16);

            float s[8][4];
#pragma unroll
            for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int j2 = 0; j2 < 4; ++j2) {
                uint32_t kf[4];  // keys 16 j2 .. 16 j2 + 15
                ldmatrix_x4(kf, stage_base + k_lane + j2 * kTile16);
                mma16816(s[2 * j2], qf, kf[0], kf[1]);
                mma16816(s[2 * j2 + 1], qf, kf[2], kf[3]);
            }

            // Online softmax per row (g and g + 8), maxima over the quad.
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                float mx = -INFINITY;
#pragma unroll
                for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * i], s[j][2 * i + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_new = fmaxf(row_max[qt][i], mx * c);
                const float alpha = exp2f(row_max[qt][i] - m_new);  // exp2(-inf) = 0 at first
                row_max[qt][i] = m_new;
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    s[j][2 * i] = exp2f(fmaf(s[j][2 * i], c, -m_new));
                    s[j][2 * i + 1] = exp2f(fmaf(s[j][2 * i + 1], c, -m_new));
                    sum += s[j][2 * i] + s[j][2 * i + 1];
                }
                row_sum[qt][i] = row_sum[qt][i] * alpha + sum;
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    o[qt][j][2 * i] *= alpha;
                    o[qt][j][2 * i + 1] *= alpha;
                }
            }

            // O += P V: two S n-tiles are one A fragment of P (fp16).
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                uint32_t pf[4];
                pf[0] = pack_half2(s[2 * kk][0], s[2 * kk][1]);
                pf[1] = pack_half2(s[2 * kk][2], s[2 * kk][3]);
                pf[2] = pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pf[3] = pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
                uint32_t vf[4];
                ldmatrix_x4_trans(vf, stage_base + v_lane + kk * kTile16);
                mma16816(o[qt][0], pf, vf[0], vf[1]);
                mma16816(o[qt][1], pf, vf[2], vf[3]);
            }
        }
        __syncthreads();  // the stage is refilled by the next iteration's prefetch
    }

#pragma unroll
    for (int qt = 0; qt < QT; ++qt) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            row_sum[qt][i] += __shfl_xor_sync(0xffffffffu, row_sum[qt][i], 1);
            row_sum[qt][i] += __shfl_xor_sync(0xffffffffu, row_sum[qt][i], 2);
        }
    }

    if (p.chunks == 1) {
        __half* og = p.o + b * p.o_batch;
#pragma unroll
        for (int qt = 0; qt < QT; ++qt) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int row = qt * 16 + g + 8 * i;
                if (row >= p.tokens) continue;
                const float inv = 1.f / row_sum[qt][i];
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    *reinterpret_cast<uint32_t*>(og + row * p.o_token + head * 16 + j * 8 + 2 * tq) =
                        pack_half2(o[qt][j][2 * i] * inv, o[qt][j][2 * i + 1] * inv);
                }
            }
        }
        return;
    }

    // Publish this chunk's partial result.
    const long long part_floats = (long long)p.tokens * kPartFloats;  // one (prompt, chunk)
    float* parts = p.partial + (long long)b * p.chunks * part_floats;
    float* mine = parts + chunk * part_floats;
    float* mine_stats = mine + p.tokens * kWidth;
#pragma unroll
    for (int qt = 0; qt < QT; ++qt) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int row = qt * 16 + g + 8 * i;
            if (row >= p.tokens) continue;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                *reinterpret_cast<float2*>(mine + row * kWidth + head * 16 + j * 8 + 2 * tq) =
                    make_float2(o[qt][j][2 * i], o[qt][j][2 * i + 1]);
            }
            if (tq == 0) {
                *reinterpret_cast<float2*>(mine_stats + (row * kHeads + head) * 2) =
                    make_float2(row_max[qt][i], row_sum[qt][i]);
            }
        }
    }
    if (!arrive_last(p.counters + b, p.chunks)) return;

    // Merge: one thread per (token, 4 output columns), chunks in order.
    __half* og = p.o + b * p.o_batch;
    for (int w = tid; w < p.tokens * (kWidth / 4); w += kThreads) {
        const int row = w >> 5, col = (w & 31) * 4, h = col >> 4;
        const float4 o = merge_key_chunks(parts, p.chunks, part_floats, row * kWidth + col,
                                          p.tokens * kWidth + (row * kHeads + h) * 2);
        uint2 packed;
        packed.x = pack_half2(o.x, o.y);
        packed.y = pack_half2(o.z, o.w);
        *reinterpret_cast<uint2*>(og + row * p.o_token + col) = packed;
    }
    if (tid == 0) p.counters[b] = 0;  // ready for the next launch (graph replays)
}

}  // namespace

// QT = 16-row query tiles (T <= 16 QT). Dynamic shared memory: smem_bytes<QT>().
#define FINESAM_SAM_CROSS_ATTENTION(QT, MIN_BLOCKS, BYTES)                                     \
    static_assert(smem_bytes<QT>() == BYTES, "mirrors CROSS_ATTENTION_VARIANTS in the launcher"); \
    extern "C" __global__ void __launch_bounds__(kThreads, MIN_BLOCKS)                         \
        sam_cross_attention_q##QT(CrossAttentionParams p) {                                    \
        cross_attention_body<QT>(p);                                                           \
    }

FINESAM_SAM_CROSS_ATTENTION(1, 3, 69632)
FINESAM_SAM_CROSS_ATTENTION(2, 2, 73728)
FINESAM_SAM_CROSS_ATTENTION(3, 2, 77824)
FINESAM_SAM_CROSS_ATTENTION(4, 2, 81920)
FINESAM_SAM_CROSS_ATTENTION(5, 2, 86016)

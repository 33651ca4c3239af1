// MobileSAM mask decoder, token -> image cross attention with the key projection folded into
// the queries: `Attention` of the official segment_anything/modeling/transformer.py with
// downsample_rate 2 (internal width 128, 8 heads of dim 16) as used by
// `TwoWayAttentionBlock.cross_attn_token_to_image` and `final_attn_token_to_image`, from the
// head-split queries to the heads' outputs before `out_proj`, WITHOUT projecting the image keys:
//     score_h(t, j) = q_{t,h} . (Wk_h (x_j + pe_j) + bk_h) / 4 = Qf[t*8+h] . (x_j + pe_j) / 4 + c
// with Qf[t*8+h, :] = q_{t,h} Wk_h (256 wide, formed by the caller; the bk term c is constant
// over j and drops out of the softmax), and, the values being linear,
//     out_{t,h} = sum_j p_j (Wv_h x_j + bv_h) = Wv_h (sum_j p_j x_j) + bv_h.
// Per prompt b and row r = t*8 + h (t < T <= 8, h < 8; R = 8T <= 64 rows):
//     s[r, j] = scale * Qf[b, r, :] . K[b, j, :],   K = fp16(X[b, j, :] + PE[j, :])  (an fp16 add,
//                                                    rounded once, as the test's reference)
//     A[r, :] = sum_j softmax_j(s[r, :]) X[b, j, :]                           (256 wide, fp32)
//     O[b, t, 16h + d] = Wv[16h + d, :] . A[r, :] + bv[16h + d]                (fp16, d < 16)
// Qf rows of 256 halves (batch stride qf_batch), X [N, 256] per prompt (batch stride x_batch; 0:
// shared by every prompt), PE [N, 256] shared, Wv [128, 256] fp16 (torch Linear weight of
// v_proj), bv [128] f32; O rows of 128 halves at token / batch strides. N: a multiple of 64.
//
// FlashAttention with 64 query rows (rows >= R are zero and never stored), head dim 256 for the
// scores AND the values (K = X + PE, V = X). Grid (chunks, prompts), 256 threads = 8 warps; warp
// w owns row group rg = w / 2 (16 rows) and, of each 64-key stage, key half hf = w % 2 (keys
// 32 hf .. 32 hf + 31) for the scores and value-column half hf (128 of the 256 A columns) for
// P V. Per stage a warp computes the full 256-dim scores of its 16 rows x 32 keys (Q fragments
// of all 256 dims held in registers for the whole chunk, K by ldmatrix: 64 mma), the pair
// exchanges its row maxima through shared memory (one 64-thread named barrier; both take fmaxf
// of the same two values, so both hold the stage maximum bit for bit), each warp runs the fp32
// online softmax in base 2 (scale * log2(e) folded into one FFMA per score) over ITS 32 keys only
// (half the exp2 of the version that split the contraction dims), rounds P to fp16 in registers
// (as attention.cu / sam_cross_attention.cu), publishes its P fragments (2 x 16 B per lane),
// accumulates A += P V over its own keys, then (second pair barrier) over the other warp's keys
// with the P fragments read back (V = X by ldmatrix.trans: 64 mma in all). The row sums l are
// per warp (its keys) and added in warp order at the end. Row groups past R (T <= 6) skip the
// math. (The version before split the contraction dims: it exchanged fp32 partial scores, 8 x
// 512 B per warp and stage, and both warps of a pair ran the same softmax on all 64 keys.)
// Stages: X and PE tiles of 64 keys x 512 B go to registers (ld.global.nc) in two halves of 32
// rows (2 x 4 x 16 B per thread: a warp reads whole rows) during the stage before: the first
// half is loaded at the stage's top and stored after its score mma, the second loaded then and
// stored at the stage's end, each as X and K = X + PE (HADD2, rounded once) into the next
// stage's slot (16-byte chunks XOR-swizzled by row); the barrier at the next stage's top
// publishes both. Two slots suffice (the one being read, the one being written: the slot of
// stage s - 1, which every warp left before stage s's barrier).
//
// Epilogue: the pair's row sums are added (l = l(hf 0) + l(hf 1)); A / l is rounded to fp16
// into shared memory (head-major rows, `swz_a16`: no bank conflicts; row-major, the epilogue's
// ldmatrix was 8-way conflicted, ~3.5k wavefronts per CTA) and warp h applies head h's Wv slice
// (16 x 256, B fragments straight from global/L2) to rows t*8 + h by mma (16 k-steps x 2
// n-tiles). Chunks are combined exactly like sam_cross_attention.cu, without float atomics:
// with one chunk the CTA adds bv and stores fp16 O. Otherwise each CTA writes l * (Wv A / l)
// (the chunk's unnormalised head outputs, fp32) and the rows' (max, sum) to the workspace
// (`partial`: per (prompt, chunk) [T][128] then [T][8 heads][max, sum], the same layout),
// fences and bumps the prompt's arrival counter; the last CTA merges the chunks in chunk order
// (rescaling by exp2(m_c - M)), adds bv, stores fp16 O and resets the counter to 0 (graph
// replays reuse the workspace without zeroing). Bitwise deterministic for a given (prompts, T,
// keys) plan.
//
// Shared memory: 2 slots x (X + K) x 32 KB + 32 KB (Q staging, then the pair exchange, then the
// fp16 A rows) = 160 KB: one CTA per SM (sm_86/89 cannot run it, the launch then fails with
// a typed error). __launch_bounds__(256, 1): up to 255 registers (Q fragments 64 + A 64 +
// scores 16 + half a stage of X and PE 32): 241, no spills (sm_90a, CUDA 12).
//
// Floor (estimates, not measurements; H100/H200, 132 SMs):
// - FLOPs: 2 x (64 x N x 256 x 2) per prompt (scores and P V over 64 padded rows) = 268 MFLOP
//   at N = 4096; 8.6 GFLOP at 32 prompts, ~25 us at ~350 TFLOP/s of mma.sync. The epilogue
//   (64 x 16 x 256 x 2 per CTA) is < 1% of that at 4+ stages per chunk.
// - Bytes: X 2 MB per prompt read once (64 MB at 32 prompts: ~15 us from HBM at ~4.5 TB/s),
//   PE 2 MB L2-resident, Qf 32 KB per prompt, Wv 64 KB (L2).
// - Shared memory wavefronts per stage and CTA: X and K stores 512, K fragments 1024, V
//   fragments 1024, the pair exchange ~140 (P 2 x 2 x 4 per warp, maxima): ~2.7k (the dim-split
//   version: ~3.1k, its fp32 score exchange 512), ~2.7k cycles of the shared pipe, more than
//   the ~1.6k cycles of the stage's 1024 mma.
//
// Measured (H200, 2026-11-27): the first version (PE through shared memory, conflicted
// epilogue): folded_t2i_b8_t7_k4096_per_prompt_x 22.5 us, b32 53.4 us. The dim-split version
// with X and PE a whole stage ahead in registers (254 registers): b8 21.0 us, b32 53.1 us; in
// the decoder at 32 prompts 54.1 and 53.8 us. ncu (b32, 4 chunks x 16 stages, 128 CTAs): 1 CTA
// x 8 warps per SM, issue slots 25.5 %, IPC 1.14, 7.0 cycles per issued instruction; stalls
// short scoreboard 1596, wait 1088, selected 793, long scoreboard 440, barrier 353; shared
// wavefronts ~3.26k per stage and CTA (52 % of peak), L1 data pipe 65 %, DRAM 27 %: latency-
// bound on the LSU / shared pipe (~6k cycles per stage).
// This version (estimate, not measured): per stage ~13 % fewer shared wavefronts and ~12 %
// fewer instructions per warp (half the softmax, a 2 x 16 B instead of 8 x 16 B exchange per
// lane, own-key P V issued before the second pair barrier, the 64-FMUL rescale of A skipped
// when no row maximum of the warp moved): b32 ~46-49 us, b8 ~19-20 us.
#include <cuda_fp16.h>
#include <stdint.h>

#include "dense.cuh"
#include "key_split.cuh"
#include "mma.cuh"

using namespace finesam;

namespace {

constexpr int kHeads = 8;
constexpr int kHeadDim = 16;
constexpr int kOut = kHeads * kHeadDim;  // 128 halves per output row
constexpr int kDim = 256;                // halves per Qf / X / PE row
constexpr int kRowChunks = kDim / 8;     // 16-byte chunks per row
constexpr int kRows = 64;                // padded query rows (8 tokens x 8 heads)
constexpr int kStageKeys = 64;           // keys per pipeline stage
constexpr int kStages = 2;  // slots: one read, one written
constexpr int kThreads = 256;
constexpr int kTileBytes = kStageKeys * kDim * 2;  // one X (or K) tile: 32 KB
constexpr int kStageBytes = 2 * kTileBytes;        // X then K
constexpr int kAuxBytes = kRows * kDim * 2;        // Q / exchange / fp16 A: 32 KB
constexpr int kSmemBytes = kStages * kStageBytes + kAuxBytes;
constexpr int kPartFloats = kOut + 2 * kHeads;  // per token: 128 outputs, 8 (max, sum)
static_assert(kAuxBytes >= 8 * 16 * 4 + 8 * 2 * 32 * 16, "the exchange: maxima, P fragments");
static_assert(kSmemBytes == 163840, "mirrors FOLDED_T2I_SMEM_BYTES in the launcher");

// Mirrors `FoldedT2iParams` in src/ops/sam_folded_t2i.rs (passed by value).
struct FoldedT2iParams {
    const __half* qf;
    const __half* x;
    const __half* pe;
    const __half* wv;
    const float* bv;
    __half* o;
    float* partial;          // per (prompt, chunk): [T][128] outputs, then [T][8][2] (max, sum)
    unsigned int* counters;  // one per prompt, left at 0
    long long qf_batch, x_batch;  // halves
    long long o_batch, o_token;   // halves
    int tokens, keys, chunks, tiles_per_chunk;
    float scale_log2;  // scale * log2(e)
};

// Offset (halves) of 16-byte chunk `chunk` (0..31) of row `row` in a [rows][256] tile: the low
// three chunk bits XOR the row, so the 8 rows of one ldmatrix phase (same logical chunk) and 8
// consecutive chunks of one cp.async phase (same row) fall in 8 distinct 16-byte bank groups.
__device__ __forceinline__ int swz(int row, int chunk) {
    return row * kDim + ((chunk & ~7) | ((chunk ^ row) & 7)) * 8;
}

// Offset (halves) of 16-byte chunk `chunk` of query row `row` = t*8 + h in the epilogue's fp16
// A rows: stored head-major (physical row h*8 + t) and swizzled by t ^ h, so the 8 rows of one
// epilogue ldmatrix phase (tokens 0-7 of one head) and the 8 rows g of one warp's stores (heads
// 0-7 of one token) both fall in 8 distinct 16-byte bank groups (row-major with `swz` the
// ldmatrix rows t*8 + h all shared one bank group: an 8-way conflict).
__device__ __forceinline__ int swz_a16(int row, int chunk) {
    const int h = row & 7, t = row >> 3;
    return (h * 8 + t) * kDim + ((chunk & ~7) | ((chunk ^ t ^ h) & 7)) * 8;
}

// 16-byte read-only global load (PE: L2-resident, read once per CTA), not allocated in L1.
__device__ __forceinline__ uint4 ldg_nc16(const void* src) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(src));
    return v;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 1) sam_folded_t2i(FoldedT2iParams p) {
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t ring = smem_addr(smem);
    unsigned char* aux = smem + kStages * kStageBytes;  // Q, then exchange, then fp16 A
    const uint32_t aux_addr = smem_addr(aux);

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int rg = warp >> 1;  // row group: rows 16 rg .. 16 rg + 15
    const int hf = warp & 1;   // keys 32 hf .. of each stage; value columns 128 hf .. 128 hf + 127
    const int chunk = blockIdx.x;
    const int b = blockIdx.y;
    const int rows = p.tokens * kHeads;
    const bool active = 16 * rg < rows;  // uniform over the warp pair
    const __half* qg = p.qf + b * p.qf_batch;
    const __half* xg = p.x + b * p.x_batch;

    // Qf rows (past R zero-filled) into aux, committed with stage 0.
    for (int i = tid; i < kRows * kRowChunks; i += kThreads) {
        const int r = i >> 5, c = i & 31;
        const bool ok = r < rows;
        cp_async16(aux_addr + swz(r, c) * 2, qg + (ok ? r : 0) * kDim + c * 8, ok ? 16 : 0);
    }
    // One stage: 64 X rows and 64 PE rows of 512 B, loaded into registers (ld.global.nc) in
    // two halves of 32 rows (2 x 4 x 16 B per thread) and stored as X and K = X + PE (HADD2)
    // into the stage's slot during the stage before. Thread tid loads chunk tid & 31 of rows
    // tid / 32 + 8 it, it = 0..7 (rows 8 apart share the swizzle); a warp reads whole rows.
    const int load_row = tid >> 5, load_chunk = tid & 31;
    const int load_off = swz(load_row, load_chunk) * 2;  // bytes in a tile
    constexpr int kHalfIters = kStageKeys / 16;
    auto load_half = [&](uint4(&xr)[kHalfIters], uint4(&pe)[kHalfIters], int tile, int half) {
        const long long off =
            ((long long)tile * kStageKeys + load_row + 32 * half) * kDim + load_chunk * 8;
#pragma unroll
        for (int it = 0; it < kHalfIters; ++it) {
            xr[it] = ldg_nc16(xg + off + it * 8 * kDim);
            pe[it] = ldg_nc16(p.pe + off + it * 8 * kDim);
        }
    };
    auto store_half = [&](const uint4(&xr)[kHalfIters], const uint4(&pe)[kHalfIters], int slot,
                          int half) {
        unsigned char* base = smem + slot * kStageBytes + load_off + half * 32 * kDim * 2;
#pragma unroll
        for (int it = 0; it < kHalfIters; ++it) {
            uint4 kv = pe[it];
            const __half2* xh = reinterpret_cast<const __half2*>(&xr[it]);
            __half2* kh = reinterpret_cast<__half2*>(&kv);
#pragma unroll
            for (int e = 0; e < 4; ++e) kh[e] = __hadd2(xh[e], kh[e]);
            *reinterpret_cast<uint4*>(base + it * 8 * kDim * 2) = xr[it];
            *reinterpret_cast<uint4*>(base + kTileBytes + it * 8 * kDim * 2) = kv;
        }
    };

    const int tiles = p.keys / kStageKeys;
    const int first = chunk * p.tiles_per_chunk;
    const int count = min(tiles, first + p.tiles_per_chunk) - first;
    cp_async_commit();  // the Q rows
    if (count > 0) {  // stage 0 into slot 0 (both halves in flight at once)
        uint4 x0[kHalfIters], p0[kHalfIters], x1[kHalfIters], p1[kHalfIters];
        load_half(x0, p0, first, 0);
        load_half(x1, p1, first, 1);
        store_half(x0, p0, 0, 0);
        store_half(x1, p1, 0, 1);
    }
    cp_async_wait<0>();  // the Q rows
    __syncthreads();     // publishes the Q rows and stage 0

    const int g = lane >> 2;   // accumulator rows g, g + 8
    const int tq = lane & 3;   // accumulator columns 2 tq, 2 tq + 1
    const int mi = lane >> 3;  // ldmatrix matrix index of this lane's address
    const int r7 = lane & 7;
    const float c = p.scale_log2;

    float acc[16][4];    // A: 16 rows x 128 columns (16 n-tiles)
    float row_max[2] = {-INFINITY, -INFINITY};  // log2 units (scaled), the pair's common max
    float row_sum[2] = {0.f, 0.f};              // this thread's partial sums over its keys
#pragma unroll
    for (int n = 0; n < 16; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    // The pair exchange in aux: per warp 16 row maxima, then its P fragments (2 x 32 uint4).
    float* mx_buf = reinterpret_cast<float*>(aux);
    uint4* p_buf = reinterpret_cast<uint4*>(aux + 8 * 16 * 4);

    uint32_t qa[16][4];  // Q A-fragments: rows of the group x all 16 k-steps of 16 dims
#pragma unroll
    for (int ks = 0; ks < 16; ++ks) {
        const int qc = 2 * ks + (lane >> 4);
        ldmatrix_x4(qa[ks], aux_addr + swz(16 * rg + (lane & 15), qc) * 2);
    }

    uint4 xr[kHalfIters], pe[kHalfIters];  // half of the next stage
    for (int s = 0; s < count; ++s) {
        const int slot = s % kStages;
        const int next_slot = (s + 1) % kStages;  // stage s - 1's, which every warp has left
        const bool next = s + 1 < count;
        // Publishes stage s (stored during stage s - 1); every warp is past the previous
        // stage's exchange reads (at s = 0: past its Q fragment reads: aux becomes the
        // exchange).
        __syncthreads();
        if (next) load_half(xr, pe, first + s + 1, 0);
        const uint32_t x_base = ring + slot * kStageBytes;
        const uint32_t k_base = x_base + kTileBytes;
        // A += P V for the 16 keys from key0 of this stage: V = X transposed, matrices (keys
        // 0-7 | 8-15) x (columns lo | hi) = b0 b1 of two column n-tiles.
        auto pv = [&](const uint32_t(&pa)[4], int key0) {
#pragma unroll
            for (int n2 = 0; n2 < 8; ++n2) {
                uint32_t vf[4];
                const int vc = 16 * hf + 2 * n2 + (mi >> 1);
                ldmatrix_x4_trans(vf, x_base + swz(key0 + (mi & 1) * 8 + r7, vc) * 2);
                mma16816(acc[2 * n2], pa, vf[0], vf[1]);
                mma16816(acc[2 * n2 + 1], pa, vf[2], vf[3]);
            }
        };

        // Scores of this warp's 32 keys (32 hf .. 32 hf + 31) over all 256 dims: K matrices
        // (keys 0-7 | 8-15) x (dims lo | hi) = b0 b1 of two key n-tiles per ldmatrix.
        float sc[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
        if (active) {
#pragma unroll
            for (int ks = 0; ks < 16; ++ks) {
#pragma unroll
                for (int j2 = 0; j2 < 2; ++j2) {
                    uint32_t kf[4];
                    const int key = 32 * hf + 16 * j2 + (mi >> 1) * 8 + r7;
                    ldmatrix_x4(kf, k_base + swz(key, 2 * ks + (mi & 1)) * 2);
                    mma16816(sc[2 * j2], qa[ks], kf[0], kf[1]);
                    mma16816(sc[2 * j2 + 1], qa[ks], kf[2], kf[3]);
                }
            }
        }
        // The first half of stage s + 1 into its slot, then the second half into registers.
        if (next) {
            store_half(xr, pe, next_slot, 0);
            load_half(xr, pe, first + s + 1, 1);
        }

        // Every warp runs the pair's two named barriers, active or not (past R the pair only
        // syncs with itself). With idle pairs skipping them, compute-sanitizer racecheck
        // reported ~1M WAR hazards between an active warp's X reads and an idle warp's
        // next-stage stores: the CTA barrier at each stage's top orders those, but racecheck's
        // barrier accounting went out of step between warps running different barrier counts.
        float mx[2] = {-INFINITY, -INFINITY};
        if (active) {
            // Row maxima over this warp's keys (quad), exchanged with the pair's other warp: both
            // take fmaxf of the same two values, so they share the stage maximum bit for bit.
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                float m = -INFINITY;
#pragma unroll
                for (int j = 0; j < 4; ++j) m = fmaxf(m, fmaxf(sc[j][2 * i], sc[j][2 * i + 1]));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
                mx[i] = m;
            }
            if (tq == 0) {
                mx_buf[warp * 16 + g] = mx[0];
                mx_buf[warp * 16 + g + 8] = mx[1];
            }
        }
        named_barrier_sync(1 + rg, 64);
        if (active) {
            float alpha[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const float m = fmaxf(mx[i], mx_buf[(warp ^ 1) * 16 + g + 8 * i]);
                const float m_new = fmaxf(row_max[i], m * c);
                alpha[i] = exp2f(row_max[i] - m_new);  // exp2(-inf) = 0 at first
                row_max[i] = m_new;
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    sc[j][2 * i] = exp2f(fmaf(sc[j][2 * i], c, -m_new));
                    sc[j][2 * i + 1] = exp2f(fmaf(sc[j][2 * i + 1], c, -m_new));
                    sum += sc[j][2 * i] + sc[j][2 * i + 1];
                }
                row_sum[i] = row_sum[i] * alpha[i] + sum;
            }
            // Rescale A unless no row's maximum moved (x * 1.f == x: skipping is exact).
            if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
                for (int n = 0; n < 16; ++n) {
                    acc[n][0] *= alpha[0];
                    acc[n][1] *= alpha[0];
                    acc[n][2] *= alpha[1];
                    acc[n][3] *= alpha[1];
                }
            }

            // P (fp16) of this warp's keys: two score n-tiles are one A fragment (keys 16 kl ..
            // of the warp's 32); published for the other warp, which holds the other 32 keys.
            // A += P V (`pv`) over this warp's 128 columns, its own keys first (before the pair
            // barrier), then the other warp's.
#pragma unroll
            for (int kl = 0; kl < 2; ++kl) {
                uint32_t f[4];
                f[0] = pack_half2(sc[2 * kl][0], sc[2 * kl][1]);
                f[1] = pack_half2(sc[2 * kl][2], sc[2 * kl][3]);
                f[2] = pack_half2(sc[2 * kl + 1][0], sc[2 * kl + 1][1]);
                f[3] = pack_half2(sc[2 * kl + 1][2], sc[2 * kl + 1][3]);
                p_buf[(warp * 2 + kl) * 32 + lane] = make_uint4(f[0], f[1], f[2], f[3]);
                pv(f, 32 * hf + 16 * kl);
            }
        }
        named_barrier_sync(1 + rg, 64);
        if (active) {
#pragma unroll
            for (int kl = 0; kl < 2; ++kl) {
                const uint4 o = p_buf[((warp ^ 1) * 2 + kl) * 32 + lane];
                const uint32_t f[4] = {o.x, o.y, o.z, o.w};
                pv(f, 32 * (hf ^ 1) + 16 * kl);
            }
        }
        if (next) store_half(xr, pe, next_slot, 1);  // published by the next iteration's barrier
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 1);
        row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 2);
    }
    __syncthreads();  // every warp is done with the exchange and the ring

    // Each warp's sums cover its keys: the pair's total l = l(hf 0) + l(hf 1), in that order,
    // through the ring (past the stats).
    float* sums = reinterpret_cast<float*>(smem + 1024);
    if (tq == 0) {
        sums[warp * 16 + g] = row_sum[0];
        sums[warp * 16 + g + 8] = row_sum[1];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        row_sum[i] = sums[(2 * rg) * 16 + g + 8 * i] + sums[(2 * rg + 1) * 16 + g + 8 * i];
    }

    // A / l as fp16 rows [64][256] in aux (inactive groups: zeros); (max, sum) per row in the
    // ring (stage 0's X slot, free now).
    __half* a16 = reinterpret_cast<__half*>(aux);
    float2* stats = reinterpret_cast<float2*>(smem);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int row = 16 * rg + g + 8 * i;
        const float inv = active ? 1.f / row_sum[i] : 0.f;
#pragma unroll
        for (int n = 0; n < 16; ++n) {
            *reinterpret_cast<uint32_t*>(a16 + swz_a16(row, 16 * hf + n) + 2 * tq) =
                pack_half2(acc[n][2 * i] * inv, acc[n][2 * i + 1] * inv);
        }
        if (hf == 0 && tq == 0) stats[row] = make_float2(row_max[i], row_sum[i]);
    }
    __syncthreads();

    // Warp h: head h's outputs O_h[t, d] = A16[t*8 + h, :] . Wv[16h + d, :] (rows t = lane & 7
    // of the A fragment; its rows 8-15 repeat them and are discarded).
    const int h = warp;
    float out[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) out[nt][0] = out[nt][1] = out[nt][2] = out[nt][3] = 0.f;
    const __half* wrow = p.wv + (kHeadDim * h + g) * kDim + 2 * tq;
#pragma unroll
    for (int ks = 0; ks < kDim / 16; ++ks) {
        uint32_t af[4];
        ldmatrix_x4(af, aux_addr + swz_a16((lane & 7) * kHeads + h, 2 * ks + (lane >> 4)) * 2);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const unsigned int* w =
                reinterpret_cast<const unsigned int*>(wrow + nt * 8 * kDim + 16 * ks);
            mma16816(out[nt], af, __ldg(w), __ldg(w + 4));
        }
    }
    // This lane: token t = g (if < T), columns 16 h + 8 nt + 2 tq, + 1.
    const int t = g;
    const bool stores = t < p.tokens;

    if (p.chunks == 1) {
        if (stores) {
            __half* og = p.o + b * p.o_batch + t * p.o_token + kHeadDim * h + 2 * tq;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const float2 bias =
                    *reinterpret_cast<const float2*>(p.bv + kHeadDim * h + 8 * nt + 2 * tq);
                *reinterpret_cast<uint32_t*>(og + 8 * nt) =
                    pack_half2(out[nt][0] + bias.x, out[nt][1] + bias.y);
            }
        }
        return;
    }

    // Publish this chunk's partial result: l * (Wv A / l) and the row's (max, sum).
    const long long part_floats = (long long)p.tokens * kPartFloats;  // one (prompt, chunk)
    float* parts = p.partial + (long long)b * p.chunks * part_floats;
    float* mine = parts + chunk * part_floats;
    float* mine_stats = mine + p.tokens * kOut;
    if (stores) {
        const float2 ms = stats[t * kHeads + h];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            *reinterpret_cast<float2*>(mine + t * kOut + kHeadDim * h + 8 * nt + 2 * tq) =
                make_float2(ms.y * out[nt][0], ms.y * out[nt][1]);
        }
        if (tq == 0) *reinterpret_cast<float2*>(mine_stats + (t * kHeads + h) * 2) = ms;
    }
    if (!arrive_last(p.counters + b, p.chunks)) return;

    // Merge: one thread per (token, 4 output columns), chunks in order.
    __half* og = p.o + b * p.o_batch;
    for (int w = tid; w < p.tokens * (kOut / 4); w += kThreads) {
        const int row = w >> 5, col = (w & 31) * 4, hc = col >> 4;
        const float4 o = merge_key_chunks(parts, p.chunks, part_floats, row * kOut + col,
                                          p.tokens * kOut + (row * kHeads + hc) * 2);
        const float4 bias = *reinterpret_cast<const float4*>(p.bv + col);
        uint2 packed;
        packed.x = pack_half2(o.x + bias.x, o.y + bias.y);
        packed.y = pack_half2(o.z + bias.z, o.w + bias.w);
        *reinterpret_cast<uint2*>(og + row * p.o_token + col) = packed;
    }
    if (tid == 0) p.counters[b] = 0;  // ready for the next launch (graph replays)
}

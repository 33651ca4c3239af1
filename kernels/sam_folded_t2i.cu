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
// w owns row group rg = w / 2 (16 rows) and value-column half hf = w % 2 (128 of the 256 A
// columns). Per 64-key stage a warp computes the partial scores over ITS 128 dims of the
// contraction (Q fragments held in registers for the whole chunk, K by ldmatrix: 64 mma), the
// pair exchanges partials through shared memory (float4 per lane, one 64-thread named barrier)
// and adds them (fp32 a + b == b + a: both warps hold the same scores bit for bit), runs the
// same fp32 online softmax in base 2 (scale * log2(e) folded into one FFMA per score), rounds P
// to fp16 in registers (as attention.cu / sam_cross_attention.cu) and accumulates A += P V over
// its 128 columns (V = X by ldmatrix.trans: 64 mma). Row groups past R (T <= 6) skip the math.
// Stages: X and PE tiles of 64 keys x 512 B go to registers (ld.global.nc, 2 x 8 x 16 B per
// thread: a warp reads whole rows) a whole stage ahead; at the top of each stage's iteration
// every thread stores its X chunks and K = X + PE (HADD2, rounded once as before) into the
// stage's slot (16-byte chunks XOR-swizzled by row), so one barrier per stage publishes both.
// Two slots suffice (the one being read, the one being written). Neither PE nor X is read back
// from shared memory for the add (the first version: cp.async of X and PE, a read of both, a
// write of K: 1024 wavefronts per stage; now 512).
//
// Epilogue: A / l is rounded to fp16 into shared memory (head-major rows, `swz_a16`: no bank
// conflicts; row-major, the epilogue's ldmatrix was 8-way conflicted, ~3.5k wavefronts per CTA)
// and warp h applies head h's Wv slice (16 x 256, B fragments straight from global/L2) to rows
// t*8 + h by mma (16 k-steps x 2 n-tiles). Chunks are combined exactly like sam_cross_attention.cu, without float atomics: with
// one chunk the CTA adds bv and stores fp16 O. Otherwise each CTA writes l * (Wv A / l) (the
// chunk's unnormalised head outputs, fp32) and the rows' (max, sum) to the workspace (`partial`:
// per (prompt, chunk) [T][128] then [T][8 heads][max, sum], the same layout), fences and bumps
// the prompt's arrival counter; the last CTA merges the chunks in chunk order (rescaling by
// exp2(m_c - M)), adds bv, stores fp16 O and resets the counter to 0 (graph replays reuse the
// workspace without zeroing). Bitwise deterministic for a given (prompts, T, keys) plan.
//
// Shared memory: 2 slots x (X + K) x 32 KB + 32 KB (Q staging, then the score exchange, then the
// fp16 A rows) = 160 KB: one CTA per SM (sm_86/89 cannot run it, the launch then fails with
// a typed error). __launch_bounds__(256, 1): up to 255 registers (Q fragments 32 + A 64 +
// scores 32 + X and PE of the next stage 64): 254, no spills (sm_90a, CUDA 12).
//
// Floor (estimates, not measurements; H100/H200, 132 SMs):
// - FLOPs: 2 x (64 x N x 256 x 2) per prompt (scores and P V over 64 padded rows) = 268 MFLOP
//   at N = 4096; 8.6 GFLOP at 32 prompts, ~25 us at ~350 TFLOP/s of mma.sync. The epilogue
//   (64 x 16 x 256 x 2 per CTA) is < 1% of that at 4+ stages per chunk.
// - Bytes: X 2 MB per prompt read once (64 MB at 32 prompts: ~15 us from HBM at ~4.5 TB/s),
//   PE 2 MB L2-resident, Qf 32 KB per prompt, Wv 64 KB (L2).
// - Shared memory traffic per stage and CTA: X and K stores 64 KB, K and V fragments 8 warps x
//   32 KB, the exchange 64 KB: ~384 KB (was ~480 KB with cp.async of X and PE and the add
//   through shared memory), ~3k cycles at 128 B/cycle, more than the
//   ~1.6k cycles of its 1024 mma: the kernel is shared-memory-bound. 32 prompts (4 chunks of 16
//   stages, 128 CTAs): ~61k cycles ~ 31 us at 1.98 GHz; 8 prompts (16 chunks of 4 stages):
//   ~8-10 us including the pipeline fill and the merge.
//
// Measured (H200, 2026-11-27, the first version: PE through shared memory, conflicted
// epilogue): folded_t2i_b8_t7_k4096_per_prompt_x 22.5 us (95 TFLOP/s, 16 chunks x 4 stages),
// b32 53.4 us (160 TFLOP/s, 4 chunks x 16 stages). ncu (b8): 1 CTA x 8 warps per SM, issue 19 %,
// L1 shared wavefronts ~5k per stage and CTA (the shared pipe bounds it), 462k of 2.6M shared
// load wavefronts were the epilogue's bank conflicts.
// This version (estimate, not measured): per stage ~3k wavefronts instead of ~3.8k (-20 %),
// the epilogue ~3.5k cycles shorter per CTA: b8 ~18-19 us, b32 ~43-45 us. If it measures
// slower than the commit before (PE in registers, X by a 3-deep cp.async ring, 235 registers),
// the 254-register schedule is the suspect.
#include <cuda_fp16.h>
#include <stdint.h>

#include "dense.cuh"
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
static_assert(kAuxBytes == 8 * 8 * 32 * 16, "the exchange: 8 warps x 8 n-tiles x 32 lanes");
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
    const int hf = warp & 1;   // value columns 128 hf .. 128 hf + 127; score dims likewise
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
    // One stage: 64 X rows and 64 PE rows of 512 B, loaded into registers (ld.global.nc, 2 x 8 x
    // 16 B per thread) a whole stage ahead; at the top of the stage's iteration the thread
    // stores X and K = X + PE into the stage's slot. Thread tid loads chunk tid & 31 of rows
    // tid / 32 + 8 it, it = 0..7 (rows 8 apart share the swizzle); a warp reads whole rows.
    const int load_row = tid >> 5, load_chunk = tid & 31;
    const int load_off = swz(load_row, load_chunk) * 2;  // bytes in a tile
    constexpr int kLoadIters = kStageKeys / 8;
    uint4 xr[kLoadIters], pe[kLoadIters];
    auto load_regs = [&](int tile) {
        const long long off = ((long long)tile * kStageKeys + load_row) * kDim + load_chunk * 8;
#pragma unroll
        for (int it = 0; it < kLoadIters; ++it) {
            xr[it] = ldg_nc16(xg + off + it * 8 * kDim);
            pe[it] = ldg_nc16(p.pe + off + it * 8 * kDim);
        }
    };
    // X and K = X + PE (HADD2) of the loaded stage into `slot`.
    auto store_stage = [&](int slot) {
        unsigned char* base = smem + slot * kStageBytes + load_off;
#pragma unroll
        for (int it = 0; it < kLoadIters; ++it) {
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
    if (count > 0) load_regs(first);

    const int g = lane >> 2;   // accumulator rows g, g + 8
    const int tq = lane & 3;   // accumulator columns 2 tq, 2 tq + 1
    const int mi = lane >> 3;  // ldmatrix matrix index of this lane's address
    const int r7 = lane & 7;
    const float c = p.scale_log2;

    uint32_t qa[8][4];  // Q A-fragments: rows of the group x this half's 8 k-steps of 16 dims
    float acc[16][4];   // A: 16 rows x 128 columns (16 n-tiles)
    float row_max[2] = {-INFINITY, -INFINITY};  // log2 units (scaled)
    float row_sum[2] = {0.f, 0.f};              // this thread's partial sums
#pragma unroll
    for (int n = 0; n < 16; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    float4* xchg = reinterpret_cast<float4*>(aux);

    for (int s = 0; s < count; ++s) {
        const int slot = s % kStages;
        // Stage s into its slot: the slot of stage s - 2, which every warp left before the
        // barrier of iteration s - 1.
        store_stage(slot);
        if (s == 0) cp_async_wait<0>();  // the Q rows
        // Publishes stage s (X and K) (and, at s = 0, the Q rows).
        __syncthreads();
        if (s + 1 < count) load_regs(first + s + 1);  // a whole stage ahead
        if (s == 0) {
#pragma unroll
            for (int ks = 0; ks < 8; ++ks) {
                const int qc = 16 * hf + 2 * ks + (lane >> 4);
                ldmatrix_x4(qa[ks], aux_addr + swz(16 * rg + (lane & 15), qc) * 2);
            }
            __syncthreads();  // aux becomes the score exchange
        }
        if (!active) continue;
        const uint32_t x_base = ring + slot * kStageBytes;
        const uint32_t k_base = x_base + kTileBytes;

        // Partial scores over dims 128 hf .. 128 hf + 127: K matrices (keys 0-7 | 8-15) x
        // (dims lo | hi) = b0 b1 of two key n-tiles per ldmatrix.
        float sc[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < 8; ++ks) {
#pragma unroll
            for (int j2 = 0; j2 < 4; ++j2) {
                uint32_t kf[4];
                const int kc = 16 * hf + 2 * ks + (mi & 1);
                ldmatrix_x4(kf, k_base + swz(16 * j2 + (mi >> 1) * 8 + r7, kc) * 2);
                mma16816(sc[2 * j2], qa[ks], kf[0], kf[1]);
                mma16816(sc[2 * j2 + 1], qa[ks], kf[2], kf[3]);
            }
        }
        // Exchange with the pair's other warp (the other 128 dims) and add.
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            xchg[(warp * 8 + j) * 32 + lane] = make_float4(sc[j][0], sc[j][1], sc[j][2], sc[j][3]);
        }
        named_barrier_sync(1 + rg, 64);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float4 o = xchg[((warp ^ 1) * 8 + j) * 32 + lane];
            sc[j][0] += o.x;
            sc[j][1] += o.y;
            sc[j][2] += o.z;
            sc[j][3] += o.w;
        }

        // Online softmax per row (g and g + 8), maxima over the quad.
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(sc[j][2 * i], sc[j][2 * i + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(row_max[i], mx * c);
            const float alpha = exp2f(row_max[i] - m_new);  // exp2(-inf) = 0 at first
            row_max[i] = m_new;
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                sc[j][2 * i] = exp2f(fmaf(sc[j][2 * i], c, -m_new));
                sc[j][2 * i + 1] = exp2f(fmaf(sc[j][2 * i + 1], c, -m_new));
                sum += sc[j][2 * i] + sc[j][2 * i + 1];
            }
            row_sum[i] = row_sum[i] * alpha + sum;
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                acc[n][2 * i] *= alpha;
                acc[n][2 * i + 1] *= alpha;
            }
        }

        // A += P V: two score n-tiles are one A fragment of P (fp16); V = X transposed,
        // matrices (keys 0-7 | 8-15) x (columns lo | hi) = b0 b1 of two column n-tiles.
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            uint32_t pf[4];
            pf[0] = pack_half2(sc[2 * kk][0], sc[2 * kk][1]);
            pf[1] = pack_half2(sc[2 * kk][2], sc[2 * kk][3]);
            pf[2] = pack_half2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            pf[3] = pack_half2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
            for (int n2 = 0; n2 < 8; ++n2) {
                uint32_t vf[4];
                const int vc = 16 * hf + 2 * n2 + (mi >> 1);
                ldmatrix_x4_trans(vf, x_base + swz(16 * kk + (mi & 1) * 8 + r7, vc) * 2);
                mma16816(acc[2 * n2], pf, vf[0], vf[1]);
                mma16816(acc[2 * n2 + 1], pf, vf[2], vf[3]);
            }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 1);
        row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 2);
    }
    __syncthreads();  // every warp is done with the exchange and the ring

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
    __shared__ bool is_last;
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        const unsigned int done = atomicAdd(p.counters + b, 1u);
        is_last = done == (unsigned int)p.chunks - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();

    // Merge: one thread per (token, 4 output columns), chunks in order.
    __half* og = p.o + b * p.o_batch;
    for (int w = tid; w < p.tokens * (kOut / 4); w += kThreads) {
        const int row = w >> 5, col = (w & 31) * 4, hc = col >> 4;
        const int st = (row * kHeads + hc) * 2;
        float m = -INFINITY;
#pragma unroll 8
        for (int ch = 0; ch < p.chunks; ++ch) {
            m = fmaxf(m, __ldcg(parts + ch * part_floats + p.tokens * kOut + st));
        }
        float total = 0.f;
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
        for (int ch = 0; ch < p.chunks; ++ch) {
            const float* part = parts + ch * part_floats;
            const float2 ms = __ldcg(reinterpret_cast<const float2*>(part + p.tokens * kOut + st));
            const float4 a = __ldcg(reinterpret_cast<const float4*>(part + row * kOut + col));
            const float f = exp2f(ms.x - m);
            total += f * ms.y;
            sum.x += f * a.x;
            sum.y += f * a.y;
            sum.z += f * a.z;
            sum.w += f * a.w;
        }
        const float inv = 1.f / total;
        const float4 bias = *reinterpret_cast<const float4*>(p.bv + col);
        uint2 packed;
        packed.x = pack_half2(sum.x * inv + bias.x, sum.y * inv + bias.y);
        packed.y = pack_half2(sum.z * inv + bias.z, sum.w * inv + bias.w);
        *reinterpret_cast<uint2*>(og + row * p.o_token + col) = packed;
    }
    if (tid == 0) p.counters[b] = 0;  // ready for the next launch (graph replays)
}

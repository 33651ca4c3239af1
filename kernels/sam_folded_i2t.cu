// MobileSAM mask decoder: the image -> token cross attention of a two-way block with q folded
// into the tokens, its out_proj, the residual and norm4 in one pass. Reference (official
// MobileSAM `TwoWayAttentionBlock.forward`): `attn_out = cross_attn_image_to_token(q = keys +
// key_pe, k = queries + query_pe, v = queries); keys = norm4(keys + attn_out)`, `Attention` with
// downsample_rate 2 (internal width 128, 8 heads of 16, out_proj 128 -> 256).
//
// The 4096 image rows are never projected to 128 dims: with y = x + pe,
//   score_h(j, t) = scale (Wq_h y_j + bq_h) . k_{t,h} = y_j . Kf[t*8+h] + kb[t*8+h]
//   out_proj(sum_t p v_t) = sum_{t,h} p_h(j, t) Vf[t*8+h] + bo
// with Kf[t*8+h] = scale Wq_h^T k_{t,h}, kb = scale bq_h . k_{t,h}, Vf[t*8+h] = Wo_h v_{t,h}
// (256 wide each), computed by the caller per prompt. sam_folded_image_to_token computes, for
// every prompt b and pixel j (R = 8T rows r = t*8 + h):
//   s[r] = (X[b,j,:] + PE[j,:]) . Kf[b,r,:] + kb[b,r]
//   p[t*8+h] = softmax over t < T of s[t*8+h]        (per head h)
//   Y[b,j,:] = LayerNorm(X[b,j,:] + sum_r p[r] Vf[b,r,:] + bo) * gamma + beta
// x + pe is added in fp16 (one rounding, __hadd2 on the MMA operand fragments); scores, the
// softmax, O and the LayerNorm (mean, then the centred variance, biased) are fp32; P is rounded to
// fp16 for the second product (after normalisation); Y is rounded to fp16 once.
//
// Layout. A CTA of 4 warps owns one prompt's 64-pixel tile at a time; warp w owns rows
// 16w..16w+15 and all 256 output columns, so the LayerNorm's row totals are quad shuffles only.
// Rows r of Kf / Vf are padded to 64 (8 tokens; padded Kf rows and Vf rows are zero, padded
// tokens score -inf: their p is exactly 0). Fragments (mma.sync.m16n8k16, lane = 4g + q):
//   S = (X + PE) Kf^T: 16 k-steps over the 256 dims; A = ldmatrix.x4 of the X tile + ldmatrix.x4
//     of the PE tile, added as half2; B = Kf rows (the n dimension) by ldmatrix.x4, two tokens a
//     load. n-tile t is token t: its accumulator holds, in lane 4g + q, rows g and g + 8 of heads
//     2q and 2q + 1, so each head's softmax over t is lane-local (no shuffles).
//   O = P Vf: the k-step over r in [16k, 16k + 16) is tokens 2k, 2k + 1, whose A fragment is
//     (c0, c1 | c2, c3) of S n-tiles 2k and 2k + 1 packed to fp16 (FlashAttention-2 register
//     reuse); B = Vf rows (the k dimension) by ldmatrix.x4.trans, two 8-column n-tiles a load;
//     32 n-tiles = 128 fp32 accumulators per lane.
// Epilogue: + bo + the residual X (from the X tile in shared memory), two-pass LayerNorm with quad
// shuffles, the fp16 result written back over the warp's own X rows in shared memory (each value
// read, then written, by the same lane) and stored to Y as whole 512-B rows (16-byte stores).
//
// Persistent: grid = one CTA per SM (206,080 B of dynamic shared memory), each CTA a contiguous
// range of the prompts' 64-pixel tiles (so Kf / Vf / kb are reloaded only where its range crosses
// a prompt); the next tile's X and PE are prefetched by cp.async into the second stage while the
// current one is computed. Y may be X itself (per-prompt X, x_batch = N * 256): a CTA reads a
// tile's rows before writing them and tiles never share rows.
//
// Floor (per prompt at N = 4096, T = 8): 2 x (N x 64 x 256 x 2) = 268 MFLOP (8.6 GFLOP at 32
// prompts: ~25 us at ~350 TFLOP/s of mma.sync); bytes: X read 2 MB + Y written 2 MB per prompt
// (128 MB at 32 prompts: ~30 us at ~4.5 TB/s on an H200), PE 2 MB L2-resident. Target: <= 40 us
// at 32 prompts, <= 12 us at 8 prompts on an H200 (sam_image_to_token with its q projection
// GEMM: ~120 + ~50 us at 32 prompts). Not yet measured.
#include "dense.cuh"
#include "mma.cuh"

using namespace finesam;

namespace {

constexpr int kDim = 256;                  // transformer_dim: X, PE, Kf, Vf, Y row width
constexpr int kHeads = 8;
constexpr int kMaxTokens = 8;
constexpr int kRows = kHeads * kMaxTokens;  // Kf / Vf rows, padded: 64
constexpr int kTile = 64;                   // pixels per tile: 4 warps x 16 rows
constexpr int kThreads = 128;
constexpr int kLd = kDim + 8;               // halves per shared row (conflict-free ldmatrix)
constexpr int kMatBytes = kTile * kLd * 2;  // one [64][264] fp16 tile: 33,792 B
constexpr int kChunks = kDim / 8;           // 16-byte chunks per row
static_assert(kRows == kTile, "Kf / Vf tiles share the X tile shape");

// Dynamic shared memory: Kf | Vf | X stage 0, 1 | PE stage 0, 1 | kb [64] | bo, gamma, beta
// [256] f32. Mirrors `FOLDED_I2T_SMEM_BYTES` in src/ops/sam_folded_i2t.rs.
constexpr int kKfOff = 0;
constexpr int kVfOff = kKfOff + kMatBytes;
constexpr int kXOff = kVfOff + kMatBytes;
constexpr int kPeOff = kXOff + 2 * kMatBytes;
constexpr int kKbOff = kPeOff + 2 * kMatBytes;
constexpr int kParamOff = kKbOff + kRows * 4;
constexpr int kSmemBytes = kParamOff + 3 * kDim * 4;
static_assert(kSmemBytes == 206080, "mirror FOLDED_I2T_SMEM_BYTES");
static_assert(kSmemBytes + 1024 <= 228 * 1024, "one CTA per SM on sm_90");

// Mirrors `FoldedI2tParams` in src/ops/sam_folded_i2t.rs.
struct FoldedI2tParams {
    const __half* x;      // [prompts][N][256] at x + b * x_batch (x_batch 0: shared)
    const __half* pe;     // [N][256] shared
    const __half* kf;     // [prompts][8T][256] at kf + b * f_batch
    const float* kb;      // [prompts][8T] at kb + b * kb_batch
    const __half* vf;     // [prompts][8T][256] at vf + b * f_batch
    const float* bo;      // [256]
    const float* gamma;   // [256]
    const float* beta;    // [256]
    __half* y;            // [prompts][N][256] (may be x when x_batch = N * 256)
    long long x_batch, f_batch, kb_batch;
    int prompts, tokens, pixels;
    float eps;
};

__device__ __forceinline__ uint32_t hadd2_u32(uint32_t a, uint32_t b) {
    __half2 r = __hadd2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
}

// cp.async of 64 rows of 256 halves (row stride 256 in global, kLd in shared); rows at or past
// `valid` are zero-filled without reading.
__device__ __forceinline__ void load_rows(__half* dst, const __half* src, int valid) {
    for (int i = threadIdx.x; i < kTile * kChunks; i += kThreads) {
        const int row = i / kChunks, c = i % kChunks;
        const bool live = row < valid;
        cp_async16(smem_addr(dst + row * kLd + c * 8), live ? src + row * kDim + c * 8 : src,
                   live ? 16 : 0);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 1)
    sam_folded_image_to_token(FoldedI2tParams p) {
    extern __shared__ __align__(16) unsigned char fi2t_smem[];
    __half* kf_s = reinterpret_cast<__half*>(fi2t_smem + kKfOff);
    __half* vf_s = reinterpret_cast<__half*>(fi2t_smem + kVfOff);
    __half* x_s = reinterpret_cast<__half*>(fi2t_smem + kXOff);
    __half* pe_s = reinterpret_cast<__half*>(fi2t_smem + kPeOff);
    float* kb_s = reinterpret_cast<float*>(fi2t_smem + kKbOff);
    float* bo_s = reinterpret_cast<float*>(fi2t_smem + kParamOff);
    float* gamma_s = bo_s + kDim;
    float* beta_s = gamma_s + kDim;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q = lane & 3;
    const Lanes L;
    const int T = p.tokens, R = kHeads * T;
    const int tiles_per_prompt = p.pixels / kTile;
    const int total = p.prompts * tiles_per_prompt;
    // Contiguous, balanced tile ranges: prompts change at most a few times per CTA.
    const int start = static_cast<int>(static_cast<long long>(total) * blockIdx.x / gridDim.x);
    const int end = static_cast<int>(static_cast<long long>(total) * (blockIdx.x + 1) / gridDim.x);
    if (start >= end) return;

    auto load_tokens = [&](int b) {
        load_rows(kf_s, p.kf + b * p.f_batch, R);
        load_rows(vf_s, p.vf + b * p.f_batch, R);
        if (tid < kRows) kb_s[tid] = tid < R ? p.kb[b * p.kb_batch + tid] : 0.f;
    };
    auto load_tile = [&](int tile, int stage) {
        const int b = tile / tiles_per_prompt;
        const long long row0 = static_cast<long long>(tile % tiles_per_prompt) * kTile;
        load_rows(x_s + stage * kTile * kLd, p.x + b * p.x_batch + row0 * kDim, kTile);
        load_rows(pe_s + stage * kTile * kLd, p.pe + row0 * kDim, kTile);
    };

    // Prologue: parameters, the first prompt's tokens and the first tile, one group.
    if (tid < kDim / 4) {
        cp_async16(smem_addr(bo_s + 4 * tid), p.bo + 4 * tid, 16);
        cp_async16(smem_addr(gamma_s + 4 * tid), p.gamma + 4 * tid, 16);
        cp_async16(smem_addr(beta_s + 4 * tid), p.beta + 4 * tid, 16);
    }
    load_tokens(start / tiles_per_prompt);
    load_tile(start, 0);
    cp_async_commit();

    const int pairs = (T + 1) / 2;  // token pairs: Kf ldmatrix.x4 loads and O k-steps
    const float log2e = 1.4426950408889634f;
    for (int tile = start; tile < end; ++tile) {
        const int stage = (tile - start) & 1;
        const int b = tile / tiles_per_prompt;
        // Tile `tile` has landed (this thread's copies; the barrier publishes everyone's) and
        // every warp is done with tile - 1, whose stage the prefetch below refills.
        cp_async_wait<0>();
        __syncthreads();
        if (tile != start && b != (tile - 1) / tiles_per_prompt) {
            // A new prompt: its tokens replace the old ones (no warp reads them any more).
            load_tokens(b);
            cp_async_commit();
            cp_async_wait<0>();
            __syncthreads();
        }
        if (tile + 1 < end) load_tile(tile + 1, stage ^ 1);
        cp_async_commit();

        __half* xt = x_s + stage * kTile * kLd;
        const __half* pt = pe_s + stage * kTile * kLd;
        const int r0 = warp * 16;  // the warp's first row in the tile

        // S = (X + PE) Kf^T over the 256 dims; n-tile t = token t (only tokens < T, in pairs).
        float s[kMaxTokens][4];
#pragma unroll
        for (int t = 0; t < kMaxTokens; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
        const uint32_t xa = smem_addr(xt + (r0 + L.a_row) * kLd + L.a_col);
        const uint32_t pa = smem_addr(pt + (r0 + L.a_row) * kLd + L.a_col);
        const uint32_t kfa = smem_addr(kf_s + L.b_row * kLd + L.b_col);
#pragma unroll 4
        for (int kk = 0; kk < kDim / 16; ++kk) {
            uint32_t ax[4], ap[4], a[4];
            ldmatrix_x4(ax, xa + kk * 32);
            ldmatrix_x4(ap, pa + kk * 32);
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = hadd2_u32(ax[i], ap[i]);
#pragma unroll
            for (int j = 0; j < kMaxTokens / 2; ++j) {
                if (j < pairs) {
                    uint32_t bf[4];
                    ldmatrix_x4(bf, kfa + (j * 16 * kLd + kk * 16) * 2);
                    mma16816(s[2 * j], a, bf[0], bf[1]);
                    mma16816(s[2 * j + 1], a, bf[2], bf[3]);
                }
            }
        }

        // + kb, softmax over the tokens of each head (lane-local: heads 2q + e, rows g, g + 8),
        // normalised; tokens past T get p = 0.
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            float kbv[kMaxTokens];
#pragma unroll
            for (int t = 0; t < kMaxTokens; ++t) kbv[t] = kb_s[t * kHeads + 2 * q + e];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int c = 2 * i + e;  // accumulator slot: row g (i 0) or g + 8, head 2q + e
                float mx = s[0][c] + kbv[0];
#pragma unroll
                for (int t = 1; t < kMaxTokens; ++t)
                    if (t < T) mx = fmaxf(mx, s[t][c] + kbv[t]);
                const float mxl = mx * log2e;
                float sum = 0.f;
#pragma unroll
                for (int t = 0; t < kMaxTokens; ++t) {
                    const float v = t < T ? exp2f(fmaf(s[t][c] + kbv[t], log2e, -mxl)) : 0.f;
                    s[t][c] = v;
                    sum += v;
                }
                const float inv = 1.f / sum;  // >= 1 term of exp2(~0)
#pragma unroll
                for (int t = 0; t < kMaxTokens; ++t) s[t][c] *= inv;
            }
        }

        // O = P Vf: k-step k = tokens 2k, 2k + 1 (A from S n-tiles 2k, 2k + 1), 32 n-tiles.
        float o[kDim / 8][4];
#pragma unroll
        for (int n = 0; n < kDim / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
        const uint32_t vfa =
            smem_addr(vf_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * kLd + (lane >> 4) * 8);
#pragma unroll
        for (int k = 0; k < kMaxTokens / 2; ++k) {
            if (k < pairs) {
                const uint32_t a[4] = {pack_half2(s[2 * k][0], s[2 * k][1]),
                                       pack_half2(s[2 * k][2], s[2 * k][3]),
                                       pack_half2(s[2 * k + 1][0], s[2 * k + 1][1]),
                                       pack_half2(s[2 * k + 1][2], s[2 * k + 1][3])};
#pragma unroll
                for (int n2 = 0; n2 < kDim / 16; ++n2) {
                    uint32_t bf[4];
                    ldmatrix_x4_trans(bf, vfa + (k * 16 * kLd + n2 * 16) * 2);
                    mma16816(o[2 * n2], a, bf[0], bf[1]);
                    mma16816(o[2 * n2 + 1], a, bf[2], bf[3]);
                }
            }
        }

        // + bo + residual X; LayerNorm over the 256 columns (quad shuffles: the warp owns them).
        const int g = L.g;
        __half* x_lo = xt + (r0 + g) * kLd;
        __half* x_hi = x_lo + 8 * kLd;
        float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
        for (int n = 0; n < kDim / 8; ++n) {
            const int c = n * 8 + L.q2;
            const float2 rl = __half22float2(*reinterpret_cast<const __half2*>(x_lo + c));
            const float2 rh = __half22float2(*reinterpret_cast<const __half2*>(x_hi + c));
            const float2 bias = *reinterpret_cast<const float2*>(bo_s + c);
            o[n][0] += bias.x + rl.x;
            o[n][1] += bias.y + rl.y;
            o[n][2] += bias.x + rh.x;
            o[n][3] += bias.y + rh.y;
            sum_lo += o[n][0] + o[n][1];
            sum_hi += o[n][2] + o[n][3];
        }
#pragma unroll
        for (int m = 1; m < 4; m <<= 1) {
            sum_lo += __shfl_xor_sync(0xffffffffu, sum_lo, m);
            sum_hi += __shfl_xor_sync(0xffffffffu, sum_hi, m);
        }
        const float mean_lo = sum_lo * (1.f / kDim), mean_hi = sum_hi * (1.f / kDim);
        float var_lo = 0.f, var_hi = 0.f;
#pragma unroll
        for (int n = 0; n < kDim / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                o[n][e] -= mean_lo;
                o[n][2 + e] -= mean_hi;
                var_lo += o[n][e] * o[n][e];
                var_hi += o[n][2 + e] * o[n][2 + e];
            }
        }
#pragma unroll
        for (int m = 1; m < 4; m <<= 1) {
            var_lo += __shfl_xor_sync(0xffffffffu, var_lo, m);
            var_hi += __shfl_xor_sync(0xffffffffu, var_hi, m);
        }
        const float inv_lo = rsqrtf(var_lo * (1.f / kDim) + p.eps);
        const float inv_hi = rsqrtf(var_hi * (1.f / kDim) + p.eps);
#pragma unroll
        for (int n = 0; n < kDim / 8; ++n) {
            const int c = n * 8 + L.q2;
            const float2 gm = *reinterpret_cast<const float2*>(gamma_s + c);
            const float2 bt = *reinterpret_cast<const float2*>(beta_s + c);
            *reinterpret_cast<__half2*>(x_lo + c) =
                __floats2half2_rn(o[n][0] * inv_lo * gm.x + bt.x, o[n][1] * inv_lo * gm.y + bt.y);
            *reinterpret_cast<__half2*>(x_hi + c) =
                __floats2half2_rn(o[n][2] * inv_hi * gm.x + bt.x, o[n][3] * inv_hi * gm.y + bt.y);
        }
        __syncwarp();
        // The warp's 16 finished rows, one 512-B row per store instruction.
        __half* y = p.y + (static_cast<long long>(b) * p.pixels +
                           static_cast<long long>(tile % tiles_per_prompt) * kTile + r0) * kDim;
#pragma unroll 4
        for (int r = 0; r < 16; ++r)
            *reinterpret_cast<uint4*>(y + r * kDim + lane * 8) =
                *reinterpret_cast<const uint4*>(xt + (r0 + r) * kLd + lane * 8);
    }
    cp_async_wait<0>();
}

// MobileSAM mask decoder, token side: the per-block tail ops on the [prompts x T, 256] token
// rows, each with its LayerNorm fused, so a two-way block's token path is 4 launches instead of
// 7. Reference (official MobileSAM `TwoWayAttentionBlock.forward`, `TwoWayTransformer.forward`):
//
// - sam_token_linear_ln: y = LayerNorm(x @ W^T + b (+ residual)) over 256 columns, K = 128 or
//   256: `queries = norm(queries + out_proj(attn_out))` of the self attention (norm1; block 0
//   has no residual: skip_first_layer_pe gives `queries = self_attn(...)`), of the token->image
//   cross attention (norm2) and of the final attention (norm_final_attn).
// - sam_token_mlp_{16,32,64} + sam_token_mlp_norm: y = LayerNorm(x + lin2(relu(lin1(x)))) with
//   D 256, hidden 2048: `queries = norm3(queries + mlp(queries))`, MLPBlock lin1 -> ReLU -> lin2.
// - sam_head_fold: the per-head token factors of the folded cross attentions (docs/MOBILESAM.md,
//   "Folded cross attentions"): y[row * 8 + h, c] = scale * sum_{d < 16} x[row, 16h + d] *
//   M[16h + d, c] (c < 256) and optionally yb[row * 8 + h] = scale * sum_d x[row, 16h + d] *
//   bias[16h + d], for up to two (x, M) pairs per launch. With M the token->image k_proj weight
//   this is Qf (q folded through k_proj: scores = Qf . (keys + pe) up to a per-row constant the
//   softmax drops); with the image->token q_proj weight and bias, Kf and kb; with the transposed
//   image->token out_proj weight, Vf (v folded through out_proj).
//
// fp16 x, W ([out, in] as nn.Linear stores it), residual and y; f32 biases, gamma and beta; fp32
// accumulation on mma.sync.m16n8k16 and an fp32 LayerNorm (mean, then the variance of the
// centred values, biased, eps from the caller); y is rounded to fp16 once. The pre-norm sum is
// never rounded to fp16 (the unfused GEMM + LayerNorm path stored it); the MLP's hidden
// activations are rounded to fp16 as the unfused lin1 GEMM stored them.
//
// sam_token_linear_ln: a 256-thread CTA owns 16 whole rows (so the LayerNorm is its epilogue);
// warp w owns columns 32w..32w+31 (4 n8 tiles). The x tile (16 x K) is copied once; W streams in
// K steps of 32 through a 4-stage cp.async ring (rows padded to 40 halves: conflict-free
// ldmatrix, as gemm.cu). Residual values are read into registers before the main loop, so y may
// alias the residual (each element is read, then written, by the same thread). Row statistics:
// quad shuffles, then the 8 warps' parts summed in warp order through shared memory.
//
// The MLP: the hidden dimension is split into 16 chunks of 128 (grid.x) and the rows into tiles
// of BM = 16, 32 or 64 (grid.y; the launcher takes the smallest tile that keeps 16 x tiles within
// one CTA per SM). A CTA computes h = fp16(relu(x W1[chunk]^T + b1[chunk])) for its rows into
// shared memory, then its partial lin2 product h W2[:, chunk]^T (fp32) and stores it to
// partial[chunk][row][256]. The ring carries W1's chunk rows in 4 K steps of 64 ([128][72]
// halves) and then W2's chunk columns in 4 steps of 32 ([256][40]). sam_token_mlp_norm (64
// threads per row, 4 columns each) sums the 16 partials of a row in chunk order, + b2 + x, and
// applies the LayerNorm. No atomics: every output element is the same fixed-order sum of the same
// mma chains for any BM, launch or graph replay (bitwise deterministic).
//
// Estimates (not measurements; H100/H200, 1-8 box prompts = 7-56 rows). One SM pulls ~64 B/clk
// from L2 (~127 GB/s at 1.98 GHz), so the weight bytes each CTA streams set the time beside the
// ~1-2 us of launch and first-load latency; FLOPs are negligible (2 x rows x 256 x K).
// - token linear: 1-4 CTAs, each streaming W once (K = 256: 128 KB, ~1.0 us; K = 128: 64 KB,
//   ~0.5 us) plus 16 rows of x, residual and y (~24 KB): ~2-3 us (K 256), ~1.5-2.5 us (K 128),
//   against 7.3 / 6.5 us measured for the GEMM + LayerNorm launches.
// - MLP: 16-64 CTAs, each streaming 64 KB of W1 and 64 KB of W2 (~1 us) and writing 16 KB of
//   partials per 16 rows; the reduction reads 16 KB per row (112 KB at 1 box, 0.9 MB at 8),
//   spread over rows / 4 CTAs, one L2 round trip: ~2-2.5 us + ~1-1.5 us, against 24.5 us
//   measured for lin1 + lin2 + LayerNorm. At 2208 rows (32 prompts x 69 tokens) it is compute-
//   and L2-bound instead: 4.6 GFLOP on mma.sync (~8 us), 36 MB of partials (~7 us).
// Measured (H200, ncu GPU time, which adds ~1-2 us to kernels this small; 2026-11-27): the
// linear op 4.8-6.6 us at 8 boxes, 5.0-7.1 us at 32; the MLP 5.2-5.8 + 3.5 us (norm) at 8, 7.1-7.5
// + 3.3-3.6 us at 32. Slower than estimated (the weight stream does not reach ~127 GB/s per SM
// from one CTA); the decode went from 200 / 435 / 1080 to 165 / 373 / 1024 us at 1 / 8 / 32 boxes.
#include "dense.cuh"
#include "mma.cuh"

using namespace finesam;

namespace {

constexpr int kDim = 256;       // transformer_dim: output columns of every op here
constexpr int kThreads = 256;   // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kStages = 4;      // cp.async ring depth
constexpr int kStageBytes = kDim * 40 * 2;  // one ring slot: 256 rows of 40 halves (20,480 B)

// ---------------------------------------------------------------------------------------------
// Token linear + residual + LayerNorm

constexpr int kLinRows = 16;                   // rows per CTA
constexpr int kLinKStep = 32;                  // K per ring slot
constexpr int kLinLdW = kLinKStep + 8;         // 40 halves (80 B): conflict-free ldmatrix
constexpr int kLinMaxK = 256;
constexpr int kLinLdXMax = kLinMaxK + 8;       // x tile row, halves (odd multiple of 8)
constexpr int kLinXOff = kStages * kStageBytes;                   // 81,920
constexpr int kLinParamOff = kLinXOff + kLinRows * kLinLdXMax * 2;  // + 8,448
constexpr int kLinSmem = kLinParamOff + 3 * kDim * 4;               // + 3,072 = 93,440
static_assert(kLinSmem == 93440, "mirrors TOKEN_LINEAR_SMEM_BYTES in src/ops/sam_tokens.rs");
static_assert(2 * (kLinSmem + 2048) <= 228 * 1024, "two CTAs per SM on sm_90");
static_assert(kLinSmem <= 99 * 1024, "fits sm_86/sm_89's 99 KB per block");

// Mirrors `TokenLinearParams` in src/ops/sam_tokens.rs.
struct TokenLinearParams {
    const __half* x;         // [rows, k]
    const __half* w;         // [256, k]
    const float* bias;       // [256]
    const __half* residual;  // [rows, 256] or null; may be y
    const float* gamma;      // [256]
    const float* beta;       // [256]
    __half* y;               // [rows, 256]
    int rows, k;
    float eps;
};

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 2) sam_token_linear_ln(TokenLinearParams p) {
    extern __shared__ __align__(128) unsigned char lin_smem[];
    __shared__ float sum_s[kLinRows][kWarps], var_s[kLinRows][kWarps];
    __half* x_s = reinterpret_cast<__half*>(lin_smem + kLinXOff);
    float* bias_s = reinterpret_cast<float*>(lin_smem + kLinParamOff);
    float* gamma_s = bias_s + kDim;
    float* beta_s = gamma_s + kDim;
    const int tid = threadIdx.x, warp = tid >> 5;
    const Lanes L;
    const int row0 = blockIdx.x * kLinRows;
    const int ldx = p.k + 8;
    const int steps = p.k / kLinKStep;

    // K step s of W: 256 rows x 32 halves = 1024 16-byte vectors, 4 per thread.
    auto load_step = [&](int s) {
        __half* slot = reinterpret_cast<__half*>(lin_smem + (s % kStages) * kStageBytes);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int v = tid + i * kThreads;
            const int n = v >> 2, c = (v & 3) * 8;
            cp_async16(smem_addr(slot + n * kLinLdW + c), p.w + n * p.k + s * kLinKStep + c, 16);
        }
    };
    // Group 0: the x tile (rows past the end zero-filled), bias / gamma / beta, K step 0.
    const int x_vecs = p.k / 8;
    for (int v = tid; v < kLinRows * x_vecs; v += kThreads) {
        const int r = v / x_vecs, c = (v % x_vecs) * 8;
        const bool ok = row0 + r < p.rows;
        cp_async16(smem_addr(x_s + r * ldx + c), p.x + (ok ? (row0 + r) * p.k + c : 0), ok ? 16 : 0);
    }
    if (tid < 3 * kDim / 4) {
        const int which = tid / (kDim / 4), c = (tid % (kDim / 4)) * 4;
        const float* src = which == 0 ? p.bias : which == 1 ? p.gamma : p.beta;
        cp_async16(smem_addr(bias_s + which * kDim + c), src + c, 16);
    }
    load_step(0);
    cp_async_commit();
#pragma unroll
    for (int s = 1; s < kStages - 1; ++s) {
        if (s < steps) load_step(s);
        cp_async_commit();
    }

    // The residual into registers now (its latency hides behind the main loop).
    const int n0 = warp * 32;
    const int r_lo = row0 + L.g, r_hi = r_lo + 8;
    float2 res[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = n0 + j * 8 + L.q2;
        res[j][0] = res[j][1] = make_float2(0.f, 0.f);
        if (p.residual != nullptr) {
            if (r_lo < p.rows)
                res[j][0] = __half22float2(*reinterpret_cast<const __half2*>(p.residual + r_lo * kDim + col));
            if (r_hi < p.rows)
                res[j][1] = __half22float2(*reinterpret_cast<const __half2*>(p.residual + r_hi * kDim + col));
        }
    }

    float acc[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    const uint32_t a_base = smem_addr(x_s + L.a_row * ldx + L.a_col);
#pragma unroll 1
    for (int s = 0; s < steps; ++s) {
        ring_advance<kStages>(s, steps, load_step);
        const __half* slot = reinterpret_cast<const __half*>(lin_smem + (s % kStages) * kStageBytes);
        const uint32_t b_base = smem_addr(slot + (n0 + L.b_row) * kLinLdW + L.b_col);
#pragma unroll
        for (int kk = 0; kk < kLinKStep; kk += 16)
            mma_k16<4, kLinLdW>(acc, a_base + (s * kLinKStep + kk) * 2, b_base + kk * 2);
    }

    // Epilogue: v = acc + bias + residual in fp32, LayerNorm over the 256 columns of each row.
    float lo = 0.f, hi = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = n0 + j * 8 + L.q2;
        const float b0 = bias_s[col], b1 = bias_s[col + 1];
        acc[j][0] += b0 + res[j][0].x;
        acc[j][1] += b1 + res[j][0].y;
        acc[j][2] += b0 + res[j][1].x;
        acc[j][3] += b1 + res[j][1].y;
        lo += acc[j][0] + acc[j][1];
        hi += acc[j][2] + acc[j][3];
    }
    const float2 sums = quad_row_totals(lo, hi, sum_s, L.g, warp, L.q2 == 0);
    const float mean_lo = sums.x * (1.f / kDim), mean_hi = sums.y * (1.f / kDim);
    lo = hi = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        acc[j][0] -= mean_lo;
        acc[j][1] -= mean_lo;
        acc[j][2] -= mean_hi;
        acc[j][3] -= mean_hi;
        lo += acc[j][0] * acc[j][0] + acc[j][1] * acc[j][1];
        hi += acc[j][2] * acc[j][2] + acc[j][3] * acc[j][3];
    }
    const float2 vars = quad_row_totals(lo, hi, var_s, L.g, warp, L.q2 == 0);
    const float inv_lo = rsqrtf(vars.x * (1.f / kDim) + p.eps);
    const float inv_hi = rsqrtf(vars.y * (1.f / kDim) + p.eps);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = n0 + j * 8 + L.q2;
        const float g0 = gamma_s[col], g1 = gamma_s[col + 1];
        const float c0 = beta_s[col], c1 = beta_s[col + 1];
        if (r_lo < p.rows)
            *reinterpret_cast<__half2*>(p.y + r_lo * kDim + col) = __floats2half2_rn(
                fmaf(acc[j][0] * inv_lo, g0, c0), fmaf(acc[j][1] * inv_lo, g1, c1));
        if (r_hi < p.rows)
            *reinterpret_cast<__half2*>(p.y + r_hi * kDim + col) = __floats2half2_rn(
                fmaf(acc[j][2] * inv_hi, g0, c0), fmaf(acc[j][3] * inv_hi, g1, c1));
    }
}

// ---------------------------------------------------------------------------------------------
// Token MLP: partial products per hidden chunk, then the ordered reduction + LayerNorm

namespace {


constexpr int kHidden = 2048;
constexpr int kChunk = 128;                  // hidden units per CTA
constexpr int kChunks = kHidden / kChunk;    // 16 (grid.x): mirrors MLP_CHUNKS
constexpr int kLdX = kDim + 8;               // x tile row, halves (33 16-byte units: odd)
constexpr int kLdH = kChunk + 8;             // h tile row, halves (17 units: odd)
constexpr int kW1Step = 64;                  // lin1 K per ring slot: W1 chunk [128][64]
constexpr int kLdW1 = kW1Step + 8;           // 72 halves (9 units: odd)
constexpr int kW2Step = 32;                  // lin2 K per ring slot: W2 [256][32]
constexpr int kLdW2 = kW2Step + 8;           // 40 halves
constexpr int kW1Steps = kDim / kW1Step;     // 4
constexpr int kW2Steps = kChunk / kW2Step;   // 4
constexpr int kMlpSteps = kW1Steps + kW2Steps;
static_assert(kChunk * kLdW1 * 2 <= kStageBytes && kDim * kLdW2 * 2 <= kStageBytes,
              "both step shapes fit a ring slot");

// Dynamic shared memory of sam_token_mlp_<BM>: the ring, the x tile, the h tile.
__host__ __device__ constexpr int mlp_smem(int bm) {
    return kStages * kStageBytes + bm * kLdX * 2 + bm * kLdH * 2;
}
static_assert(mlp_smem(16) == 94720 && mlp_smem(32) == 107520 && mlp_smem(64) == 133120,
              "mirrors TOKEN_MLP_TILES in src/ops/sam_tokens.rs");
static_assert(2 * (mlp_smem(32) + 1024) <= 228 * 1024, "two BM 16 / 32 CTAs per SM on sm_90");

// Mirrors `TokenMlpParams` in src/ops/sam_tokens.rs.
struct TokenMlpParams {
    const __half* x;  // [rows, 256]
    const __half* w1;  // [2048, 256]
    const float* b1;   // [2048]
    const __half* w2;  // [256, 2048]
    float* partial;    // [16][rows][256]
    int rows;
};

template <int BM>
__device__ __forceinline__ void token_mlp_body(const TokenMlpParams& p) {
    // Warp tiles. lin1 (BM x 128): kWM m16 rows x kWN column groups of kEN1 n8 tiles. lin2
    // (BM x 256): the same warp grid, kEN2 n8 tiles per warp.
    constexpr int kWM = BM / 16;
    constexpr int kWN = kWarps / kWM;
    constexpr int kEN1 = kChunk / 8 / kWN;
    constexpr int kEN2 = kDim / 8 / kWN;
    static_assert(kWM * kWN == kWarps && kEN1 % 2 == 0 && kEN2 % 2 == 0, "8 warps, n8 pairs");
    extern __shared__ __align__(128) unsigned char mlp_smem_raw[];
    __half* x_s = reinterpret_cast<__half*>(mlp_smem_raw + kStages * kStageBytes);
    __half* h_s = x_s + BM * kLdX;
    const int tid = threadIdx.x, warp = tid >> 5;
    const Lanes L;
    const int chunk = blockIdx.x;
    const int row0 = blockIdx.y * BM;
    const int wm = warp % kWM, wn = warp / kWM;

    // Ring step s: W1 rows chunk*128.., K 64s.. ([128][72]) for s < 4, then W2 rows 0..255,
    // hidden columns chunk*128 + 32(s-4).. ([256][40]). 1024 vectors either way, 4 per thread.
    auto load_step = [&](int s) {
        __half* slot = reinterpret_cast<__half*>(mlp_smem_raw + (s % kStages) * kStageBytes);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int v = tid + i * kThreads;
            if (s < kW1Steps) {
                const int n = v >> 3, c = (v & 7) * 8;
                cp_async16(smem_addr(slot + n * kLdW1 + c),
                           p.w1 + (chunk * kChunk + n) * kDim + s * kW1Step + c, 16);
            } else {
                const int n = v >> 2, c = (v & 3) * 8;
                cp_async16(smem_addr(slot + n * kLdW2 + c),
                           p.w2 + n * kHidden + chunk * kChunk + (s - kW1Steps) * kW2Step + c, 16);
            }
        }
    };
    // Group 0: the x tile (rows past the end zero-filled) and step 0; groups 1, 2: steps 1, 2.
    for (int v = tid; v < BM * (kDim / 8); v += kThreads) {
        const int r = v / (kDim / 8), c = (v % (kDim / 8)) * 8;
        const bool ok = row0 + r < p.rows;
        cp_async16(smem_addr(x_s + r * kLdX + c), p.x + (ok ? (row0 + r) * kDim + c : 0), ok ? 16 : 0);
    }
    ring_fill<kStages>(load_step);
    // lin1's bias for this warp's columns.
    float2 b1[kEN1];
#pragma unroll
    for (int j = 0; j < kEN1; ++j)
        b1[j] = __ldg(reinterpret_cast<const float2*>(p.b1 + chunk * kChunk + (wn * kEN1 + j) * 8 + L.q2));

    float acc1[kEN1][4];
#pragma unroll
    for (int j = 0; j < kEN1; ++j) acc1[j][0] = acc1[j][1] = acc1[j][2] = acc1[j][3] = 0.f;
    float acc2[kEN2][4];
#pragma unroll
    for (int j = 0; j < kEN2; ++j) acc2[j][0] = acc2[j][1] = acc2[j][2] = acc2[j][3] = 0.f;
    const uint32_t xa = smem_addr(x_s + (wm * 16 + L.a_row) * kLdX + L.a_col);
    const uint32_t ha = smem_addr(h_s + (wm * 16 + L.a_row) * kLdH + L.a_col);

#pragma unroll
    for (int s = 0; s < kMlpSteps; ++s) {
        // At s = kW1Steps the ring step's barrier also means every warp's h columns are in
        // shared memory.
        ring_advance<kStages>(s, kMlpSteps, load_step);
        const __half* slot = reinterpret_cast<const __half*>(mlp_smem_raw + (s % kStages) * kStageBytes);
        if (s < kW1Steps) {
            // lin1: acc1 += x[:, 64s..] W1[chunk rows, 64s..]^T.
            const uint32_t b_base = smem_addr(slot + (wn * kEN1 * 8 + L.b_row) * kLdW1 + L.b_col);
#pragma unroll
            for (int kk = 0; kk < kW1Step; kk += 16)
                mma_k16<kEN1, kLdW1>(acc1, xa + (s * kW1Step + kk) * 2, b_base + kk * 2);
            if (s == kW1Steps - 1) {
                // h = fp16(relu(acc1 + b1)), the unfused lin1 GEMM's epilogue and rounding.
#pragma unroll
                for (int j = 0; j < kEN1; ++j) {
                    const int col = (wn * kEN1 + j) * 8 + L.q2;
                    const int r = wm * 16 + L.g;
                    *reinterpret_cast<__half2*>(h_s + r * kLdH + col) = __floats2half2_rn(
                        fmaxf(acc1[j][0] + b1[j].x, 0.f), fmaxf(acc1[j][1] + b1[j].y, 0.f));
                    *reinterpret_cast<__half2*>(h_s + (r + 8) * kLdH + col) = __floats2half2_rn(
                        fmaxf(acc1[j][2] + b1[j].x, 0.f), fmaxf(acc1[j][3] + b1[j].y, 0.f));
                }
            }
        } else {
            // lin2: acc2 += h[:, 32(s-4)..] W2[:, chunk*128 + 32(s-4)..]^T.
            const int k0 = (s - kW1Steps) * kW2Step;
            const uint32_t b_base = smem_addr(slot + (wn * kEN2 * 8 + L.b_row) * kLdW2 + L.b_col);
#pragma unroll
            for (int kk = 0; kk < kW2Step; kk += 16)
                mma_k16<kEN2, kLdW2>(acc2, ha + (k0 + kk) * 2, b_base + kk * 2);
        }
    }

    // This chunk's fp32 partial of the rows in range (L2 only: the reduction kernel reads it).
    const int r_lo = row0 + wm * 16 + L.g, r_hi = r_lo + 8;
    float* out = p.partial + static_cast<long long>(chunk) * p.rows * kDim;
#pragma unroll
    for (int j = 0; j < kEN2; ++j) {
        const int col = (wn * kEN2 + j) * 8 + L.q2;
        if (r_lo < p.rows)
            __stcg(reinterpret_cast<float2*>(out + static_cast<long long>(r_lo) * kDim + col),
                   make_float2(acc2[j][0], acc2[j][1]));
        if (r_hi < p.rows)
            __stcg(reinterpret_cast<float2*>(out + static_cast<long long>(r_hi) * kDim + col),
                   make_float2(acc2[j][2], acc2[j][3]));
    }
}

// Mirrors `TokenMlpNormParams` in src/ops/sam_tokens.rs.
struct TokenMlpNormParams {
    const float* partial;    // [16][rows][256]
    const float* b2;         // [256]
    const __half* residual;  // [rows, 256]: the MLP's input x; may be y
    const float* gamma;      // [256]
    const float* beta;       // [256]
    __half* y;               // [rows, 256]
    int rows;
    float eps;
};

constexpr int kNormRowThreads = kDim / 4;                  // 64 threads per row, 4 columns each
constexpr int kNormRows = kThreads / kNormRowThreads;      // 4 rows per CTA

// The total of a row's values over its 64 threads (two warps): a warp reduction, then the two
// warps' parts in order through `s` (one barrier; every thread must call it).
__device__ __forceinline__ float norm_row_total(float v, float (*s)[2], int local, int half) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) s[local][half] = v;
    __syncthreads();
    return s[local][0] + s[local][1];
}

// Mirrors `HeadFoldParams` in src/ops/sam_tokens.rs: up to two folds (blockIdx.y picks one).
struct HeadFold {
    const __half* x;    // token rows of 128 halves (8 heads x 16), row stride x_stride
    const __half* m;    // [128][256]
    const float* bias;  // [128] or null
    __half* y;          // [rows * 8][256]
    float* yb;          // [rows * 8] when bias is set
    long long x_stride; // halves
    float scale;
};
struct HeadFoldParams {
    HeadFold fold[2];
    int rows;
};

constexpr int kFoldRows = 8;          // token rows per CTA (its weights are read once per CTA)
constexpr int kFoldHeadDim = 16;

}  // namespace

// One CTA per 8 token rows, fold (blockIdx.y) and head (blockIdx.z); thread c computes column c
// of the head's output for the 8 rows. Every load is issued before any use (one L2 round trip:
// the 16 weights of column c and the rows' 16 head dims), so the launch costs about one latency.
// Each output is one fp32 chain over the head's 16 dims in order, rounded to fp16 once.
extern "C" __global__ void __launch_bounds__(kThreads) sam_head_fold(HeadFoldParams p) {
    __shared__ float xs[kFoldRows][kFoldHeadDim];
    const HeadFold f = p.fold[blockIdx.y];
    const int h = blockIdx.z;
    const int row0 = blockIdx.x * kFoldRows;
    const int n = min(kFoldRows, p.rows - row0);
    const int c = threadIdx.x;
    float w[kFoldHeadDim];
#pragma unroll
    for (int d = 0; d < kFoldHeadDim; ++d)
        w[d] = __half2float(f.m[(h * kFoldHeadDim + d) * kDim + c]);
    if (threadIdx.x < kFoldRows * kFoldHeadDim) {
        const int r = threadIdx.x / kFoldHeadDim, d = threadIdx.x % kFoldHeadDim;
        xs[r][d] = r < n ? __half2float(f.x[(row0 + r) * f.x_stride + h * kFoldHeadDim + d]) : 0.f;
    }
    __syncthreads();
    for (int r = 0; r < n; ++r) {
        float acc = 0.f;
#pragma unroll
        for (int d = 0; d < kFoldHeadDim; ++d) acc = fmaf(xs[r][d], w[d], acc);
        f.y[(static_cast<long long>(row0 + r) * 8 + h) * kDim + c] = __float2half_rn(f.scale * acc);
    }
    if (f.bias != nullptr && threadIdx.x < n) {
        const int r = threadIdx.x;
        float acc = 0.f;
#pragma unroll
        for (int d = 0; d < kFoldHeadDim; ++d)
            acc = fmaf(xs[r][d], f.bias[h * kFoldHeadDim + d], acc);
        f.yb[static_cast<long long>(row0 + r) * 8 + h] = f.scale * acc;
    }
}

extern "C" __global__ void __launch_bounds__(kThreads, 2) sam_token_mlp_16(TokenMlpParams p) {
    token_mlp_body<16>(p);
}
extern "C" __global__ void __launch_bounds__(kThreads, 2) sam_token_mlp_32(TokenMlpParams p) {
    token_mlp_body<32>(p);
}
extern "C" __global__ void __launch_bounds__(kThreads, 1) sam_token_mlp_64(TokenMlpParams p) {
    token_mlp_body<64>(p);
}

// y = LayerNorm(((partial[0] + partial[1] + ... + partial[15]) + b2) + x), the sum in chunk
// order in fp32. Thread t of the CTA: row blockIdx.x * 4 + t / 64, columns 4 (t % 64)...
extern "C" __global__ void __launch_bounds__(kThreads) sam_token_mlp_norm(TokenMlpNormParams p) {
    __shared__ float sum_s[kNormRows][2], var_s[kNormRows][2];
    const int local = threadIdx.x / kNormRowThreads;
    const int half = (threadIdx.x % kNormRowThreads) / 32;
    const int row = blockIdx.x * kNormRows + local;
    const int c0 = (threadIdx.x % kNormRowThreads) * 4;
    // Rows past the end take part in the barriers and shuffles; they only skip memory.
    const bool ok = row < p.rows;
    const long long at = static_cast<long long>(ok ? row : 0) * kDim + c0;
    float4 part[kChunks];
#pragma unroll
    for (int c = 0; c < kChunks; ++c)
        part[c] = ok ? __ldcg(reinterpret_cast<const float4*>(p.partial + c * static_cast<long long>(p.rows) * kDim + at))
                     : make_float4(0.f, 0.f, 0.f, 0.f);
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    if (ok) {
        const uint2 raw = *reinterpret_cast<const uint2*>(p.residual + at);
        const float2 r01 = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
        const float2 r23 = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
        const float4 b = *reinterpret_cast<const float4*>(p.b2 + c0);
        float4 s = part[0];
#pragma unroll
        for (int c = 1; c < kChunks; ++c) {
            s.x += part[c].x;
            s.y += part[c].y;
            s.z += part[c].z;
            s.w += part[c].w;
        }
        v[0] = (s.x + b.x) + r01.x;
        v[1] = (s.y + b.y) + r01.y;
        v[2] = (s.z + b.z) + r23.x;
        v[3] = (s.w + b.w) + r23.y;
    }
    const float mean = norm_row_total(v[0] + v[1] + v[2] + v[3], sum_s, local, half) * (1.f / kDim);
    float sq = 0.f;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        v[e] -= mean;
        sq += v[e] * v[e];
    }
    const float inv = rsqrtf(norm_row_total(sq, var_s, local, half) * (1.f / kDim) + p.eps);
    if (!ok) return;
    const float4 g = *reinterpret_cast<const float4*>(p.gamma + c0);
    const float4 b = *reinterpret_cast<const float4*>(p.beta + c0);
    const __half2 y01 = __floats2half2_rn(fmaf(v[0] * inv, g.x, b.x), fmaf(v[1] * inv, g.y, b.y));
    const __half2 y23 = __floats2half2_rn(fmaf(v[2] * inv, g.z, b.z), fmaf(v[3] * inv, g.w, b.w));
    uint2 out;
    out.x = *reinterpret_cast<const uint32_t*>(&y01);
    out.y = *reinterpret_cast<const uint32_t*>(&y23);
    *reinterpret_cast<uint2*>(p.y + at) = out;
}

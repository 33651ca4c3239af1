// Tensor-core GEMM and implicit-GEMM convolution with a fused epilogue (fp16 in, fp32
// accumulate, fp16 out):
//
//   Y[b][m, n] = act(alpha * sum_k X[b][m, k] * W[b][n, k] + bias[n])  (+ R[b][m, n])
//
// W is in PyTorch Linear layout [out, in] (row n holds the K inputs of output n), so this is
// torch.nn.functional.linear(X, W, bias) followed by the activation (nn.GELU() exact erf, or
// nn.ReLU()) and an optional residual, added after the activation (`x + mlp(x)`) or before it
// (`act(conv(x) + shortcut)`, TinyViT's MBConv). `b` indexes an optional batch (grid.y) with
// element strides for every operand; every matrix has its own row stride.
//
// The conv_* kernels are the same GEMM with X replaced by the implicit im2col matrix of an NHWC
// input: torch.nn.functional.conv2d(x, w, bias, stride, padding) with x NHWC [B, H, W, Cin],
// w as [Cout, kh, kw, Cin] (src/ops/conv.rs converts PyTorch's [Cout, Cin, kh, kw]), and the
// output NHWC [B*Ho*Wo, Cout] with a row (pixel) stride. Row m = (b, oy, ox), column
// k = (ky, kx, ci); Cin % 8 == 0 so every 16-byte chunk of a row lies inside one input pixel.
//
// Tiling: a block computes BM x BN of Y with WARPS_M x WARPS_N warps, each warp a (BM/WARPS_M)
// x (BN/WARPS_N) tile of mma.sync.m16n8k16 (fp16 x fp16 -> fp32). K advances 32 at a time
// through a STAGES-deep cp.async ring in shared memory (rows padded to 40 halves = 80 bytes so
// the 8 row addresses of every ldmatrix phase fall on distinct bank quads). Out-of-range rows
// and K chunks are zero-filled by cp.async (src-size 0), so any M, N and K % 8 == 0 work. The
// epilogue stages alpha * acc in shared memory as fp32 and then writes Y in 16-byte rows
// (coalesced, with 16-byte residual reads), or element-wise at ragged edges and odd strides.
// Blocks are ordered in groups of 8 M-tiles so neighbours share X and W rows in L2.
//
// Window scatter (gemm_* with win > 0): the rows of X are TinyViT's window-partitioned tokens;
// each output row goes to its pixel of the unpartitioned map (crop: padding tokens are
// dropped), residual read at that pixel: the attention's proj + window reverse + `res_x + x`
// of TinyViTBlock.forward in one epilogue.
#include "dense.cuh"
#include "mma.cuh"

using namespace finesam;

namespace {

constexpr int kBK = 32;           // K per pipeline stage
constexpr int kSmemLd = kBK + 8;  // padded smem row, in halves (80 bytes)
constexpr int kGroupM = 8;        // M-tiles per L2 group

// Mirrors `GemmParams` in src/ops/gemm.rs (passed by value; keep the field order in sync).
struct GemmParams {
    const __half* x;
    const __half* w;
    const float* bias;        // [N] or null
    const __half* residual;   // or null
    __half* y;
    long long ldx, ldw, ldr, ldy;  // row strides, elements
    long long bsx, bsw, bsr, bsy;  // batch strides, elements (grid.y)
    int m, n, k;
    int act;                  // Activation
    int residual_before_act;  // 1: act(v + r); 0: act(v) + r
    int vec_out;              // y and residual rows are 16-byte aligned
    float alpha;
    // Implicit-GEMM convolution geometry (conv_* kernels only).
    int conv_h, conv_w, conv_cin, conv_kh, conv_kw, conv_stride, conv_pad, conv_ho, conv_wo;
    // Window scatter (gemm_* only; win 0 = off): row m is token m % (win * win) of window
    // m / (win * win) over the [map_h, map_w] map padded to whole windows; it is stored (and
    // its residual read) at that map pixel, and padding tokens are not stored.
    int win, map_h, map_w, windows_y, windows_x;
    // Split-K (gemm_splitk_* only): K is cut into `segments` segments of `seg_k` (a multiple of
    // kBK); split z = blockIdx.z owns segments [z * segments / splits, (z + 1) * segments /
    // splits). Each segment's partial sum (alpha not applied) goes to
    // ws[((segment * batch + b) * m + row) * ldws + col]; counters[b * tiles + tile] counts
    // arrivals and is reset to 0 by the last block.
    float* ws;
    int* counters;
    int seg_k, segments, splits, ldws;
};

// alpha * acc (already applied) + bias, residual before or after the activation.
__device__ __forceinline__ float epilogue(float v, float bias, float r, const GemmParams& p) {
    v += bias;
    if (p.residual_before_act) v += r;
    v = activate(v, p.act);
    if (!p.residual_before_act) v += r;
    return v;
}

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES>
struct Tile {
    static constexpr int kThreads = WARPS_M * WARPS_N * 32;
    static constexpr int kWarpM = BM / WARPS_M;
    static constexpr int kWarpN = BN / WARPS_N;
    static constexpr int kMmaM = kWarpM / 16;
    static constexpr int kMmaN = kWarpN / 8;
    // 16-byte chunks per stage: 4 per row (kBK = 32 halves).
    static constexpr int kAIters = BM * (kBK / 8) / kThreads;
    static constexpr int kBIters = BN * (kBK / 8) / kThreads;
    static constexpr int kLdc = BN + 8;  // fp32 staging row: float2 writes of 16 lanes conflict-free
    static constexpr int kPipeBytes = STAGES * (BM + BN) * kSmemLd * 2;
    static constexpr int kStageCBytes = BM * kLdc * 4;
    static constexpr int kSmemBytes = kPipeBytes > kStageCBytes ? kPipeBytes : kStageCBytes;
    static_assert(kMmaN % 2 == 0, "B fragments are loaded two n8 tiles at a time");
    static_assert(kAIters * kThreads == BM * 4 && kBIters * kThreads == BN * 4, "loader split");
};

// Per-thread state of the A (X or im2col) loader: one entry per row chunk it copies.
template <int ITERS, int THREADS, bool CONV>
struct ALoader;

template <int ITERS, int THREADS>
struct ALoader<ITERS, THREADS, false> {
    const __half* row[ITERS];
    bool valid[ITERS];
    __device__ void init(const GemmParams& p, const __half* x, int m0, int tid) {
#pragma unroll
        for (int i = 0; i < ITERS; ++i) {
            const int r = m0 + (tid >> 2) + i * (THREADS >> 2);
            valid[i] = r < p.m;
            row[i] = x + static_cast<long long>(valid[i] ? r : 0) * p.ldx;
        }
    }
    __device__ void load(const GemmParams& p, uint32_t dst, int k0, int tid) const {
        const int kc = k0 + (tid & 3) * 8;
        const bool kin = kc < p.k;
#pragma unroll
        for (int i = 0; i < ITERS; ++i) {
            const bool ok = valid[i] && kin;
            cp_async16(dst + i * (THREADS >> 2) * kSmemLd * 2, row[i] + (ok ? kc : 0),
                       ok ? 16 : 0);
        }
    }
};

template <int ITERS, int THREADS>
struct ALoader<ITERS, THREADS, true> {
    const __half* image[ITERS];  // start of this row's batch image
    int iy0[ITERS], ix0[ITERS];  // top-left input pixel of the receptive field
    __device__ void init(const GemmParams& p, const __half* x, int m0, int tid) {
        const int hw = p.conv_ho * p.conv_wo;
#pragma unroll
        for (int i = 0; i < ITERS; ++i) {
            const int r = m0 + (tid >> 2) + i * (THREADS >> 2);
            const int b = r / hw;
            const int rem = r - b * hw;
            const int oy = rem / p.conv_wo;
            const int ox = rem - oy * p.conv_wo;
            image[i] = x + static_cast<long long>(b) * p.conv_h * p.conv_w * p.conv_cin;
            // Rows past M get an impossible pixel so every tap reads as padding.
            iy0[i] = r < p.m ? oy * p.conv_stride - p.conv_pad : -(1 << 20);
            ix0[i] = ox * p.conv_stride - p.conv_pad;
        }
    }
    __device__ void load(const GemmParams& p, uint32_t dst, int k0, int tid) const {
        const int kc = k0 + (tid & 3) * 8;
        const int tap = kc / p.conv_cin;
        const int ci = kc - tap * p.conv_cin;
        const int ky = tap / p.conv_kw;
        const int kx = tap - ky * p.conv_kw;
        const bool kin = kc < p.k;
#pragma unroll
        for (int i = 0; i < ITERS; ++i) {
            const int iy = iy0[i] + ky;
            const int ix = ix0[i] + kx;
            const bool ok = kin && iy >= 0 && iy < p.conv_h && ix >= 0 && ix < p.conv_w;
            const long long offset =
                ok ? (static_cast<long long>(iy) * p.conv_w + ix) * p.conv_cin + ci : 0;
            cp_async16(dst + i * (THREADS >> 2) * kSmemLd * 2, image[i] + offset, ok ? 16 : 0);
        }
    }
};

// The 8 staged fp32 values of chunk `idx` (row r, columns c..c+7) of the tile in s_c. Lanes 4-7
// of each quarter-warp read their two float4 halves in the opposite order, so the 8 lanes of
// one load instruction cover all 32 banks (no 2-way conflict).
template <class T>
__device__ __forceinline__ void load_staged8(const float* s_c, int r, int c, int idx, float (&v)[8]) {
    const int swap = (idx >> 2) & 1;
    const float* src = s_c + r * T::kLdc + c;
    const float4 first = *reinterpret_cast<const float4*>(src + 4 * swap);
    const float4 second = *reinterpret_cast<const float4*>(src + 4 - 4 * swap);
    const float4 lo = swap ? second : first;
    const float4 hi = swap ? first : second;
    v[0] = lo.x; v[1] = lo.y; v[2] = lo.z; v[3] = lo.w;
    v[4] = hi.x; v[5] = hi.y; v[6] = hi.z; v[7] = hi.w;
}

// The fused epilogue of one BM x BN tile whose alpha * acc values are staged (fp32) in s_c:
// bias, residual, activation, then 16-byte (or element) stores, rows scattered for windows.
template <class T>
__device__ __forceinline__ void store_tile(const GemmParams& p, const float* s_c, int m0, int n0,
                                           long long batch, int tid) {
    constexpr int BM = T::kBM, BN = T::kBN;
    __half* y = p.y + batch * p.bsy;
    const __half* res = p.residual ? p.residual + batch * p.bsr : nullptr;
    constexpr int kChunksPerRow = BN / 8;
    // Common case (16-byte rows, no window scatter, a whole tile): every thread first loads
    // all its residual chunks and biases, then stores; one dependent L2 trip per thread instead
    // of one per chunk (the loop below cannot hoist them: y may alias the residual, which is
    // fine here as each element is read and written by the same thread).
    constexpr int kIters = BM * kChunksPerRow / T::kThreads;
    static_assert(BM * kChunksPerRow % T::kThreads == 0, "whole store iterations");
    const bool bias_vec = (reinterpret_cast<uintptr_t>(p.bias) & 15) == 0;  // null too
    if (p.vec_out && p.win == 0 && bias_vec && m0 + BM <= p.m && n0 + BN <= p.n) {
        // A thread's chunks all lie in the same 8 columns (kThreads is a multiple of the
        // chunks per row), so it needs one 8-float bias.
        static_assert(T::kThreads % kChunksPerRow == 0, "one column chunk per thread");
        const int c = (tid % kChunksPerRow) * 8;
        float b[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (p.bias) {
            const float4 b0 = *reinterpret_cast<const float4*>(p.bias + n0 + c);
            const float4 b1 = *reinterpret_cast<const float4*>(p.bias + n0 + c + 4);
            b[0] = b0.x; b[1] = b0.y; b[2] = b0.z; b[3] = b0.w;
            b[4] = b1.x; b[5] = b1.y; b[6] = b1.z; b[7] = b1.w;
        }
        uint4 rv[kIters];
#pragma unroll
        for (int it = 0; it < kIters; ++it) {
            const int r = (tid + it * T::kThreads) / kChunksPerRow;
            rv[it] = res ? *reinterpret_cast<const uint4*>(res + (m0 + r) * p.ldr + n0 + c)
                         : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int it = 0; it < kIters; ++it) {
            const int idx = tid + it * T::kThreads;
            const int r = idx / kChunksPerRow;
            float v[8];
            load_staged8<T>(s_c, r, c, idx, v);
            float rf[8];
            unpack8(rv[it], rf);
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] = epilogue(v[e], b[e], rf[e], p);
            *reinterpret_cast<uint4*>(y + (m0 + r) * p.ldy + n0 + c) = pack8(v);
        }
        return;
    }
    for (int idx = tid; idx < BM * kChunksPerRow; idx += T::kThreads) {
        const int r = idx / kChunksPerRow;
        const int c = (idx - r * kChunksPerRow) * 8;
        const int gm = m0 + r;
        const int gn = n0 + c;
        if (gm >= p.m || gn >= p.n) continue;
        long long out_row = gm;
        if (p.win > 0) {
            const int tokens = p.win * p.win;
            const int token = gm % tokens;
            const int window = gm / tokens;
            const int wx = window % p.windows_x;
            const int wy = (window / p.windows_x) % p.windows_y;
            const int img = window / (p.windows_x * p.windows_y);
            const int py = wy * p.win + token / p.win;
            const int px = wx * p.win + token % p.win;
            if (py >= p.map_h || px >= p.map_w) continue;  // a padding token: not stored
            out_row = (static_cast<long long>(img) * p.map_h + py) * p.map_w + px;
        }
        float v[8];
        load_staged8<T>(s_c, r, c, idx, v);
        __half* yrow = y + out_row * p.ldy + gn;
        const __half* rrow = res ? res + out_row * p.ldr + gn : nullptr;
        if (p.vec_out && gn + 8 <= p.n) {
            float rv[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            if (rrow) unpack8(*reinterpret_cast<const uint4*>(rrow), rv);
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] = epilogue(v[e], p.bias ? p.bias[gn + e] : 0.f, rv[e], p);
            const uint4 out = pack8(v);
            *reinterpret_cast<uint4*>(yrow) = out;
        } else {
            // Ragged N edge or unaligned output/residual rows: element by element.
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                if (gn + e < p.n) {
                    const float b = p.bias ? p.bias[gn + e] : 0.f;
                    const float r = rrow ? __half2float(rrow[e]) : 0.f;
                    yrow[e] = __float2half_rn(epilogue(v[e], b, r, p));
                }
            }
        }
    }
}

// SPLIT: the split-K variant (gemm_splitk_*): this block computes the segments of split
// blockIdx.z, stores each segment's partial tile to p.ws, and the last block to arrive at the
// output tile sums all segments in segment order and runs the same epilogue. Every element's
// value is then sum over segments (in order) of its per-segment mma chain, which depends on
// neither the tile nor the split count: all split counts and tiles give identical bits.
template <class T, bool CONV, bool SPLIT>
__device__ __forceinline__ void gemm_body(const GemmParams& p) {
    constexpr int BM = T::kBM, BN = T::kBN;
    extern __shared__ __align__(128) unsigned char smem[];
    __half* s_a = reinterpret_cast<__half*>(smem);      // [STAGES][BM][kSmemLd]
    __half* s_b = s_a + T::kStages * BM * kSmemLd;      // [STAGES][BN][kSmemLd]

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int warp_m = warp / T::kWarpsN;
    const int warp_n = warp % T::kWarpsN;

    // Grouped tile order: kGroupM M-tiles sweep all N-tiles before the next group starts.
    const int m_tiles = (p.m + BM - 1) / BM;
    const int n_tiles = (p.n + BN - 1) / BN;
    const int pid = blockIdx.x;
    const int group = pid / (kGroupM * n_tiles);
    const int first_m = group * kGroupM;
    const int group_rows = min(m_tiles - first_m, kGroupM);
    const int in_group = pid - group * kGroupM * n_tiles;
    const int m0 = (first_m + in_group % group_rows) * BM;
    const int n0 = (in_group / group_rows) * BN;

    const long long batch = blockIdx.y;
    const __half* x = p.x + batch * p.bsx;
    const __half* w = p.w + batch * p.bsw;

    ALoader<T::kAIters, T::kThreads, CONV> a_loader;
    a_loader.init(p, x, m0, tid);
    const __half* b_row[T::kBIters];
    bool b_valid[T::kBIters];
#pragma unroll
    for (int i = 0; i < T::kBIters; ++i) {
        const int r = n0 + (tid >> 2) + i * (T::kThreads >> 2);
        b_valid[i] = r < p.n;
        b_row[i] = w + static_cast<long long>(b_valid[i] ? r : 0) * p.ldw;
    }
    // This thread's chunk within a stage: row tid/4, halves (tid%4)*8.
    const uint32_t a_dst0 = smem_addr(s_a + (tid >> 2) * kSmemLd + (tid & 3) * 8);
    const uint32_t b_dst0 = smem_addr(s_b + (tid >> 2) * kSmemLd + (tid & 3) * 8);
    constexpr uint32_t kAStageBytes = BM * kSmemLd * 2;
    constexpr uint32_t kBStageBytes = BN * kSmemLd * 2;

    // K range of this block: all of K, or the segments of split blockIdx.z.
    int k_begin = 0;
    int k_len = p.k;
    int seg_first = 0;
    if constexpr (SPLIT) {
        const int z = blockIdx.z;
        seg_first = z * p.segments / p.splits;
        const int seg_end = (z + 1) * p.segments / p.splits;
        k_begin = seg_first * p.seg_k;
        k_len = min(p.k, seg_end * p.seg_k) - k_begin;
    }

    auto load_stage = [&](int kt, int stage) {
        const int k0 = k_begin + kt * kBK;
        a_loader.load(p, a_dst0 + stage * kAStageBytes, k0, tid);
        const int kc = k0 + (tid & 3) * 8;
        const bool kin = kc < p.k;
#pragma unroll
        for (int i = 0; i < T::kBIters; ++i) {
            const bool ok = b_valid[i] && kin;
            cp_async16(b_dst0 + stage * kBStageBytes + i * (T::kThreads >> 2) * kSmemLd * 2,
                       b_row[i] + (ok ? kc : 0), ok ? 16 : 0);
        }
    };

    float acc[T::kMmaM][T::kMmaN][4];
#pragma unroll
    for (int i = 0; i < T::kMmaM; ++i)
#pragma unroll
        for (int j = 0; j < T::kMmaN; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    const int k_tiles = (k_len + kBK - 1) / kBK;
#pragma unroll
    for (int s = 0; s < T::kStages - 1; ++s) {
        if (s < k_tiles) load_stage(s, s);
        cp_async_commit();
    }

    // ldmatrix lane addresses (bytes within a stage). A x4: lanes 0-15 rows 0-15 at k 0,
    // lanes 16-31 rows 0-15 at k 8. B x4: matrices (n 0-7, k 0), (n 0-7, k 8), (n 8-15, k 0),
    // (n 8-15, k 8) -> the b0/b1 registers of two adjacent n8 tiles.
    const uint32_t a_frag0 =
        smem_addr(s_a + (warp_m * T::kWarpM + (lane & 15)) * kSmemLd + (lane >> 4) * 8);
    const uint32_t b_frag0 = smem_addr(
        s_b + (warp_n * T::kWarpN + (lane & 7) + ((lane >> 4) << 3)) * kSmemLd +
        ((lane >> 3) & 1) * 8);

    for (int kt = 0; kt < k_tiles; ++kt) {
        cp_async_wait<T::kStages - 2>();
        __syncthreads();
        // Refill the stage consumed in the previous iteration (everyone is past it now).
        const int next = kt + T::kStages - 1;
        if (next < k_tiles) load_stage(next, next % T::kStages);
        cp_async_commit();

        const int stage = kt % T::kStages;
        const uint32_t a_base = a_frag0 + stage * kAStageBytes;
        const uint32_t b_base = b_frag0 + stage * kBStageBytes;
#pragma unroll
        for (int kk = 0; kk < kBK; kk += 16) {
            uint32_t a[T::kMmaM][4];
            uint32_t b[T::kMmaN][2];
#pragma unroll
            for (int i = 0; i < T::kMmaM; ++i)
                ldmatrix_x4(a[i], a_base + (i * 16 * kSmemLd + kk) * 2);
#pragma unroll
            for (int j = 0; j < T::kMmaN / 2; ++j) {
                uint32_t r[4];
                ldmatrix_x4(r, b_base + (j * 16 * kSmemLd + kk) * 2);
                b[2 * j][0] = r[0];
                b[2 * j][1] = r[1];
                b[2 * j + 1][0] = r[2];
                b[2 * j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < T::kMmaM; ++i)
#pragma unroll
                for (int j = 0; j < T::kMmaN; ++j) mma16816(acc[i][j], a[i], b[j][0], b[j][1]);
        }
        if constexpr (SPLIT) {
            // End of a segment (or of this split's K range): store its partial tile, restart.
            const int seg_tiles = p.seg_k / kBK;
            if ((kt + 1) % seg_tiles == 0 || kt + 1 == k_tiles) {
                const int seg = seg_first + kt / seg_tiles;
                float* ws = p.ws + (static_cast<long long>(seg) * gridDim.y + blockIdx.y) *
                                       p.m * static_cast<long long>(p.ldws);
                const int r0 = m0 + warp_m * T::kWarpM + (lane >> 2);
                const int c0 = n0 + warp_n * T::kWarpN + (lane & 3) * 2;
#pragma unroll
                for (int i = 0; i < T::kMmaM; ++i)
#pragma unroll
                    for (int j = 0; j < T::kMmaN; ++j) {
                        const int c = c0 + j * 8;
#pragma unroll
                        for (int h = 0; h < 2; ++h) {
                            const int r = r0 + i * 16 + h * 8;
                            float* dst = ws + static_cast<long long>(r) * p.ldws + c;
                            if (r < p.m && c + 1 < p.n) {
                                __stcg(reinterpret_cast<float2*>(dst),
                                       make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]));
                            } else if (r < p.m && c < p.n) {
                                __stcg(dst, acc[i][j][2 * h]);
                            }
                            acc[i][j][2 * h] = 0.f;
                            acc[i][j][2 * h + 1] = 0.f;
                        }
                    }
            }
        }
    }

    // ---- Epilogue: stage alpha * acc as fp32, then write whole 16-byte output chunks. ----
    cp_async_wait<0>();
    __syncthreads();
    float* s_c = reinterpret_cast<float*>(smem);  // [BM][kLdc]
    if constexpr (SPLIT) {
        // Publish this split's partials; the last block of the tile reduces them.
        __shared__ int s_last;
        __threadfence();
        __syncthreads();
        if (tid == 0) {
            int* counter = p.counters + blockIdx.y * gridDim.x + blockIdx.x;
            const bool last = atomicAdd(counter, 1) == p.splits - 1;
            if (last) *counter = 0;  // every split has arrived: ready for the next launch
            s_last = last;
        }
        __syncthreads();
        if (!s_last) return;
        __threadfence();
        // Fixed order over the segments: the sum does not depend on which block is last.
        const int rows = min(BM, p.m - m0);
        const long long seg_stride = static_cast<long long>(gridDim.y) * p.m * p.ldws;
        const float* ws = p.ws + static_cast<long long>(blockIdx.y) * p.m * p.ldws;
        for (int idx = tid; idx < rows * BN; idx += T::kThreads) {
            const int r = idx / BN;
            const int c = idx - r * BN;
            if (n0 + c >= p.n) continue;
            const float* src = ws + static_cast<long long>(m0 + r) * p.ldws + n0 + c;
            float total = 0.f;
            for (int seg = 0; seg < p.segments; ++seg) total += __ldcg(src + seg * seg_stride);
            s_c[r * T::kLdc + c] = __fmul_rn(p.alpha, total);
        }
    } else {
        const int r0 = warp_m * T::kWarpM + (lane >> 2);
        const int c0 = warp_n * T::kWarpN + (lane & 3) * 2;
#pragma unroll
        for (int i = 0; i < T::kMmaM; ++i)
#pragma unroll
            for (int j = 0; j < T::kMmaN; ++j) {
                float* dst = s_c + (r0 + i * 16) * T::kLdc + c0 + j * 8;
                *reinterpret_cast<float2*>(dst) =
                    make_float2(p.alpha * acc[i][j][0], p.alpha * acc[i][j][1]);
                *reinterpret_cast<float2*>(dst + 8 * T::kLdc) =
                    make_float2(p.alpha * acc[i][j][2], p.alpha * acc[i][j][3]);
            }
    }
    __syncthreads();
    store_tile<T>(p, s_c, m0, n0, blockIdx.y, tid);
}

template <int BM_, int BN_, int WARPS_M, int WARPS_N, int STAGES>
struct Config : Tile<BM_, BN_, WARPS_M, WARPS_N, STAGES> {
    static constexpr int kBM = BM_, kBN = BN_, kWarpsN = WARPS_N, kStages = STAGES;
};

// The tile configurations (keep in sync with GemmTile in src/ops/gemm.rs: sizes, threads,
// dynamic shared memory).
using Big = Config<128, 128, 2, 4, 4>;   // 256 threads, warp tile 64x32, 80 KiB smem
using Wide = Config<128, 64, 2, 2, 4>;   // 128 threads, warp tile 64x32, 60 KiB smem
using Small = Config<64, 64, 2, 2, 4>;   // 128 threads, warp tile 32x32, 40 KiB smem
// The host sets these as the kernels' dynamic shared memory (GemmTile::smem_bytes).
static_assert(Big::kSmemBytes == 81920 && Wide::kSmemBytes == 61440 && Small::kSmemBytes == 40960,
              "dynamic shared memory sizes must match GemmTile::smem_bytes in src/ops/gemm.rs");

}  // namespace

#define FINESAM_GEMM_KERNELS(NAME, CFG, MIN_BLOCKS)                                           \
    extern "C" __global__ void __launch_bounds__(CFG::kThreads, MIN_BLOCKS)                   \
        gemm_##NAME(const GemmParams p) {                                                     \
        gemm_body<CFG, false, false>(p);                                                      \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(CFG::kThreads, MIN_BLOCKS)                   \
        conv_igemm_##NAME(const GemmParams p) {                                               \
        gemm_body<CFG, true, false>(p);                                                       \
    }                                                                                         \
    /* Split-K shapes have few blocks: no occupancy floor, so the 128x128 tile cannot spill */ \
    extern "C" __global__ void __launch_bounds__(CFG::kThreads, 1)                            \
        gemm_splitk_##NAME(const GemmParams p) {                                              \
        gemm_body<CFG, false, true>(p);                                                       \
    }

FINESAM_GEMM_KERNELS(128x128, Big, 2)
FINESAM_GEMM_KERNELS(128x64, Wide, 3)
FINESAM_GEMM_KERNELS(64x64, Small, 4)

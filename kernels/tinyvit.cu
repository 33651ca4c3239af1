// Fused TinyViT blocks (fp16 storage, fp32 accumulation): the convolution blocks below and, at
// the end of the file, the transformer block's MLP (tinyvit_mlp_c*). The convolution blocks are
// the chain
//
//     h1 = gelu(conv1x1(x, w1, b1))                     x NHWC [B, H, W, CIN] -> HID channels
//     h2 = gelu(depthwise3x3(h1, w2, b2, stride S, pad 1))   zero padding of h1 at the border
//     y  = conv1x1(h2, w3, b3) (+ x, then gelu for the MBConv)  -> NHWC [B, Ho, Wo, COUT]
//
// of tiny_vit_sam.py in eval mode with the BatchNorms folded into the convolutions as
// `Conv2d_BN.fuse()` (nn.GELU, exact erf form; evaluated by `gelu` below to ~1e-7):
//
// mbconv_c64_e4: `MBConv.forward` for 64 channels, expand ratio 4 (MobileSAM's layers.0):
//   CIN 64, HID 256, COUT 64, S 1, y = gelu(conv3(h2) + x).
// patch_merging_c64_c128: `PatchMerging.forward` of layers.0 (64 -> 128, stride 2, on the NHWC
//   map instead of the official NCHW view; its output is the [L, C] tokens in row-major pixel
//   order): CIN 64, HID 128, COUT 128, S 2, y = conv3(h2) (no activation, no residual).
//
// w1 [HID, CIN] and w3 [COUT, HID] are the 1x1 weights in PyTorch [out, in] order, w2 is
// tap-major [9, HID] (src/ops/conv.rs `depthwise_weight_taps`), biases fp32. h1 and h2 are
// rounded to fp16 as the unfused GEMM -> depthwise -> GEMM chain stores them, so the results
// match that chain (up to fp32 summation order).
//
// A block (256 threads) owns a TH x TW tile of output pixels. It copies the input halo
// ((TH-1)*S+3 x (TW-1)*S+3 pixels, zeros outside the image) to shared memory once, then walks
// the hidden channels in chunks of 64. Each chunk's parameters (w1 rows, w3 columns, w2 taps, b1,
// b2: 18-28 KiB) are streamed with cp.async into a double buffer: chunk c+1's copy is issued
// right after the barrier that starts chunk c, so it overlaps chunk c's compute. Per chunk:
//   1. expand GEMM of the halo (mma.sync, rows padded to a multiple of 64; accumulators start at
//      b1) + GELU into shared memory (halo pixels outside the image are the depthwise conv's zero
//      padding, so they are stored as 0, not gelu(b1));
//   2. depthwise 3x3 + GELU: a thread owns 4 channels of a vertical strip of output pixels and
//      walks the strip's input rows once, each loaded (and converted) input feeding every output
//      row it touches (3.75 loads per output instead of 9);
//   3. the project GEMM of the tile, accumulated in registers over the chunks.
// Three barriers per chunk separate the phases; the MBConv (111 KiB, <= 128 registers) runs two
// blocks per SM so one block's barriers and loads overlap the other's compute. The epilogue adds
// b3 (and the shortcut, read from the halo in shared memory, then GELU) and writes y. The
// expanded activation never leaves the SM: per block HBM/L2 traffic is the halo in, the weights
// (from L2) and the tile out. y must not overlap x (other blocks read x's halo).
//
// Floors and expectations at MobileSAM's shapes (H200: ~4.3 TB/s, 132 SMs; mma.sync fp16 with
// fp32 accumulation at ~50-60 % of the ~990 TFLOP/s dense peak). Estimates, not measurements:
// - mbconv_c64_e4, 256x256x64: 4.6 GFLOP as the unfused chain counts them (5.4 on the tensor
//   cores: the expand runs on 192 rows per 128 tile pixels), 16.8 MB of HBM (x in, y out):
//   floors ~4 us of memory, ~10 us of mma.sync. The SIMT work dominates: 44.6 M GELUs (expand
//   on the halo 23.6 M, depthwise 16.8 M, epilogue 4.2 M) at ~11 issue slots each (10 FMA/ALU
//   + 1 MUFU.EX2), 151 M depthwise FMAs plus 63 M fp16->fp32 unpacks, fragment loads and fp16
//   packing: ~38 k warp instructions per 8x16 tile, ~9.5 k cycles per tile on 4 schedulers,
//   3.9 tiles per SM -> ~19 us issue-bound; shared-memory traffic (~1.25 MB per tile at
//   128 B/clk) is also ~19 us. With barrier and tail losses expect ~25-35 us (was ~140 us,
//   latency-bound: one block per SM, and the fast-math erff has a data-dependent branch around
//   its ex2 that serialised each GELU).
// - patch_merging_c64_c128, 256x256x64 -> 128x128x128: 1.6 GFLOP counted (1.9 on the tensor
//   cores: the stride-2 halo is 320 rows per 64 tile pixels), 12.6 MB of HBM: floors ~3 us
//   each. 11.6 M GELUs, one 156 KiB block per SM over 2 waves: expect ~12-20 us (was 51 us).
#include "dense.cuh"
#include "mma.cuh"

using namespace finesam;

namespace {

constexpr int kChunk = 64;        // hidden channels per pass
constexpr int kThreads = 256;     // 8 warps: 4 along M x 2 along N in both GEMMs
constexpr int kLdH = kChunk + 8;  // padded 64-channel row (144 bytes: ldmatrix conflict-free)

// Mirrors `ConvBlockParams` in src/ops/tinyvit.rs (passed by value; keep the field order in sync).
struct ConvBlockParams {
    const __half* x;   // NHWC [B, H, W, CIN]
    const __half* w1;  // [HID, CIN]
    const float* b1;   // [HID]
    const __half* w2;  // [9, HID]
    const float* b2;   // [HID]
    const __half* w3;  // [COUT, HID]
    const float* b3;   // [COUT]
    __half* y;         // NHWC [B, Ho, Wo, COUT]
    int h, w;          // input map
    int ho, wo;        // output map
    int tiles_x;       // ceil(wo / TW)
};

template <int CIN, int HID, int COUT, int S, int TH, int TW, bool MBCONV, int EMP>
struct Block {
    static constexpr int kCin = CIN, kHid = HID, kCout = COUT, kS = S, kTH = TH, kTW = TW;
    static constexpr bool kMbConv = MBCONV;
    static constexpr int kHaloH = (TH - 1) * S + 3;
    static constexpr int kHaloW = (TW - 1) * S + 3;
    static constexpr int kHaloPx = kHaloH * kHaloW;
    static constexpr int kHaloRows = (kHaloPx + 63) / 64 * 64;  // 4 warps x whole m16 tiles
    static constexpr int kTilePx = TH * TW;
    static constexpr int kLdX = CIN + 8;  // padded halo / w1 row
    // Expand warp tile: EM m16 tiles x 4 n8 tiles (32 of the chunk's 64 columns), computed in
    // passes of EMP m16 tiles (fewer live accumulators; each pass reloads the w1 fragments).
    static constexpr int kEM = kHaloRows / 4 / 16;
    static constexpr int kEMP = EMP;
    // Project warp tile: PM m16 tiles x PN n8 tiles.
    static constexpr int kPM = kTilePx / 4 / 16;
    static constexpr int kPN = COUT / 2 / 8;
    // Depthwise: a thread owns 4 channels (one of kDwGroups) of a vertical strip of kDwRows
    // output pixels in one tile column; kDwSplit strips per column.
    static constexpr int kDwGroups = kChunk / 4;
    static constexpr int kDwStrips = kThreads / kDwGroups;
    static constexpr int kDwSplit = kDwStrips / TW;
    static constexpr int kDwRows = TH / (kDwSplit > 0 ? kDwSplit : 1);
    static constexpr int kDwInRows = (kDwRows - 1) * S + 3;
    // One chunk's parameters (double-buffered), offsets in halves.
    static constexpr int kBufW1 = 0;                        // [64][kLdX] rows of w1
    static constexpr int kBufW3 = kBufW1 + kChunk * kLdX;   // [COUT][kLdH] columns of w3
    static constexpr int kBufW2 = kBufW3 + COUT * kLdH;     // [9][64] taps
    static constexpr int kBufB1 = kBufW2 + 9 * kChunk;      // [64] f32
    static constexpr int kBufB2 = kBufB1 + 2 * kChunk;      // [64] f32
    static constexpr int kBufHalves = kBufB2 + 2 * kChunk;
    // Shared memory layout, in halves.
    static constexpr int kOffX = 0;                             // halo [kHaloRows][kLdX]
    static constexpr int kOffH = kOffX + kHaloRows * kLdX;      // h1 [kHaloRows][kLdH]
    static constexpr int kOffD = kOffH + kHaloRows * kLdH;      // h2 [kTilePx][kLdH]
    static constexpr int kOffBuf = kOffD + kTilePx * kLdH;      // 2 x chunk parameters
    static constexpr int kSmemBytes = (kOffBuf + 2 * kBufHalves) * 2;
    static_assert(CIN % 16 == 0 && HID % kChunk == 0, "K steps of 16, whole chunks");
    static_assert(EMP >= 1 && EMP <= kEM, "expand passes");
    static_assert(kTilePx % 64 == 0 && COUT % 32 == 0 && kPN % 2 == 0, "project warp tiles");
    static_assert(kDwSplit >= 1 && kDwStrips % TW == 0 && TH % kDwSplit == 0,
                  "depthwise strips cover the tile exactly");
    static_assert(kOffH % 8 == 0 && kOffD % 8 == 0 && kOffBuf % 8 == 0 && kBufW3 % 8 == 0 &&
                      kBufW2 % 8 == 0 && kBufB1 % 8 == 0 && kBufB2 % 8 == 0 &&
                      kBufHalves % 8 == 0,
                  "16-byte aligned regions (cp.async, ldmatrix, vector loads)");
    static_assert(!MBCONV || (CIN == COUT && S == 1), "the shortcut needs the input's shape");
};

template <class B>
__device__ __forceinline__ void conv_block_body(const ConvBlockParams& p) {
    constexpr int CIN = B::kCin, HID = B::kHid, COUT = B::kCout, S = B::kS, TW = B::kTW;
    constexpr int TH = B::kTH;
    constexpr bool MBCONV = B::kMbConv;
    constexpr int kChunks = HID / kChunk;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __half* smem = reinterpret_cast<__half*>(smem_raw);
    __half* s_x = smem + B::kOffX;
    __half* s_h = smem + B::kOffH;
    __half* s_d = smem + B::kOffD;
    __half* s_buf = smem + B::kOffBuf;

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int warp_m = warp >> 1;  // 0..3
    const int warp_n = warp & 1;   // 0..1

    const int oy0 = (blockIdx.x / p.tiles_x) * TH;  // output tile origin
    const int ox0 = (blockIdx.x % p.tiles_x) * TW;
    const int iy0 = oy0 * S - 1;                     // input halo origin
    const int ix0 = ox0 * S - 1;
    const __half* x = p.x + static_cast<long long>(blockIdx.y) * p.h * p.w * CIN;
    __half* y = p.y + static_cast<long long>(blockIdx.y) * p.ho * p.wo * COUT;

    // Copies chunk `chunk`'s parameters into `buf` (cp.async; the caller commits).
    auto load_chunk = [&](int chunk, __half* buf) {
        const int n0 = chunk * kChunk;
        constexpr int kW1Vec = CIN / 8;  // 16-byte vectors per w1 row
        for (int i = tid; i < kChunk * kW1Vec; i += kThreads) {
            const int r = i / kW1Vec;
            const int c = (i % kW1Vec) * 8;
            cp_async16(smem_addr(buf + B::kBufW1 + r * B::kLdX + c),
                       p.w1 + static_cast<long long>(n0 + r) * CIN + c, 16);
        }
        for (int i = tid; i < COUT * (kChunk / 8); i += kThreads) {
            const int r = i / (kChunk / 8);
            const int c = (i % (kChunk / 8)) * 8;
            cp_async16(smem_addr(buf + B::kBufW3 + r * kLdH + c),
                       p.w3 + static_cast<long long>(r) * HID + n0 + c, 16);
        }
        // w2 taps (9 x 8 vectors), then b1 and b2 (16 vectors of 4 floats each).
        for (int i = tid; i < 9 * (kChunk / 8) + 2 * (kChunk / 4); i += kThreads) {
            if (i < 9 * (kChunk / 8)) {
                const int t = i / (kChunk / 8);
                const int c = (i % (kChunk / 8)) * 8;
                cp_async16(smem_addr(buf + B::kBufW2 + t * kChunk + c), p.w2 + t * HID + n0 + c,
                           16);
            } else {
                const int j = i - 9 * (kChunk / 8);
                const bool second = j >= kChunk / 4;
                const int c = (j % (kChunk / 4)) * 4;
                cp_async16(smem_addr(buf + (second ? B::kBufB2 : B::kBufB1) + 2 * c),
                           (second ? p.b2 : p.b1) + n0 + c, 16);
            }
        }
    };

    // ---- Load the halo (zero outside the image and in the pad rows) and chunk 0's parameters.
    constexpr int kXChunks = CIN / 8;
    for (int i = tid; i < B::kHaloRows * kXChunks; i += kThreads) {
        const int r = i / kXChunks;
        const int c = (i % kXChunks) * 8;
        const int gy = iy0 + r / B::kHaloW;
        const int gx = ix0 + r % B::kHaloW;
        const bool ok = r < B::kHaloPx && gy >= 0 && gy < p.h && gx >= 0 && gx < p.w;
        const __half* src = x + (ok ? (static_cast<long long>(gy) * p.w + gx) * CIN + c : 0);
        cp_async16(smem_addr(s_x + r * B::kLdX + c), src, ok ? 16 : 0);
    }
    load_chunk(0, s_buf);
    cp_async_commit();

    // ldmatrix lane offsets (as gemm.cu): A rows (lane & 15), k half (lane >> 4); B rows
    // (lane & 7) + 8 * (lane >> 4), k half (lane >> 3) & 1.
    const int a_row = lane & 15;
    const int a_col = (lane >> 4) * 8;
    const int b_row = (lane & 7) + ((lane >> 4) << 3);
    const int b_col = ((lane >> 3) & 1) * 8;

    // Project accumulators: warp tile (16 * PM) pixels x (8 * PN) output channels.
    float acc3[B::kPM][B::kPN][4];
#pragma unroll
    for (int i = 0; i < B::kPM; ++i)
#pragma unroll
        for (int j = 0; j < B::kPN; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc3[i][j][e] = 0.f;

#pragma unroll 1
    for (int chunk = 0; chunk < kChunks; ++chunk) {
        const __half* buf = s_buf + (chunk & 1) * B::kBufHalves;
        // This thread's copies of this chunk (and, for chunk 0, of the halo) have landed; the
        // barrier makes everyone's visible. It also ends the previous chunk: every thread is
        // past its project GEMM, so s_d and the other parameter buffer are free.
        cp_async_wait<0>();
        __syncthreads();
        if (chunk + 1 < kChunks) {
            load_chunk(chunk + 1, s_buf + ((chunk + 1) & 1) * B::kBufHalves);
            cp_async_commit();
        }

        // ---- Expand: h1[halo rows x 64] = x_halo * w1[chunk]^T + b1; warp tile (16 * EM) x 32.
        const float* b1c = reinterpret_cast<const float*>(buf + B::kBufB1);
        const uint32_t w1_base =
            smem_addr(buf + B::kBufW1 + (warp_n * 32 + b_row) * B::kLdX + b_col);
#pragma unroll
        for (int i0 = 0; i0 < B::kEM; i0 += B::kEMP) {
            constexpr int kP = B::kEMP;
            float acc[kP][4][4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float2 bias =
                    *reinterpret_cast<const float2*>(b1c + warp_n * 32 + j * 8 + (lane & 3) * 2);
#pragma unroll
                for (int i = 0; i < kP; ++i) {
                    acc[i][j][0] = bias.x;
                    acc[i][j][1] = bias.y;
                    acc[i][j][2] = bias.x;
                    acc[i][j][3] = bias.y;
                }
            }
            const uint32_t a_base =
                smem_addr(s_x + ((warp_m * B::kEM + i0) * 16 + a_row) * B::kLdX + a_col);
#pragma unroll
            for (int kk = 0; kk < CIN; kk += 16) {
                uint32_t a[kP][4];
                uint32_t b[4][2];
#pragma unroll
                for (int i = 0; i < kP; ++i)
                    if (i0 + i < B::kEM) ldmatrix_x4(a[i], a_base + (i * 16 * B::kLdX + kk) * 2);
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    uint32_t r[4];
                    ldmatrix_x4(r, w1_base + (j * 16 * B::kLdX + kk) * 2);
                    b[2 * j][0] = r[0];
                    b[2 * j][1] = r[1];
                    b[2 * j + 1][0] = r[2];
                    b[2 * j + 1][1] = r[3];
                }
#pragma unroll
                for (int i = 0; i < kP; ++i)
                    if (i0 + i < B::kEM)
#pragma unroll
                        for (int j = 0; j < 4; ++j) mma16816(acc[i][j], a[i], b[j][0], b[j][1]);
            }
            // GELU; halo pixels outside the image (and pad rows) are the depthwise conv's zero
            // padding. Branch-free: the GELUs of a thread interleave.
#pragma unroll
            for (int i = 0; i < kP; ++i) {
                if (i0 + i >= B::kEM) continue;
#pragma unroll
                for (int half_row = 0; half_row < 2; ++half_row) {
                    const int r = (warp_m * B::kEM + i0 + i) * 16 + (lane >> 2) + half_row * 8;
                    const int gy = iy0 + r / B::kHaloW;
                    const int gx = ix0 + r % B::kHaloW;
                    const bool inside =
                        r < B::kHaloPx && gy >= 0 && gy < p.h && gx >= 0 && gx < p.w;
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const int col = warp_n * 32 + j * 8 + (lane & 3) * 2;
                        const __half2 g = __floats2half2_rn(gelu(acc[i][j][half_row * 2]),
                                                            gelu(acc[i][j][half_row * 2 + 1]));
                        *reinterpret_cast<__half2*>(s_h + r * kLdH + col) =
                            inside ? g : __float2half2_rn(0.f);
                    }
                }
            }
        }
        __syncthreads();

        // ---- Depthwise 3x3 (stride S) + b2 + GELU of the tile pixels. Thread: 4 channels of
        // the kDwRows output rows o0.. of tile column `col`; it walks the strip's kDwInRows
        // input rows once (3 columns each) and adds each to every output row it touches, so
        // at most 3 output rows are in flight.
        {
            const int cg = (tid % B::kDwGroups) * 4;
            const int strip = tid / B::kDwGroups;
            const int col = strip % TW;
            const int o0 = (strip / TW) * B::kDwRows;
            const __half* w2c = buf + B::kBufW2 + cg;
            float wt[9][4];
#pragma unroll
            for (int t = 0; t < 9; ++t) {
                const uint2 raw = *reinterpret_cast<const uint2*>(w2c + t * kChunk);
                const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
                const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
                wt[t][0] = lo.x, wt[t][1] = lo.y, wt[t][2] = hi.x, wt[t][3] = hi.y;
            }
            const float* b2c = reinterpret_cast<const float*>(buf + B::kBufB2);
            const float4 bias = *reinterpret_cast<const float4*>(b2c + cg);
            float v[B::kDwRows][4];  // started at an output row's first input row
            const __half* in_base = s_h + ((o0 * S) * B::kHaloW + col * S) * kLdH + cg;
            __half* out_base = s_d + (o0 * TW + col) * kLdH + cg;
#pragma unroll
            for (int ir = 0; ir < B::kDwInRows; ++ir) {
#pragma unroll
                for (int kx = 0; kx < 3; ++kx) {
                    const uint2 raw = *reinterpret_cast<const uint2*>(
                        in_base + (ir * B::kHaloW + kx) * kLdH);
                    const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
                    const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
                    const float in[4] = {lo.x, lo.y, hi.x, hi.y};
#pragma unroll
                    for (int o = 0; o < B::kDwRows; ++o) {
                        const int ky = ir - o * S;  // compile-time after unrolling
                        if (ky < 0 || ky > 2) continue;
                        if (ky == 0 && kx == 0) {
                            v[o][0] = bias.x, v[o][1] = bias.y, v[o][2] = bias.z, v[o][3] = bias.w;
                        }
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            v[o][e] = fmaf(in[e], wt[ky * 3 + kx][e], v[o][e]);
                    }
                }
                // Output row o = (ir - 2) / S is complete.
                if (ir >= 2 && (ir - 2) % S == 0) {
                    const int o = (ir - 2) / S;
                    uint2 packed;
                    *reinterpret_cast<__half2*>(&packed.x) =
                        __floats2half2_rn(gelu(v[o][0]), gelu(v[o][1]));
                    *reinterpret_cast<__half2*>(&packed.y) =
                        __floats2half2_rn(gelu(v[o][2]), gelu(v[o][3]));
                    *reinterpret_cast<uint2*>(out_base + o * TW * kLdH) = packed;
                }
            }
        }
        __syncthreads();

        // ---- Project: acc3[tile px x COUT] += h2[tile px x 64] * w3[:, chunk]^T.
        {
            const uint32_t a_base =
                smem_addr(s_d + (warp_m * B::kPM * 16 + a_row) * kLdH + a_col);
            const uint32_t b_base =
                smem_addr(buf + B::kBufW3 + (warp_n * B::kPN * 8 + b_row) * kLdH + b_col);
#pragma unroll
            for (int kk = 0; kk < kChunk; kk += 16) {
                uint32_t a[B::kPM][4];
                uint32_t b[B::kPN][2];
#pragma unroll
                for (int i = 0; i < B::kPM; ++i)
                    ldmatrix_x4(a[i], a_base + (i * 16 * kLdH + kk) * 2);
#pragma unroll
                for (int j = 0; j < B::kPN / 2; ++j) {
                    uint32_t r[4];
                    ldmatrix_x4(r, b_base + (j * 16 * kLdH + kk) * 2);
                    b[2 * j][0] = r[0];
                    b[2 * j][1] = r[1];
                    b[2 * j + 1][0] = r[2];
                    b[2 * j + 1][1] = r[3];
                }
#pragma unroll
                for (int i = 0; i < B::kPM; ++i)
#pragma unroll
                    for (int j = 0; j < B::kPN; ++j)
                        mma16816(acc3[i][j], a[i], b[j][0], b[j][1]);
            }
        }
        // The next iteration's barrier separates this GEMM from the next depthwise pass (s_d)
        // and from the copy into this parameter buffer.
    }

    // ---- Epilogue: + b3 (+ shortcut from the halo's centre, GELU), write y. s_x is never
    // overwritten, so no barrier is needed.
#pragma unroll
    for (int i = 0; i < B::kPM; ++i) {
#pragma unroll
        for (int half_row = 0; half_row < 2; ++half_row) {
            const int px = (warp_m * B::kPM + i) * 16 + (lane >> 2) + half_row * 8;
            const int py = px / TW;
            const int pxx = px % TW;
            const int gy = oy0 + py;
            const int gx = ox0 + pxx;
            if (gy >= p.ho || gx >= p.wo) continue;
            const __half* shortcut = s_x + ((py + 1) * B::kHaloW + pxx + 1) * B::kLdX;
            __half* out = y + (static_cast<long long>(gy) * p.wo + gx) * COUT;
#pragma unroll
            for (int j = 0; j < B::kPN; ++j) {
                const int col = warp_n * B::kPN * 8 + j * 8 + (lane & 3) * 2;
                const float2 bias = *reinterpret_cast<const float2*>(p.b3 + col);
                float v0 = acc3[i][j][half_row * 2] + bias.x;
                float v1 = acc3[i][j][half_row * 2 + 1] + bias.y;
                if (MBCONV) {
                    const float2 r =
                        __half22float2(*reinterpret_cast<const __half2*>(shortcut + col));
                    v0 = gelu(v0 + r.x);
                    v1 = gelu(v1 + r.y);
                }
                *reinterpret_cast<__half2*>(out + col) = __floats2half2_rn(v0, v1);
            }
        }
    }
}

// The instantiations (keep in sync with CONV_BLOCKS in src/ops/tinyvit.rs: channels, stride,
// tile and dynamic shared memory).
using MbConv64 = Block<64, 256, 64, 1, 8, 16, true, 2>;         // 128 registers: 2 passes
using PatchMerging64 = Block<64, 128, 128, 2, 8, 8, false, 5>;  // one block per SM: 1 pass
static_assert(MbConv64::kSmemBytes == 113920 && PatchMerging64::kSmemBytes == 160000,
              "dynamic shared memory sizes must match CONV_BLOCKS in src/ops/tinyvit.rs");
// Two MBConv blocks per SM: 2 x (113920 + 1024 reserved) bytes <= 228 KiB, 2 x 256 threads at
// <= 128 registers. The PatchMerging's stride-2 halo (320 rows) keeps it at one block per SM.
static_assert(2 * (MbConv64::kSmemBytes + 1024) <= 228 * 1024, "two MBConv blocks per SM");

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 2) mbconv_c64_e4(const ConvBlockParams p) {
    conv_block_body<MbConv64>(p);
}

extern "C" __global__ void __launch_bounds__(kThreads, 1)
    patch_merging_c64_c128(const ConvBlockParams p) {
    conv_block_body<PatchMerging64>(p);
}

// =============================================================================================
// Fused TinyViT MLP: tinyvit_mlp_c128, tinyvit_mlp_c160.
//
//     h = fp16(gelu(x · W1^T + b1))        x [M, C] -> h [M, 4C] (never leaves the SM)
//     y = fp16((h · W2^T + b2) + r)        -> [M, C]
//
// `Mlp.forward` of tiny_vit_sam.py after its LayerNorm (fc1 -> nn.GELU -> fc2; dropout is the
// identity in eval) plus the `x + ...` of `TinyViTBlock.forward`: x is the MLP's LayerNorm
// output, r the block's residual stream (the local conv output), W1 = fc1.weight [4C, C],
// W2 = fc2.weight [C, 4C] (PyTorch [out, in]), biases fp32. It replaces the unfused chain
// `gemm(x, W1, b1, GELU) -> h; gemm(h, W2, b2, + r)` of kernels/gemm.cu and computes the SAME
// BITS: every h element starts from a zero accumulator and takes the k16 mma.sync steps over C
// in ascending order, then + b1, gelu, round-to-nearest fp16 (the GEMM's `alpha * acc` with
// alpha 1 is exact; its epilogue adds bias then applies the activation); every y element starts
// from zero and takes the k16 steps over 4C in ascending order (chunk by chunk), then + b2, + r
// (ResidualOrder::AfterActivation without activation), rounded once. mma.m16n8k16 makes each
// output depend only on its own row, column and accumulator, so the tiling does not matter.
// (One exception, never met by real data: the GEMM adds its absent residual, +0, after the
// GELU, which turns a hidden activation of exactly -0 into +0; here it stays -0. Same value.)
//
// A block (256 threads, 8 warps) owns BM rows. It copies its x rows to shared memory, each
// warp loads its 16 rows x C as mma A fragments into registers (kept for the whole kernel),
// then the block walks the 4C hidden units in chunks of 64. Per chunk:
//   1. fc1: h_chunk[BM x 64] = x · W1[chunk]^T (+ b1, gelu, fp16) into shared memory;
//      warps (BM/16) along the rows x (8 / (BM/16)) along the 64 columns;
//   2. fc2: acc[BM x C] += h_chunk · W2[:, chunk]^T in registers; warps 2 x 4, warp tile
//      (BM/2) x (C/4).
// Each chunk's parameters (64 rows of W1, 64 columns of W2, 64 of b1) go through a STAGES-deep
// cp.async ring (copy of chunk c + STAGES - 1 issued right after the barrier that starts chunk
// c, so it overlaps chunks c .. c + STAGES - 2). The residual rows are copied into the x tile's
// shared memory once every warp holds its x fragments, so the epilogue reads r (and b2) from
// shared memory instead of waiting on HBM at the end.
//
// Shared rows are padded to an odd number of 16-byte units (x/r/W1: C + 8 halves, h/W2: 72):
// the 8 row addresses of every ldmatrix phase and the 8 rows of every fragment-layout store
// fall on distinct bank quads (conflict-free without a swizzle).
//
// Floors and expectations (H200: ~4.3 TB/s HBM, ~990 TFLOP/s dense fp16 of which mma.sync
// reaches ~60 %, 132 SMs; estimates, not measurements):
// - c128 at layers.1 (M 16384): 4.29 GFLOP, 12.9 MB compulsory HBM (x, r in, y out, 0.26 MB of
//   weights): ~3 us memory, ~4.3 us compute floor (~7 us at mma.sync rates). BM 64, 256 blocks,
//   2 per SM (99 KB shared memory each; one wave). Per block 262 KB of weights stream from L2
//   (67 MB of L2 reads in all) and shared memory moves ~170 KB per chunk (weights in, fragments
//   out): ~1.3 k cycles per chunk and block, 2 blocks per SM x 8 chunks -> ~11 us. Expect
//   ~12-18 us against 69 us for fc1 + fc2 (43 + 26, ncu) -- the 33.5 MB h round trip is gone.
// - c160 at layers.2 (M 4096): 1.68 GFLOP, 4.3 MB: ~1 us memory, ~1.7 us compute floor. BM 32,
//   128 blocks (one per SM: BM 64 would leave half the SMs idle), 3-stage ring (150 KB).
//   410 KB of weights per block (52 MB of L2 reads); ~1.1 k shared-memory cycles per chunk x
//   10 chunks -> ~6 us plus prologue and epilogue latency. Expect ~8-12 us against 36 us
//   (18.5 + 17.5).
// - c320 (layers.3) is not fused: its blocks would stream 1.6 MB of weights per 32 rows
//   (210 MB of L2 reads at M 4096, ~30-40 us) against ~57 us unfused, with a 200 KB
//   single-block-per-SM footprint; a cluster sharing the weights (TMA multicast) is the way.
// =============================================================================================
namespace {

// Mirrors `MlpParams` in src/ops/tinyvit.rs (passed by value; keep the field order in sync).
struct MlpParams {
    const __half* x;          // [m, C], rows ldx apart: the MLP's LayerNorm output
    const __half* w1;         // fc1.weight [4C, C]
    const float* b1;          // fc1.bias [4C]
    const __half* w2;         // fc2.weight [C, 4C]
    const float* b2;          // fc2.bias [C]
    const __half* r;          // [m, C], rows ldr apart: the residual
    __half* y;                // [m, C], rows ldy apart
    long long ldx, ldr, ldy;  // row strides in elements (multiples of 8)
    int m;
};

template <int C, int BM, int STAGES>
struct Mlp {
    static constexpr int kC = C, kBM = BM, kStages = STAGES;
    static constexpr int kHid = 4 * C;
    static constexpr int kChunks = kHid / kChunk;
    static constexpr int kLdX = C + 8;      // padded x / r / W1 row, halves
    static constexpr int kKSteps = C / 16;  // fc1 k16 steps
    // fc1 warps: kWM1 along the rows (16 each) x kWN1 along the chunk, kEN n8 tiles per warp.
    static constexpr int kWM1 = BM / 16;
    static constexpr int kWN1 = 8 / kWM1;
    static constexpr int kEN = kChunk / kWN1 / 8;
    // fc2 warps: 2 along the rows x 4 along C; warp tile kPM m16 x kPN n8 tiles.
    static constexpr int kPM = BM / 32;
    static constexpr int kPN = C / 32;
    // One chunk's parameters (one ring slot), offsets in halves.
    static constexpr int kBufW1 = 0;                       // [64][kLdX] rows of W1
    static constexpr int kBufW2 = kBufW1 + kChunk * kLdX;  // [C][kLdH] columns of W2
    static constexpr int kBufB1 = kBufW2 + C * kLdH;       // [64] f32
    static constexpr int kBufHalves = kBufB1 + 2 * kChunk;
    // Shared memory layout, in halves.
    static constexpr int kOffX = 0;                   // x tile [BM][kLdX], later the r tile
    static constexpr int kOffH = kOffX + BM * kLdX;   // h chunk [BM][kLdH]
    static constexpr int kOffB2 = kOffH + BM * kLdH;  // b2 [C] f32
    static constexpr int kOffBuf = kOffB2 + 2 * C;    // STAGES x chunk parameters
    static constexpr int kSmemBytes = (kOffBuf + STAGES * kBufHalves) * 2;
    static_assert(C % 32 == 0, "fc2 warp tiles of C/4 columns in n8 tiles, C/16 k steps");
    static_assert((BM == 32 || BM == 64) && kWM1 * kWN1 == 8 && kEN % 2 == 0 && kPM >= 1,
                  "8 warps: fc1 16-row warp tiles with n8 tile pairs, fc2 2 x 4 warps");
    static_assert(STAGES >= 2 && kChunks >= STAGES, "ring deeper than one chunk, enough chunks");
    static_assert((kLdX / 8) % 2 == 1 && (kLdH / 8) % 2 == 1,
                  "rows an odd number of 16-byte units: conflict-free ldmatrix and stores");
    static_assert(kOffH % 8 == 0 && kOffB2 % 8 == 0 && kOffBuf % 8 == 0 && kBufW2 % 8 == 0 &&
                      kBufB1 % 8 == 0 && kBufHalves % 8 == 0,
                  "16-byte aligned regions (cp.async, ldmatrix)");
};

template <class P>
__device__ __forceinline__ void mlp_body(const MlpParams& p) {
    constexpr int C = P::kC, BM = P::kBM, S = P::kStages, HID = P::kHid;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __half* smem = reinterpret_cast<__half*>(smem_raw);
    __half* s_x = smem + P::kOffX;
    __half* s_h = smem + P::kOffH;
    const float* s_b2 = reinterpret_cast<const float*>(smem + P::kOffB2);
    __half* s_buf = smem + P::kOffBuf;

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int m0 = blockIdx.x * BM;

    // The block's BM rows of a [m, C] matrix into s_x (cp.async; rows past m are zero-filled
    // and never stored). The caller commits.
    auto load_rows = [&](const __half* src, long long ld) {
        constexpr int kVec = C / 8;
        for (int i = tid; i < BM * kVec; i += kThreads) {
            const int r = i / kVec;
            const int c = (i % kVec) * 8;
            const bool ok = m0 + r < p.m;
            cp_async16(smem_addr(s_x + r * P::kLdX + c),
                       src + (ok ? static_cast<long long>(m0 + r) * ld + c : 0), ok ? 16 : 0);
        }
    };
    // Chunk `chunk`'s W1 rows, W2 columns and b1 into ring slot chunk % S. The caller commits.
    auto load_chunk = [&](int chunk) {
        __half* buf = s_buf + (chunk % S) * P::kBufHalves;
        const int n0 = chunk * kChunk;
        constexpr int kW1Vec = C / 8;  // 16-byte vectors per W1 row
        for (int i = tid; i < kChunk * kW1Vec; i += kThreads) {
            const int r = i / kW1Vec;
            const int c = (i % kW1Vec) * 8;
            cp_async16(smem_addr(buf + P::kBufW1 + r * P::kLdX + c),
                       p.w1 + static_cast<long long>(n0 + r) * C + c, 16);
        }
        for (int i = tid; i < C * (kChunk / 8); i += kThreads) {
            const int r = i / (kChunk / 8);
            const int c = (i % (kChunk / 8)) * 8;
            cp_async16(smem_addr(buf + P::kBufW2 + r * kLdH + c),
                       p.w2 + static_cast<long long>(r) * HID + n0 + c, 16);
        }
        if (tid < kChunk / 4) {  // 16 vectors of 4 floats
            cp_async16(smem_addr(buf + P::kBufB1 + 8 * tid), p.b1 + n0 + 4 * tid, 16);
        }
    };

    // ---- cp.async groups. Group 0: x tile, b2, chunk 0; groups 1 .. S-2: chunks 1 .. S-2;
    // loop iteration c commits group c + S - 1 (chunk c + S - 1, possibly empty, plus the r
    // tile at c = 0). At the top of iteration c groups 0 .. c + S - 2 are committed, so
    // wait_group<S - 2> leaves only c + 1 .. c + S - 2 in flight: chunk c has landed.
    load_rows(p.x, p.ldx);
    if (tid < C / 4) cp_async16(smem_addr(smem + P::kOffB2 + 8 * tid), p.b2 + 4 * tid, 16);
    load_chunk(0);
    cp_async_commit();
#pragma unroll
    for (int s = 1; s < S - 1; ++s) {
        load_chunk(s);
        cp_async_commit();
    }

    // ldmatrix lane offsets (as gemm.cu): A rows (lane & 15), k half (lane >> 4); B rows
    // (lane & 7) + 8 * (lane >> 4), k half (lane >> 3) & 1 (x2: lanes 0-15, one n8 tile).
    const int a_row = lane & 15;
    const int a_col = (lane >> 4) * 8;
    const int b_row = (lane & 7) + ((lane >> 4) << 3);
    const int b_col = ((lane >> 3) & 1) * 8;
    // Accumulator fragment: rows g and g + 8, columns q2 and q2 + 1 of each m16n8 tile.
    const int g = lane >> 2;
    const int q2 = (lane & 3) * 2;
    const int warp_m1 = warp % P::kWM1;  // fc1: rows warp_m1 * 16 ..
    const int warp_n1 = warp / P::kWM1;  //      chunk columns warp_n1 * kEN * 8 ..
    const int warp_m2 = warp >> 2;       // fc2: rows warp_m2 * BM / 2 ..
    const int warp_n2 = warp & 3;        //      columns warp_n2 * C / 4 ..

    // x (group 0) has landed; the barrier makes every thread's copies visible.
    cp_async_wait<S - 2>();
    __syncthreads();
    uint32_t xa[P::kKSteps][4];  // this warp's 16 x rows as A fragments, all of K = C
    {
        const uint32_t base = smem_addr(s_x + (warp_m1 * 16 + a_row) * P::kLdX + a_col);
#pragma unroll
        for (int ks = 0; ks < P::kKSteps; ++ks) ldmatrix_x4(xa[ks], base + ks * 16 * 2);
    }

    float acc[P::kPM][P::kPN][4];
#pragma unroll
    for (int i = 0; i < P::kPM; ++i)
#pragma unroll
        for (int j = 0; j < P::kPN; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll 1
    for (int chunk = 0; chunk < P::kChunks; ++chunk) {
        const __half* buf = s_buf + (chunk % S) * P::kBufHalves;
        // Chunk `chunk` has landed (this thread's copies; the barrier publishes everyone's).
        // The barrier also means every warp is past chunk - 1's fc2, so s_h and ring slot
        // (chunk - 1) % S = (chunk + S - 1) % S are free, and (at chunk 0) past its x
        // fragment loads, so s_x is free for the r tile.
        cp_async_wait<S - 2>();
        __syncthreads();
        if (chunk == 0) load_rows(p.r, p.ldr);
        if (chunk + S - 1 < P::kChunks) load_chunk(chunk + S - 1);
        cp_async_commit();  // always, even empty: keeps the group arithmetic above exact

        // ---- fc1: h[BM x 64] = gelu(x · W1[chunk]^T + b1) -> fp16 in s_h. Warp tile 16 x
        // (kEN * 8); accumulators from zero, bias after (the unfused GEMM's order).
        {
            float acc1[P::kEN][4];
#pragma unroll
            for (int j = 0; j < P::kEN; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc1[j][e] = 0.f;
            const uint32_t w1_base = smem_addr(
                buf + P::kBufW1 + (warp_n1 * P::kEN * 8 + b_row) * P::kLdX + b_col);
#pragma unroll
            for (int ks = 0; ks < P::kKSteps; ++ks) {
#pragma unroll
                for (int j = 0; j < P::kEN / 2; ++j) {
                    uint32_t b[4];
                    ldmatrix_x4(b, w1_base + (j * 16 * P::kLdX + ks * 16) * 2);
                    mma16816(acc1[2 * j], xa[ks], b[0], b[1]);
                    mma16816(acc1[2 * j + 1], xa[ks], b[2], b[3]);
                }
            }
            const float* b1c = reinterpret_cast<const float*>(buf + P::kBufB1);
#pragma unroll
            for (int j = 0; j < P::kEN; ++j) {
                const int col = warp_n1 * P::kEN * 8 + j * 8 + q2;
                const float2 bias = *reinterpret_cast<const float2*>(b1c + col);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = warp_m1 * 16 + g + 8 * h;
                    *reinterpret_cast<__half2*>(s_h + row * kLdH + col) =
                        __floats2half2_rn(gelu(acc1[j][2 * h] + bias.x),
                                          gelu(acc1[j][2 * h + 1] + bias.y));
                }
            }
        }
        __syncthreads();  // h complete: fc2 reads rows and columns other warps wrote

        // ---- fc2: acc[BM x C] += h · W2[:, chunk]^T, warp tile (BM/2) x (C/4).
        {
            const uint32_t a_base =
                smem_addr(s_h + (warp_m2 * (BM / 2) + a_row) * kLdH + a_col);
            const uint32_t b_base =
                smem_addr(buf + P::kBufW2 + (warp_n2 * (C / 4) + b_row) * kLdH + b_col);
#pragma unroll
            for (int kk = 0; kk < kChunk; kk += 16) {
                uint32_t a[P::kPM][4];
#pragma unroll
                for (int i = 0; i < P::kPM; ++i)
                    ldmatrix_x4(a[i], a_base + (i * 16 * kLdH + kk) * 2);
#pragma unroll
                for (int j = 0; j < P::kPN / 2; ++j) {
                    uint32_t b[4];
                    ldmatrix_x4(b, b_base + (j * 16 * kLdH + kk) * 2);
#pragma unroll
                    for (int i = 0; i < P::kPM; ++i) {
                        mma16816(acc[i][2 * j], a[i], b[0], b[1]);
                        mma16816(acc[i][2 * j + 1], a[i], b[2], b[3]);
                    }
                }
                if constexpr (P::kPN % 2 == 1) {  // C = 160: the fifth n8 tile
                    uint32_t b[2];
                    ldmatrix_x2(b, b_base + ((P::kPN - 1) * 8 * kLdH + kk) * 2);
#pragma unroll
                    for (int i = 0; i < P::kPM; ++i)
                        mma16816(acc[i][P::kPN - 1], a[i], b[0], b[1]);
                }
            }
        }
        // The next iteration's barrier separates this fc2 from the next fc1's s_h writes and
        // from the copy into this ring slot.
    }

    // ---- Epilogue: y = fp16((acc + b2) + r), gemm.cu's `epilogue()` order for a residual
    // after a (no-op) activation. Only the r tile's group can still be in flight; wait for it
    // and publish it. Nothing writes shared memory any more.
    cp_async_wait<0>();
    __syncthreads();
    const __half* s_r = s_x;
#pragma unroll
    for (int i = 0; i < P::kPM; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = warp_m2 * (BM / 2) + i * 16 + g + 8 * h;
            if (m0 + row >= p.m) continue;
            __half* out = p.y + static_cast<long long>(m0 + row) * p.ldy;
#pragma unroll
            for (int j = 0; j < P::kPN; ++j) {
                const int col = warp_n2 * (C / 4) + j * 8 + q2;
                const float2 bias = *reinterpret_cast<const float2*>(s_b2 + col);
                const float2 res =
                    __half22float2(*reinterpret_cast<const __half2*>(s_r + row * P::kLdX + col));
                const float v0 = (acc[i][j][2 * h] + bias.x) + res.x;
                const float v1 = (acc[i][j][2 * h + 1] + bias.y) + res.y;
                *reinterpret_cast<__half2*>(out + col) = __floats2half2_rn(v0, v1);
            }
        }
    }
}

// The instantiations (keep in sync with MLPS in src/ops/tinyvit.rs: channels, rows per block,
// dynamic shared memory).
using Mlp128 = Mlp<128, 64, 2>;  // layers.1, M 16384: 256 blocks, 2 per SM
using Mlp160 = Mlp<160, 32, 3>;  // layers.2, M 4096: 128 blocks, 1 per SM
static_assert(Mlp128::kSmemBytes == 99328 && Mlp160::kSmemBytes == 150400,
              "dynamic shared memory sizes must match MLPS in src/ops/tinyvit.rs");
static_assert(2 * (Mlp128::kSmemBytes + 1024) <= 228 * 1024, "two c128 blocks per SM");

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 2) tinyvit_mlp_c128(const MlpParams p) {
    mlp_body<Mlp128>(p);
}

extern "C" __global__ void __launch_bounds__(kThreads, 1) tinyvit_mlp_c160(const MlpParams p) {
    mlp_body<Mlp160>(p);
}

// Fused TinyViT convolution blocks (fp16 storage, fp32 accumulation). Both are the chain
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
// match that chain.
//
// A block owns a TH x TW tile of output pixels. It copies the input halo ((TH-1)*S+3 x
// (TW-1)*S+3 pixels, zeros outside the image) and both 1x1 weights to shared memory once, then
// walks the hidden channels in chunks of 64: expand GEMM of the halo (mma.sync, rows padded to
// a multiple of 64) + GELU into shared memory (halo pixels outside the image are the depthwise
// conv's zero padding, so they are stored as 0, not gelu(b1)), depthwise 3x3 + GELU of the tile
// pixels into shared memory, and accumulates that chunk's project GEMM in registers. The
// epilogue adds b3 (and the shortcut, read from the halo in shared memory, then GELU) and
// writes y. The expanded activation never leaves the SM: per block HBM traffic is the halo in
// and the tile out. y must not overlap x (other blocks read x's halo).
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

// nn.GELU (exact erf form) without erff: gelu(x) = x * Phi(x) = relu(x) - |x| * q(|x|) with
// q(a) = Phi(-a) = erfc(a / sqrt 2) / 2 = 2^P(a), P a degree-7 polynomial fitted to log2 q on
// [0, 6.5] minimising the weighted error |q - 2^P| (Lawson's iteration), a clamped to 6.5
// (q(6.5) = 4e-11). The fitted q is within 3.6e-8 of q; with fp32 Horner rounding the whole
// function, evaluated in fp32 arithmetic against an mpmath reference on 40k points over
// [-12, 12], is within 9.5e-8 * max(1, |x|), plus ex2.approx's 2^-22 relative error on q
// (<= 1.2e-7 * |x|): about 1e-7 relative for x > 0, some 2000x below half an fp16 ulp. erff
// under --use_fast_math (dense.cuh's `activate`) costs ~25 instructions with a branch around
// its ex2, which serialises the GELUs; this is 10 FMA/ALU instructions and one MUFU.EX2, no
// branch. NaN propagates; gelu(+inf) is NaN instead of inf (unreachable: fp32 accumulations of
// fp16 operands). Only this file uses it.
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

template <int CIN, int HID, int COUT, int S, int TH, int TW, bool MBCONV>
struct Block {
    static constexpr int kCin = CIN, kHid = HID, kCout = COUT, kS = S, kTH = TH, kTW = TW;
    static constexpr bool kMbConv = MBCONV;
    static constexpr int kHaloH = (TH - 1) * S + 3;
    static constexpr int kHaloW = (TW - 1) * S + 3;
    static constexpr int kHaloPx = kHaloH * kHaloW;
    static constexpr int kHaloRows = (kHaloPx + 63) / 64 * 64;  // 4 warps x whole m16 tiles
    static constexpr int kTilePx = TH * TW;
    static constexpr int kLdX = CIN + 8;   // padded halo / w1 row
    static constexpr int kLdW3 = HID + 8;  // padded w3 row
    // Expand warp tile: EM m16 tiles x 4 n8 tiles (32 of the chunk's 64 columns).
    static constexpr int kEM = kHaloRows / 4 / 16;
    // Project warp tile: PM m16 tiles x PN n8 tiles.
    static constexpr int kPM = kTilePx / 4 / 16;
    static constexpr int kPN = COUT / 2 / 8;
    // Depthwise: (pixel, 8-channel group) pairs per thread.
    static constexpr int kDwPerThread = kTilePx * (kChunk / 8) / kThreads;
    // Shared memory layout, in halves.
    static constexpr int kOffX = 0;
    static constexpr int kOffW1 = kOffX + kHaloRows * kLdX;
    static constexpr int kOffW3 = kOffW1 + HID * kLdX;
    static constexpr int kOffH = kOffW3 + COUT * kLdW3;
    static constexpr int kOffD = kOffH + kHaloRows * kLdH;
    static constexpr int kSmemBytes = (kOffD + kTilePx * kLdH) * 2;
    static_assert(CIN % 16 == 0 && HID % kChunk == 0, "K steps of 16, whole chunks");
    static_assert(kTilePx % 64 == 0 && COUT % 32 == 0 && kPN % 2 == 0, "project warp tiles");
    static_assert(kDwPerThread * kThreads == kTilePx * (kChunk / 8), "depthwise split");
    static_assert(!MBCONV || (CIN == COUT && S == 1), "the shortcut needs the input's shape");
};

template <class B>
__device__ __forceinline__ void conv_block_body(const ConvBlockParams& p) {
    constexpr int CIN = B::kCin, HID = B::kHid, COUT = B::kCout, S = B::kS, TW = B::kTW;
    constexpr int TH = B::kTH;
    constexpr bool MBCONV = B::kMbConv;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __half* smem = reinterpret_cast<__half*>(smem_raw);
    __half* s_x = smem + B::kOffX;
    __half* s_w1 = smem + B::kOffW1;
    __half* s_w3 = smem + B::kOffW3;
    __half* s_h = smem + B::kOffH;
    __half* s_d = smem + B::kOffD;

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

    // ---- Load the halo (zero outside the image and in the pad rows) and both 1x1 weights.
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
    for (int i = tid; i < HID * kXChunks; i += kThreads) {
        const int r = i / kXChunks;
        const int c = (i % kXChunks) * 8;
        cp_async16(smem_addr(s_w1 + r * B::kLdX + c), p.w1 + r * CIN + c, 16);
    }
    constexpr int kW3Chunks = HID / 8;
    for (int i = tid; i < COUT * kW3Chunks; i += kThreads) {
        const int r = i / kW3Chunks;
        const int c = (i % kW3Chunks) * 8;
        cp_async16(smem_addr(s_w3 + r * B::kLdW3 + c), p.w3 + r * HID + c, 16);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

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

    for (int chunk = 0; chunk < HID / kChunk; ++chunk) {
        const int n_base = chunk * kChunk;
        // ---- Expand: h1[halo rows x 64] = x_halo * w1[chunk]^T; warp tile (16 * EM) x 32.
        {
            float acc[B::kEM][4][4];
#pragma unroll
            for (int i = 0; i < B::kEM; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
            const uint32_t a_base =
                smem_addr(s_x + (warp_m * B::kEM * 16 + a_row) * B::kLdX + a_col);
            const uint32_t b_base =
                smem_addr(s_w1 + (n_base + warp_n * 32 + b_row) * B::kLdX + b_col);
#pragma unroll
            for (int kk = 0; kk < CIN; kk += 16) {
                uint32_t a[B::kEM][4];
                uint32_t b[4][2];
#pragma unroll
                for (int i = 0; i < B::kEM; ++i)
                    ldmatrix_x4(a[i], a_base + (i * 16 * B::kLdX + kk) * 2);
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    uint32_t r[4];
                    ldmatrix_x4(r, b_base + (j * 16 * B::kLdX + kk) * 2);
                    b[2 * j][0] = r[0];
                    b[2 * j][1] = r[1];
                    b[2 * j + 1][0] = r[2];
                    b[2 * j + 1][1] = r[3];
                }
#pragma unroll
                for (int i = 0; i < B::kEM; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) mma16816(acc[i][j], a[i], b[j][0], b[j][1]);
            }
            // Bias + GELU; halo pixels outside the image (and pad rows) are the depthwise
            // conv's zero padding.
#pragma unroll
            for (int i = 0; i < B::kEM; ++i) {
#pragma unroll
                for (int half_row = 0; half_row < 2; ++half_row) {
                    const int r = (warp_m * B::kEM + i) * 16 + (lane >> 2) + half_row * 8;
                    const int gy = iy0 + r / B::kHaloW;
                    const int gx = ix0 + r % B::kHaloW;
                    const bool inside =
                        r < B::kHaloPx && gy >= 0 && gy < p.h && gx >= 0 && gx < p.w;
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const int col = warp_n * 32 + j * 8 + (lane & 3) * 2;
                        __half2 out = __float2half2_rn(0.f);
                        if (inside) {
                            const float2 bias =
                                *reinterpret_cast<const float2*>(p.b1 + n_base + col);
                            out = __floats2half2_rn(gelu(acc[i][j][half_row * 2] + bias.x),
                                                    gelu(acc[i][j][half_row * 2 + 1] + bias.y));
                        }
                        *reinterpret_cast<__half2*>(s_h + r * kLdH + col) = out;
                    }
                }
            }
        }
        __syncthreads();

        // ---- Depthwise 3x3 (stride S) + GELU: a thread owns 8 channels of kDwPerThread pixels.
        {
            const int c = (tid & 7) * 8;
            float wt[9][8];
#pragma unroll
            for (int t = 0; t < 9; ++t)
                unpack8(*reinterpret_cast<const uint4*>(p.w2 + t * HID + n_base + c), wt[t]);
            float bias[8];
            {
                const float4 lo = *reinterpret_cast<const float4*>(p.b2 + n_base + c);
                const float4 hi = *reinterpret_cast<const float4*>(p.b2 + n_base + c + 4);
                bias[0] = lo.x, bias[1] = lo.y, bias[2] = lo.z, bias[3] = lo.w;
                bias[4] = hi.x, bias[5] = hi.y, bias[6] = hi.z, bias[7] = hi.w;
            }
#pragma unroll
            for (int q = 0; q < B::kDwPerThread; ++q) {
                const int px = (tid >> 3) + q * (kThreads / 8);
                const int py = px / TW;
                const int pxx = px % TW;
                float v[8];
#pragma unroll
                for (int e = 0; e < 8; ++e) v[e] = bias[e];
#pragma unroll
                for (int ky = 0; ky < 3; ++ky)
#pragma unroll
                    for (int kx = 0; kx < 3; ++kx) {
                        float in[8];
                        const int r = (py * S + ky) * B::kHaloW + pxx * S + kx;
                        unpack8(*reinterpret_cast<const uint4*>(s_h + r * kLdH + c), in);
#pragma unroll
                        for (int e = 0; e < 8; ++e) v[e] = fmaf(in[e], wt[ky * 3 + kx][e], v[e]);
                    }
#pragma unroll
                for (int e = 0; e < 8; ++e) v[e] = gelu(v[e]);
                *reinterpret_cast<uint4*>(s_d + px * kLdH + c) = pack8(v);
            }
        }
        __syncthreads();

        // ---- Project: acc3[tile px x COUT] += h2[tile px x 64] * w3[:, chunk]^T.
        {
            const uint32_t a_base =
                smem_addr(s_d + (warp_m * B::kPM * 16 + a_row) * kLdH + a_col);
            const uint32_t b_base = smem_addr(
                s_w3 + (warp_n * B::kPN * 8 + b_row) * B::kLdW3 + n_base + b_col);
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
                    ldmatrix_x4(r, b_base + (j * 16 * B::kLdW3 + kk) * 2);
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
        // The next chunk's depthwise pass overwrites s_d.
        __syncthreads();
    }

    // ---- Epilogue: + b3 (+ shortcut from the halo's centre, GELU), write y.
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
using MbConv64 = Block<64, 256, 64, 1, 8, 16, true>;
using PatchMerging64 = Block<64, 128, 128, 2, 8, 8, false>;
static_assert(MbConv64::kSmemBytes == 144384 && PatchMerging64::kSmemBytes == 154624,
              "dynamic shared memory sizes must match CONV_BLOCKS in src/ops/tinyvit.rs");

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 1) mbconv_c64_e4(const ConvBlockParams p) {
    conv_block_body<MbConv64>(p);
}

extern "C" __global__ void __launch_bounds__(kThreads, 1)
    patch_merging_c64_c128(const ConvBlockParams p) {
    conv_block_body<PatchMerging64>(p);
}

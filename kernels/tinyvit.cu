// Fused TinyViT kernels (fp16 storage, fp32 accumulation).
//
// mbconv_c64_e4: one whole MBConv block of TinyViT (tiny_vit_sam.py `MBConv.forward`, eval
//   mode, BatchNorms folded into the convolutions as `Conv2d_BN.fuse()`), for 64 channels and
//   expand ratio 4 (MobileSAM's layers.0):
//
//     h1 = gelu(conv1x1(x, w1, b1))               x NHWC [B, H, W, 64] -> [B, H, W, 256]
//     h2 = gelu(depthwise3x3(h1, w2, b2, pad 1))  zero padding of h1 at the image border
//     y  = gelu(conv1x1(h2, w3, b3) + x)          -> NHWC [B, H, W, 64]
//
//   which is F.gelu(F.conv2d(F.gelu(F.conv2d(F.gelu(F.conv2d(x, w1, b1)), w2, b2, padding=1,
//   groups=256)), w3, b3) + x) with nn.GELU's exact erf form. w1 [256, 64] and w3 [64, 256] are
//   the 1x1 weights in PyTorch [out, in] order, w2 is tap-major [9, 256] (src/ops/conv.rs
//   `depthwise_weight_taps`), biases fp32. h1 and h2 are rounded to fp16 as the unfused
//   GEMM -> depthwise -> GEMM chain stores them, so the results match that chain.
//
//   A block owns an 8 x 16 tile of output pixels. It copies the 10 x 18 input halo (zeros
//   outside the image) and both 1x1 weights to shared memory once, then walks the 256 hidden
//   channels in 4 chunks of 64: expand GEMM of the halo (mma.sync, M 180 padded to 192) + GELU
//   into shared memory (halo pixels outside the image are the depthwise conv's zero padding,
//   so they are stored as 0, not gelu(b1)), depthwise 3x3 + GELU of the 128 tile pixels into
//   shared memory, and accumulates the project GEMM of that chunk in registers. The epilogue
//   adds b3 and the shortcut (read from the halo in shared memory), applies GELU and writes y.
//   The 4x-expanded activation never leaves the SM: per block HBM traffic is the halo
//   (1.4x the tile) in and the tile out. y must not overlap x (other blocks read x's halo).
#include "dense.cuh"
#include "mma.cuh"

using namespace finesam;

namespace {

constexpr int kC = 64;          // block channels
constexpr int kHidden = 256;    // kC * expand ratio 4
constexpr int kChunk = 64;      // hidden channels per pass
constexpr int kTileH = 8;       // output rows per block
constexpr int kTileW = 16;      // output columns per block
constexpr int kHaloH = kTileH + 2;
constexpr int kHaloW = kTileW + 2;
constexpr int kHaloPx = kHaloH * kHaloW;  // 180
constexpr int kHaloRows = 192;            // padded to 4 warps x 3 m16 tiles
constexpr int kTilePx = kTileH * kTileW;  // 128
constexpr int kThreads = 256;             // 8 warps: 4 along M x 2 along N
constexpr int kLd = 72;                   // padded row of 64 halves (144 bytes: ldmatrix conflict-free)
constexpr int kLdW3 = kHidden + 8;        // padded row of w3 (528 bytes)

// Shared memory layout, in halves.
constexpr int kOffX = 0;                              // [192][kLd] input halo
constexpr int kOffW1 = kOffX + kHaloRows * kLd;       // [256][kLd] w1
constexpr int kOffW3 = kOffW1 + kHidden * kLd;        // [64][kLdW3] w3
constexpr int kOffH = kOffW3 + kC * kLdW3;            // [192][kLd] h1 chunk
constexpr int kOffD = kOffH + kHaloRows * kLd;        // [128][kLd] h2 chunk
constexpr int kSmemHalves = kOffD + kTilePx * kLd;
constexpr int kSmemBytes = kSmemHalves * 2;
// The host sets this as the kernel's dynamic shared memory (MBCONV_SMEM_BYTES in
// src/ops/tinyvit.rs).
static_assert(kSmemBytes == 144384, "keep in sync with MBCONV_SMEM_BYTES in src/ops/tinyvit.rs");
static_assert(kHaloRows >= kHaloPx && kHaloRows % 64 == 0, "halo rows: 4 warps x 3 m16 tiles");

// Mirrors `MbConvParams` in src/ops/tinyvit.rs (passed by value; keep the field order in sync).
struct MbConvParams {
    const __half* x;   // NHWC [B, H, W, 64]
    const __half* w1;  // [256, 64]
    const float* b1;   // [256]
    const __half* w2;  // [9, 256]
    const float* b2;   // [256]
    const __half* w3;  // [64, 256]
    const float* b3;   // [64]
    __half* y;         // NHWC [B, H, W, 64]
    int h, w;
    int tiles_x;       // ceil(w / 16)
};

__device__ __forceinline__ float gelu(float v) { return activate(v, kActGelu); }

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 1) mbconv_c64_e4(const MbConvParams p) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __half* smem = reinterpret_cast<__half*>(smem_raw);
    __half* s_x = smem + kOffX;
    __half* s_w1 = smem + kOffW1;
    __half* s_w3 = smem + kOffW3;
    __half* s_h = smem + kOffH;
    __half* s_d = smem + kOffD;

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int warp_m = warp >> 1;  // 0..3
    const int warp_n = warp & 1;   // 0..1

    const int ty0 = (blockIdx.x / p.tiles_x) * kTileH;
    const int tx0 = (blockIdx.x % p.tiles_x) * kTileW;
    const long long image = static_cast<long long>(blockIdx.y) * p.h * p.w;
    const __half* x = p.x + image * kC;
    __half* y = p.y + image * kC;

    // ---- Load the halo (zero outside the image and in the pad rows) and both 1x1 weights.
    for (int i = tid; i < kHaloRows * (kC / 8); i += kThreads) {
        const int r = i >> 3;
        const int c = (i & 7) * 8;
        const int gy = ty0 - 1 + r / kHaloW;
        const int gx = tx0 - 1 + r % kHaloW;
        const bool ok = r < kHaloPx && gy >= 0 && gy < p.h && gx >= 0 && gx < p.w;
        const __half* src = x + (ok ? (static_cast<long long>(gy) * p.w + gx) * kC + c : 0);
        cp_async16(smem_addr(s_x + r * kLd + c), src, ok ? 16 : 0);
    }
    for (int i = tid; i < kHidden * (kC / 8); i += kThreads) {
        const int r = i >> 3;
        const int c = (i & 7) * 8;
        cp_async16(smem_addr(s_w1 + r * kLd + c), p.w1 + r * kC + c, 16);
    }
    for (int i = tid; i < kC * (kHidden / 8); i += kThreads) {
        const int r = i >> 5;
        const int c = (i & 31) * 8;
        cp_async16(smem_addr(s_w3 + r * kLdW3 + c), p.w3 + r * kHidden + c, 16);
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

    // Project accumulators: warp tile 32 pixels x 32 output channels.
    float acc3[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc3[i][j][e] = 0.f;

    for (int chunk = 0; chunk < kHidden / kChunk; ++chunk) {
        const int n_base = chunk * kChunk;
        // ---- Expand: h1[192 x 64] = x_halo[192 x 64] * w1[chunk]^T; warp tile 48 x 32.
        {
            float acc[3][4][4];
#pragma unroll
            for (int i = 0; i < 3; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
            const uint32_t a_base = smem_addr(s_x + (warp_m * 48 + a_row) * kLd + a_col);
            const uint32_t b_base =
                smem_addr(s_w1 + (n_base + warp_n * 32 + b_row) * kLd + b_col);
#pragma unroll
            for (int kk = 0; kk < kC; kk += 16) {
                uint32_t a[3][4];
                uint32_t b[4][2];
#pragma unroll
                for (int i = 0; i < 3; ++i) ldmatrix_x4(a[i], a_base + (i * 16 * kLd + kk) * 2);
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    uint32_t r[4];
                    ldmatrix_x4(r, b_base + (j * 16 * kLd + kk) * 2);
                    b[2 * j][0] = r[0];
                    b[2 * j][1] = r[1];
                    b[2 * j + 1][0] = r[2];
                    b[2 * j + 1][1] = r[3];
                }
#pragma unroll
                for (int i = 0; i < 3; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) mma16816(acc[i][j], a[i], b[j][0], b[j][1]);
            }
            // Bias + GELU; halo pixels outside the image (and pad rows) are the depthwise
            // conv's zero padding.
#pragma unroll
            for (int i = 0; i < 3; ++i) {
#pragma unroll
                for (int half_row = 0; half_row < 2; ++half_row) {
                    const int r = warp_m * 48 + i * 16 + (lane >> 2) + half_row * 8;
                    const int gy = ty0 - 1 + r / kHaloW;
                    const int gx = tx0 - 1 + r % kHaloW;
                    const bool inside =
                        r < kHaloPx && gy >= 0 && gy < p.h && gx >= 0 && gx < p.w;
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const int col = warp_n * 32 + j * 8 + (lane & 3) * 2;
                        const float2 bias =
                            *reinterpret_cast<const float2*>(p.b1 + n_base + col);
                        const float v0 = gelu(acc[i][j][half_row * 2] + bias.x);
                        const float v1 = gelu(acc[i][j][half_row * 2 + 1] + bias.y);
                        *reinterpret_cast<__half2*>(s_h + r * kLd + col) =
                            inside ? __floats2half2_rn(v0, v1) : __float2half2_rn(0.f);
                    }
                }
            }
        }
        __syncthreads();

        // ---- Depthwise 3x3 + GELU: a thread owns 8 channels of 4 tile pixels.
        {
            const int g = tid & 7;
            const int c = g * 8;
            float wt[9][8];
#pragma unroll
            for (int t = 0; t < 9; ++t)
                unpack8(*reinterpret_cast<const uint4*>(p.w2 + t * kHidden + n_base + c), wt[t]);
            float bias[8];
            {
                const float4 lo = *reinterpret_cast<const float4*>(p.b2 + n_base + c);
                const float4 hi = *reinterpret_cast<const float4*>(p.b2 + n_base + c + 4);
                bias[0] = lo.x, bias[1] = lo.y, bias[2] = lo.z, bias[3] = lo.w;
                bias[4] = hi.x, bias[5] = hi.y, bias[6] = hi.z, bias[7] = hi.w;
            }
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int px = (tid >> 3) + q * (kThreads / 8);
                const int py = px / kTileW;
                const int pxx = px % kTileW;
                float v[8];
#pragma unroll
                for (int e = 0; e < 8; ++e) v[e] = bias[e];
#pragma unroll
                for (int ky = 0; ky < 3; ++ky)
#pragma unroll
                    for (int kx = 0; kx < 3; ++kx) {
                        float in[8];
                        unpack8(*reinterpret_cast<const uint4*>(
                                    s_h + ((py + ky) * kHaloW + pxx + kx) * kLd + c),
                                in);
#pragma unroll
                        for (int e = 0; e < 8; ++e) v[e] = fmaf(in[e], wt[ky * 3 + kx][e], v[e]);
                    }
#pragma unroll
                for (int e = 0; e < 8; ++e) v[e] = gelu(v[e]);
                *reinterpret_cast<uint4*>(s_d + px * kLd + c) = pack8(v);
            }
        }
        __syncthreads();

        // ---- Project: acc3[128 x 64] += h2[128 x 64] * w3[:, chunk]^T; warp tile 32 x 32.
        {
            const uint32_t a_base = smem_addr(s_d + (warp_m * 32 + a_row) * kLd + a_col);
            const uint32_t b_base =
                smem_addr(s_w3 + (warp_n * 32 + b_row) * kLdW3 + n_base + b_col);
#pragma unroll
            for (int kk = 0; kk < kChunk; kk += 16) {
                uint32_t a[2][4];
                uint32_t b[4][2];
#pragma unroll
                for (int i = 0; i < 2; ++i) ldmatrix_x4(a[i], a_base + (i * 16 * kLd + kk) * 2);
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    uint32_t r[4];
                    ldmatrix_x4(r, b_base + (j * 16 * kLdW3 + kk) * 2);
                    b[2 * j][0] = r[0];
                    b[2 * j][1] = r[1];
                    b[2 * j + 1][0] = r[2];
                    b[2 * j + 1][1] = r[3];
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) mma16816(acc3[i][j], a[i], b[j][0], b[j][1]);
            }
        }
        // The next chunk's depthwise pass overwrites s_d.
        __syncthreads();
    }

    // ---- Epilogue: + b3 + shortcut (the halo's centre), GELU, write y.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int half_row = 0; half_row < 2; ++half_row) {
            const int px = warp_m * 32 + i * 16 + (lane >> 2) + half_row * 8;
            const int py = px / kTileW;
            const int pxx = px % kTileW;
            const int gy = ty0 + py;
            const int gx = tx0 + pxx;
            if (gy >= p.h || gx >= p.w) continue;
            const __half* shortcut = s_x + ((py + 1) * kHaloW + pxx + 1) * kLd;
            __half* out = y + (static_cast<long long>(gy) * p.w + gx) * kC;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int col = warp_n * 32 + j * 8 + (lane & 3) * 2;
                const float2 bias = *reinterpret_cast<const float2*>(p.b3 + col);
                const float2 r = __half22float2(*reinterpret_cast<const __half2*>(shortcut + col));
                const float v0 = gelu(acc3[i][j][half_row * 2] + bias.x + r.x);
                const float v1 = gelu(acc3[i][j][half_row * 2 + 1] + bias.y + r.y);
                *reinterpret_cast<__half2*>(out + col) = __floats2half2_rn(v0, v1);
            }
        }
    }
}

// Direct convolutions on CUDA cores (fp16 storage, fp32 math). The dense kxk convolutions with
// tensor cores are the implicit-GEMM kernels in gemm.cu; these are the two that are not
// GEMM-shaped:
//
// depthwise_kKsS: torch.nn.functional.conv2d(x, w, bias, stride=S, padding=pad, groups=C)
//   followed by an optional activation (nn.GELU exact erf / nn.ReLU), on NHWC fp16
//   x [B, H, W, C] -> y [B, Ho, Wo, C] (pixel stride ldy >= C), w tap-major [K*K, C] fp16
//   (src/ops/conv.rs converts PyTorch's [C, 1, K, K]), bias [C] fp32 or null. Memory-bound:
//   a thread owns 8 channels (16-byte loads) of 4 horizontally adjacent outputs, so each
//   input vector it loads feeds up to K of its outputs. C % 8 == 0.
//
// conv3x3_stem_nchw: the network stem, torch.nn.functional.conv2d(x, w, bias, stride, padding)
//   with a 3x3 kernel + optional activation, reading the preprocessed NCHW fp16 image
//   (3 channels) and writing NHWC fp16 [B, Ho, Wo, Cout] (pixel stride ldy), w in PyTorch
//   layout [Cout, 3, 3, 3] fp16, bias fp32. Cout % 8 == 0, Cout <= 64. A thread computes two
//   output pixels: 2 x 27 input taps in registers, weights broadcast from shared memory four
//   at a time and shared by both pixels. Floor at TinyViT's stem (1024 -> 512, 32 channels):
//   0.45 GFLOP = 226 M FMAs, ~7 us of issue on an H200; one pixel per thread with a shared load
//   per FMA measured ~29 us (~40 us under ncu).
#include "dense.cuh"

using namespace finesam;

namespace {

// Mirrors `DirectConvParams` in src/ops/conv.rs (both kernels of this file).
struct DirectConvParams {
    const __half* x;     // depthwise: NHWC [B, H, W, C]; stem: NCHW [B, 3, H, W]
    const __half* w;     // depthwise: [K*K, C]; stem: [Cout, 3, 3, 3]
    const float* bias;   // [C] or null
    __half* y;           // NHWC [B, Ho, Wo, C], pixel stride ldy
    long long ldy;       // output pixel stride, elements
    int batch, h, w_in;
    int c;               // output channels
    int ho, wo;
    int stride;          // stem only (the depthwise stride is a template argument)
    int pad, act;
};

constexpr int kDwOutX = 4;  // horizontally adjacent outputs per thread

template <int K, int S>
__device__ __forceinline__ void depthwise_body(const DirectConvParams& p) {
    const int groups = p.c >> 3;
    const int strips = (p.wo + kDwOutX - 1) / kDwOutX;
    long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long total = static_cast<long long>(p.batch) * p.ho * strips * groups;
    if (idx >= total) return;
    const int g = static_cast<int>(idx % groups);
    idx /= groups;
    const int strip = static_cast<int>(idx % strips);
    idx /= strips;
    const int oy = static_cast<int>(idx % p.ho);
    const int b = static_cast<int>(idx / p.ho);
    const int ox0 = strip * kDwOutX;
    const int c0 = g * 8;

    float acc[kDwOutX][8];
    {
        float bias[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (p.bias) {
            const float4 lo = *reinterpret_cast<const float4*>(p.bias + c0);
            const float4 hi = *reinterpret_cast<const float4*>(p.bias + c0 + 4);
            bias[0] = lo.x, bias[1] = lo.y, bias[2] = lo.z, bias[3] = lo.w;
            bias[4] = hi.x, bias[5] = hi.y, bias[6] = hi.z, bias[7] = hi.w;
        }
#pragma unroll
        for (int o = 0; o < kDwOutX; ++o)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[o][e] = bias[e];
    }

    const __half* image = p.x + static_cast<long long>(b) * p.h * p.w_in * p.c;
    constexpr int kInX = (kDwOutX - 1) * S + K;  // input columns feeding the strip
    const int ix0 = ox0 * S - p.pad;
#pragma unroll 1
    for (int ky = 0; ky < K; ++ky) {
        const int iy = oy * S - p.pad + ky;
        if (iy < 0 || iy >= p.h) continue;
        float wt[K][8];
#pragma unroll
        for (int kx = 0; kx < K; ++kx)
            unpack8(__ldg(reinterpret_cast<const uint4*>(p.w + (ky * K + kx) * p.c + c0)), wt[kx]);
        const __half* row = image + static_cast<long long>(iy) * p.w_in * p.c + c0;
#pragma unroll
        for (int i = 0; i < kInX; ++i) {
            const int ix = ix0 + i;
            if (ix < 0 || ix >= p.w_in) continue;
            float in[8];
            unpack8(__ldg(reinterpret_cast<const uint4*>(row + static_cast<long long>(ix) * p.c)),
                    in);
#pragma unroll
            for (int o = 0; o < kDwOutX; ++o) {
                const int kx = i - o * S;  // compile-time after unrolling
                if (kx >= 0 && kx < K) {
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[o][e] = fmaf(in[e], wt[kx][e], acc[o][e]);
                }
            }
        }
    }

    __half* out = p.y + (static_cast<long long>(b) * p.ho + oy) * p.wo * p.ldy + c0;
#pragma unroll
    for (int o = 0; o < kDwOutX; ++o) {
        if (ox0 + o >= p.wo) break;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[o][e] = activate(acc[o][e], p.act);
        *reinterpret_cast<uint4*>(out + static_cast<long long>(ox0 + o) * p.ldy) = pack8(acc[o]);
    }
}

constexpr int kStemCin = 3;
constexpr int kStemTaps = kStemCin * 9;
constexpr int kStemRow = 28;  // taps padded to whole float4s in shared memory
constexpr int kStemMaxCout = 64;
constexpr int kStemThreads = 256;

}  // namespace

#define FINESAM_DEPTHWISE(K, S)                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        depthwise_k##K##s##S(const DirectConvParams p) {                                       \
        depthwise_body<K, S>(p);                                                              \
    }

FINESAM_DEPTHWISE(3, 1)
FINESAM_DEPTHWISE(3, 2)
FINESAM_DEPTHWISE(5, 1)
FINESAM_DEPTHWISE(5, 2)
FINESAM_DEPTHWISE(7, 1)
FINESAM_DEPTHWISE(7, 2)

extern "C" __global__ void __launch_bounds__(kStemThreads) conv3x3_stem_nchw(const DirectConvParams p) {
    // Weights as rows of 28 floats (27 taps + 1 pad) so a lane reads 4 taps per shared load.
    __shared__ __align__(16) float s_w[kStemMaxCout * kStemRow];
    __shared__ float s_bias[kStemMaxCout];
    for (int i = threadIdx.x; i < p.c * kStemRow; i += blockDim.x) {
        const int co = i / kStemRow, t = i % kStemRow;
        s_w[i] = t < kStemTaps ? __half2float(p.w[co * kStemTaps + t]) : 0.f;
    }
    for (int i = threadIdx.x; i < p.c; i += blockDim.x) s_bias[i] = p.bias ? p.bias[i] : 0.f;
    __syncthreads();

    // Two output pixels per thread share every weight load (the kernel is issue-bound).
    const long long first = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * 2;
    const long long pixels = static_cast<long long>(p.batch) * p.ho * p.wo;
    if (first >= pixels) return;
    const bool second = first + 1 < pixels;
    const long long plane = static_cast<long long>(p.h) * p.w_in;

    // The 27 taps of each pixel in PyTorch's weight order (ci, ky, kx); zero outside the image.
    float taps[2][kStemTaps];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const long long pixel = second ? first + j : first;
        const int ox = static_cast<int>(pixel % p.wo);
        const int oy = static_cast<int>((pixel / p.wo) % p.ho);
        const int b = static_cast<int>(pixel / (static_cast<long long>(p.wo) * p.ho));
        const __half* image = p.x + b * kStemCin * plane;
#pragma unroll
        for (int ci = 0; ci < kStemCin; ++ci)
#pragma unroll
            for (int ky = 0; ky < 3; ++ky)
#pragma unroll
                for (int kx = 0; kx < 3; ++kx) {
                    const int iy = oy * p.stride - p.pad + ky;
                    const int ix = ox * p.stride - p.pad + kx;
                    const bool in = iy >= 0 && iy < p.h && ix >= 0 && ix < p.w_in;
                    taps[j][(ci * 3 + ky) * 3 + kx] =
                        in ? __half2float(image[ci * plane + static_cast<long long>(iy) * p.w_in + ix])
                           : 0.f;
                }
    }

#pragma unroll 1
    for (int co = 0; co < p.c; co += 8) {
        float acc[2][8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float4* wrow = reinterpret_cast<const float4*>(s_w + (co + e) * kStemRow);
            float v0 = s_bias[co + e], v1 = v0;
            // Taps in ascending order, as before: the same sums, bit for bit.
#pragma unroll
            for (int q = 0; q < kStemRow / 4; ++q) {
                const float4 w = wrow[q];  // same address in every lane
                const float wq[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    if (4 * q + i >= kStemTaps) break;
                    v0 = fmaf(taps[0][4 * q + i], wq[i], v0);
                    v1 = fmaf(taps[1][4 * q + i], wq[i], v1);
                }
            }
            acc[0][e] = activate(v0, p.act);
            acc[1][e] = activate(v1, p.act);
        }
        *reinterpret_cast<uint4*>(p.y + first * p.ldy + co) = pack8(acc[0]);
        if (second) *reinterpret_cast<uint4*>(p.y + (first + 1) * p.ldy + co) = pack8(acc[1]);
    }
}

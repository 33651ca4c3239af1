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
//   layout [Cout, 3, 3, 3] fp16, bias fp32. Cout % 8 == 0, Cout <= 64. A thread computes one
//   output pixel: 27 input taps in registers, weights broadcast from shared memory.
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
    __shared__ float s_w[kStemMaxCout * kStemTaps];
    __shared__ float s_bias[kStemMaxCout];
    for (int i = threadIdx.x; i < p.c * kStemTaps; i += blockDim.x)
        s_w[i] = __half2float(p.w[i]);
    for (int i = threadIdx.x; i < p.c; i += blockDim.x) s_bias[i] = p.bias ? p.bias[i] : 0.f;
    __syncthreads();

    const long long pixel = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long pixels = static_cast<long long>(p.batch) * p.ho * p.wo;
    if (pixel >= pixels) return;
    const int ox = static_cast<int>(pixel % p.wo);
    const int oy = static_cast<int>((pixel / p.wo) % p.ho);
    const int b = static_cast<int>(pixel / (static_cast<long long>(p.wo) * p.ho));

    // The 27 taps in PyTorch's weight order (ci, ky, kx); zero outside the image.
    float taps[kStemTaps];
    const long long plane = static_cast<long long>(p.h) * p.w_in;
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
                taps[(ci * 3 + ky) * 3 + kx] =
                    in ? __half2float(image[ci * plane + static_cast<long long>(iy) * p.w_in + ix])
                       : 0.f;
            }

    __half* out = p.y + pixel * p.ldy;
#pragma unroll 1
    for (int co = 0; co < p.c; co += 8) {
        float acc[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float* wrow = s_w + (co + e) * kStemTaps;  // same address in every lane
            float v = s_bias[co + e];
#pragma unroll
            for (int t = 0; t < kStemTaps; ++t) v = fmaf(taps[t], wrow[t], v);
            acc[e] = activate(v, p.act);
        }
        *reinterpret_cast<uint4*>(out + co) = pack8(acc);
    }
}

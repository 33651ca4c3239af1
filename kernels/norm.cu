// LayerNorm over the last dimension, fp16 in/out, fp32 statistics:
//
//   s = x (+ r)                 (rounded to fp16 and optionally written to `sum`, as PyTorch's
//                                fp16 `x = x + r` would store it)
//   y = (s - mean(s)) / sqrt(var(s) + eps) * gamma + beta     (biased variance)
//
// = torch.nn.functional.layer_norm(s, [C], gamma, beta, eps) (nn.LayerNorm, eps 1e-5) and, on
// NHWC activations, SAM's LayerNorm2d over channels (eps 1e-6). gamma/beta fp32 [C].
//
// With a window geometry (win > 0) the rows are gathered as TinyViT's window partition lays
// them out (kernels/window.cu `window_partition`): output row r is token r % (win * win) of
// window r / (win * win) of the [N, win_h, win_w, C] map zero-padded to whole windows, and a
// padding token normalises a zero row (giving beta), exactly as partition-then-LayerNorm.
// `y` is then [windows * win * win, C]; no residual.
//
// With a depthwise prologue (dw_w non-null; TinyViT's local conv followed by the MLP's
// LayerNorm) row r is pixel r of the NHWC map [N, win_h, win_w, C] and
//   s = fp16(dw_b + sum over the 3x3 taps of x[neighbour] * dw_w[tap])   (zero padding 1)
// = F.conv2d(x, w, b, padding=1, groups=C) as depthwise_k3s1 computes and stores it; s is
// written to `sum` (the block's residual stream) and normalised. No residual, no window.
//
// A group of G lanes (G = 8, 16 or 32, inside one warp) owns a row; each lane holds VPL 16-byte
// vectors (8 channels each) in registers, so the row is read once and the variance is computed
// exactly from centred values (two passes over registers). C % 8 == 0, C <= G * VPL * 8.
#include "dense.cuh"

using namespace finesam;

namespace {

// Mirrors `LayerNormParams` in src/ops/norm.rs.
struct LayerNormParams {
    const __half* x;
    const __half* residual;  // or null
    __half* sum;             // x + residual, or null
    const float* gamma;
    const float* beta;
    __half* y;
    int rows, c;
    float eps;
    int win;                   // window side, or 0: row r reads row r
    int win_h, win_w;          // the map's rows and columns
    int windows_y, windows_x;  // windows along each axis after padding
    const __half* dw_w;        // [9, C] tap-major, or null
    const float* dw_b;         // [C]
};

constexpr int kThreads = 256;

template <int G>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int offset = G / 2; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <int G, int VPL>
__device__ __forceinline__ void layer_norm_body(const LayerNormParams& p) {
    const int row = blockIdx.x * (kThreads / G) + threadIdx.x / G;
    const int lane = threadIdx.x % G;
    // Rows past the end still take part in the shuffles; they only skip memory.
    const bool row_ok = row < p.rows;
    const long long base = static_cast<long long>(row_ok ? row : 0) * p.c;
    long long src = base;
    if (p.win > 0 && row_ok) {
        const int tokens = p.win * p.win;
        const int token = row % tokens;
        const int window = row / tokens;
        const int wx = window % p.windows_x;
        const int wy = (window / p.windows_x) % p.windows_y;
        const int n = window / (p.windows_x * p.windows_y);
        const int y = wy * p.win + token / p.win;
        const int x = wx * p.win + token % p.win;
        src = (static_cast<long long>(n * p.win_h + y) * p.win_w + x) * p.c;
        // A padding token: zeros in (v stays 0), beta out.
        if (y >= p.win_h || x >= p.win_w) src = -1;
    }

    float v[VPL][8];
    bool has[VPL];
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
        const int c0 = (lane + j * G) * 8;
        has[j] = row_ok && c0 < p.c;
#pragma unroll
        for (int e = 0; e < 8; ++e) v[j][e] = 0.f;
        if (has[j] && p.dw_w != nullptr) {
            // Depthwise 3x3 prologue: the local conv of pixel `row`, rounded to fp16 as the
            // stored residual stream holds it, then normalised.
            const int x0 = row % p.win_w, y0 = (row / p.win_w) % p.win_h;
            const int n = row / (p.win_w * p.win_h);
            const float4 b0 = *reinterpret_cast<const float4*>(p.dw_b + c0);
            const float4 b1 = *reinterpret_cast<const float4*>(p.dw_b + c0 + 4);
            float acc[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
            // All 9 taps' loads are issued before the FMAs (predicated, no branch around
            // them): the kernel is latency-bound on these neighbour reads.
            uint4 xr[9];
#pragma unroll
            for (int tap = 0; tap < 9; ++tap) {
                const int yy = y0 + tap / 3 - 1, xx = x0 + tap % 3 - 1;
                const bool inside = yy >= 0 && yy < p.win_h && xx >= 0 && xx < p.win_w;
                const long long at = (static_cast<long long>(n * p.win_h + yy) * p.win_w + xx) * p.c;
                xr[tap] = inside ? *reinterpret_cast<const uint4*>(p.x + at + c0) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int tap = 0; tap < 9; ++tap) {
                float xv[8], wv[8];
                unpack8(xr[tap], xv);
                unpack8(*reinterpret_cast<const uint4*>(p.dw_w + tap * p.c + c0), wv);
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[e] = fmaf(xv[e], wv[e], acc[e]);
            }
            const uint4 s = pack8(acc);
            unpack8(s, v[j]);
            if (p.sum) *reinterpret_cast<uint4*>(p.sum + base + c0) = s;
        } else if (has[j] && src >= 0) {
            unpack8(*reinterpret_cast<const uint4*>(p.x + src + c0), v[j]);
            if (p.residual) {
                float r[8];
                unpack8(*reinterpret_cast<const uint4*>(p.residual + base + c0), r);
#pragma unroll
                for (int e = 0; e < 8; ++e) v[j][e] += r[e];
                const uint4 s = pack8(v[j]);
                // Normalise the rounded sum, exactly what the stored residual stream holds.
                unpack8(s, v[j]);
                if (p.sum) *reinterpret_cast<uint4*>(p.sum + base + c0) = s;
            }
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) total += v[j][e];
    }
    const float inv_c = 1.f / static_cast<float>(p.c);
    const float mean = group_sum<G>(total) * inv_c;
    float sq = 0.f;
#pragma unroll
    for (int j = 0; j < VPL; ++j)
        if (has[j])
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const float d = v[j][e] - mean;
                sq = fmaf(d, d, sq);
            }
    const float rstd = rsqrtf(group_sum<G>(sq) * inv_c + p.eps);

#pragma unroll
    for (int j = 0; j < VPL; ++j) {
        if (!has[j]) continue;
        const int c0 = (lane + j * G) * 8;
        const float4 g0 = *reinterpret_cast<const float4*>(p.gamma + c0);
        const float4 g1 = *reinterpret_cast<const float4*>(p.gamma + c0 + 4);
        const float4 b0 = *reinterpret_cast<const float4*>(p.beta + c0);
        const float4 b1 = *reinterpret_cast<const float4*>(p.beta + c0 + 4);
        const float g[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
        const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
        float out[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = fmaf((v[j][e] - mean) * rstd, g[e], b[e]);
        *reinterpret_cast<uint4*>(p.y + base + c0) = pack8(out);
    }
}

}  // namespace

// Variants by the largest C they cover (keep in sync with src/ops/norm.rs).
#define FINESAM_LAYER_NORM(NAME, G, VPL)                                                       \
    extern "C" __global__ void __launch_bounds__(kThreads) layer_norm_##NAME(                 \
        const LayerNormParams p) {                                                            \
        layer_norm_body<G, VPL>(p);                                                           \
    }

FINESAM_LAYER_NORM(c64, 8, 1)
FINESAM_LAYER_NORM(c128, 16, 1)
FINESAM_LAYER_NORM(c192, 8, 3)  // TinyViT layers.2 (160): 20 of 24 vectors busy, not 20 of 32
FINESAM_LAYER_NORM(c256, 32, 1)
FINESAM_LAYER_NORM(c320, 8, 5)  // TinyViT layers.3 (320): every lane busy, not 40 of 64
FINESAM_LAYER_NORM(c512, 32, 2)
FINESAM_LAYER_NORM(c1024, 32, 4)

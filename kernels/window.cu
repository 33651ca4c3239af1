// TinyViT window plumbing around the fused attention (mobile_sam/modeling/tiny_vit_sam.py,
// TinyViTBlock.forward):
//
//   window_partition    x [N, H, W, C] -> F.pad to multiples of the window -> view/transpose ->
//                       [N * nH * nW, ws * ws, C]; padded tokens are zeros. (They are NOT masked
//                       in the attention: the official code feeds them through LayerNorm and qkv,
//                       so they are real keys, and so are they here.)
//   window_unpartition  the reverse view/transpose, cropped to H x W, optionally with the block's
//                       residual added (`res_x + x`, fp32 add rounded once to fp16, as PyTorch
//                       does for fp16 tensors). `out` may be the residual itself (in place).
//
// fp16 tensors, C a multiple of 8: every thread moves 16-byte chunks, grid-stride over chunks.
// The launcher guarantees both tensors hold fewer than 2^31 elements, so 32-bit index math
// (much cheaper divisions than 64-bit) is exact.
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

// Mirrors `WindowGeometry` in src/ops/window.rs.
struct WindowGeometry {
    int batch, height, width, channels, window;
    int windows_y, windows_x;  // padded height / window, padded width / window
};

}  // namespace

extern "C" __global__ void __launch_bounds__(256)
    window_partition(const __half* __restrict__ in, __half* __restrict__ out, WindowGeometry g) {
    const int chunks = g.channels / 8;
    const int tokens = g.window * g.window;
    const int total = g.batch * g.windows_y * g.windows_x * tokens * chunks;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int c = i % chunks;
        const int token_index = i / chunks;
        const int token = token_index % tokens;
        const int win = token_index / tokens;
        const int wx = win % g.windows_x;
        const int wy = (win / g.windows_x) % g.windows_y;
        const int n = win / (g.windows_x * g.windows_y);
        const int y = wy * g.window + token / g.window;
        const int x = wx * g.window + token % g.window;
        uint4 value = make_uint4(0, 0, 0, 0);
        if (y < g.height && x < g.width) {
            const int src = ((n * g.height + y) * g.width + x) * g.channels + c * 8;
            value = __ldg(reinterpret_cast<const uint4*>(in + src));
        }
        reinterpret_cast<uint4*>(out)[i] = value;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    window_unpartition(const __half* __restrict__ in, const __half* residual, __half* out,
                       WindowGeometry g) {
    const int chunks = g.channels / 8;
    const int total = g.batch * g.height * g.width * chunks;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int c = i % chunks;
        const int pixel = i / chunks;
        const int x = pixel % g.width;
        const int y = (pixel / g.width) % g.height;
        const int n = pixel / (g.width * g.height);
        const int win = (n * g.windows_y + y / g.window) * g.windows_x + x / g.window;
        const int token = (y % g.window) * g.window + x % g.window;
        const int src = (win * g.window * g.window + token) * g.channels + c * 8;
        uint4 value = __ldg(reinterpret_cast<const uint4*>(in + src));
        if (residual != nullptr) {
            // Plain load: `residual` may alias `out`.
            const uint4 r = reinterpret_cast<const uint4*>(residual)[i];
            __half2* v = reinterpret_cast<__half2*>(&value);
            const __half2* rr = reinterpret_cast<const __half2*>(&r);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const float2 a = __half22float2(rr[k]);
                const float2 b = __half22float2(v[k]);
                v[k] = __floats2half2_rn(a.x + b.x, a.y + b.y);
            }
        }
        reinterpret_cast<uint4*>(out)[i] = value;
    }
}

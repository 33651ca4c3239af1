// Preprocessing: one uploaded u8 frame (Gray8/Rgb8/Bgr8/Rgba8, any size, explicit row stride)
// -> both network inputs in a single launch:
//   (a) D-FINE:    640x640 RGB, bilinear with antialias, /255, NCHW fp16;
//   (b) MobileSAM: longest side 1024 (extent from the frame header), bilinear with antialias,
//                  (x - mean) / std, zero-padded bottom/right to 1024x1024, NCHW fp16.
// Reference op: torch.nn.functional.interpolate(x.float(), size, mode="bilinear",
// align_corners=False, antialias=True) on 0..255 values, i.e. ATen's upsample_bilinear2d_aa
// (separable triangle filter whose support grows with the downscale factor, weights
// normalised per axis); followed by /255 (D-FINE) or SamPredictor's normalisation (SAM).
#include <climits>

#include "common.cuh"

using namespace finesam;

namespace {

constexpr int kTileX = 32;  // one warp spans 32 consecutive output pixels of a row
constexpr int kThreadsY = 8;
// Each thread produces a vertical strip of consecutive output rows. Their input row spans
// overlap, so every input row of the union is filtered horizontally once and added to each
// output row whose span holds it: separable filtering in registers, about half the work of
// filtering every output pixel's 2D window on its own.
constexpr int kRowsPerThread = 4;
constexpr int kTileY = kThreadsY * kRowsPerThread;
// Most input taps one output pixel reads along one axis. A span covers at most 2*scale+1
// inputs; the host caps frames at 16384 pixels a side, so the largest scale (D-FINE, 16384/640)
// needs 53 taps.
constexpr int kMaxTaps = 64;

__device__ __forceinline__ float triangle(float x) {
    x = fabsf(x);
    return x < 1.f ? 1.f - x : 0.f;
}

// Fills taps[0..size) with the normalised weights of one output index along one axis, exactly
// as ATen computes them (compute_weights_span + compute_weights, interp_size 2); returns start.
__device__ int axis_weights(int out_index, float scale, int in_size, float* taps, int stride,
                            int& size) {
    const float support = scale >= 1.f ? scale : 1.f;
    const float center = scale * (out_index + 0.5f);
    int start = max(static_cast<int>(center - support + 0.5f), 0);
    int count = min(min(static_cast<int>(center + support + 0.5f), in_size) - start, kMaxTaps);
    const float start_minus_center = start - center;
    const float inv_scale = scale >= 1.f ? 1.f / scale : 1.f;
    auto weight = [&](int j) { return triangle((j + start_minus_center + 0.5f) * inv_scale); };
    float total = 0.f;
    for (int j = 0; j < count; ++j) total += weight(j);
    const float inv_total = total != 0.f ? 1.f / total : 0.f;
    // Drop zero-weight taps at the span's ends (they add exactly 0 in the reference too).
    int first = 0;
    while (first < count && weight(first) == 0.f) ++first;
    while (count > first && weight(count - 1) == 0.f) --count;
    for (int j = first; j < count; ++j) taps[(j - first) * stride] = weight(j) * inv_total;
    size = count - first;
    return start + first;
}

// u8 -> f32 without the conversion unit (I2F runs at a quarter of the FMA rate and was the
// bottleneck): put the byte in the mantissa of 2^23 and subtract 2^23. Exact for 0..255.
__device__ __forceinline__ float byte_to_float(uint32_t byte) {
    return __uint_as_float(0x4b000000u | byte) - 8388608.f;
}

// Per-block weight tables: x weights for the tile's 32 columns, y weights for its 8 rows.
struct TileWeights {
    float x[kMaxTaps][kTileX];
    float y[kMaxTaps][kTileY];
    int x_start[kTileX], x_size[kTileX];
    int y_start[kTileY], y_size[kTileY];
};

// Resamples this thread's strip of kRowsPerThread output pixels (RGB in 0..255).
template <int kBytesPerPixel, bool kBgr>
__device__ __forceinline__ void resample_strip(const TileWeights& w, const uint8_t* pixels,
                                               uint32_t stride, float rgb[kRowsPerThread][3]) {
    const int tx = threadIdx.x, r0 = threadIdx.y * kRowsPerThread;
    const int x_size = w.x_size[tx];
    const uint8_t* column = pixels + static_cast<size_t>(w.x_start[tx]) * kBytesPerPixel;
    int y_start[kRowsPerThread], y_size[kRowsPerThread];
    int y_begin = INT_MAX, y_end = 0;
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) {
        y_start[r] = w.y_start[r0 + r];
        y_size[r] = w.y_size[r0 + r];
        y_begin = min(y_begin, y_start[r]);
        y_end = max(y_end, y_start[r] + y_size[r]);
        rgb[r][0] = rgb[r][1] = rgb[r][2] = 0.f;
    }
    for (int y = y_begin; y < y_end; ++y) {
        const uint8_t* px = column + static_cast<size_t>(y) * stride;
        float r = 0.f, g = 0.f, b = 0.f;
#pragma unroll 4
        for (int i = 0; i < x_size; ++i, px += kBytesPerPixel) {
            const float wx = w.x[i][tx];
            if (kBytesPerPixel == 1) {
                r = fmaf(wx, byte_to_float(px[0]), r);
            } else {
                r = fmaf(wx, byte_to_float(px[kBgr ? 2 : 0]), r);
                g = fmaf(wx, byte_to_float(px[1]), g);
                b = fmaf(wx, byte_to_float(px[kBgr ? 0 : 2]), b);
            }
        }
        if (kBytesPerPixel == 1) g = b = r;
#pragma unroll
        for (int k = 0; k < kRowsPerThread; ++k) {
            const int j = y - y_start[k];
            if (j >= 0 && j < y_size[k]) {
                const float wy = w.y[j][r0 + k];
                rgb[k][0] = fmaf(wy, r, rgb[k][0]);
                rgb[k][1] = fmaf(wy, g, rgb[k][1]);
                rgb[k][2] = fmaf(wy, b, rgb[k][2]);
            }
        }
    }
}

__device__ __forceinline__ void resample_any(const TileWeights& w, const uint8_t* pixels,
                                             const FrameHeader& h, float rgb[kRowsPerThread][3]) {
    switch (h.format) {
        case kGray8: resample_strip<1, false>(w, pixels, h.row_stride, rgb); break;
        case kBgr8: resample_strip<3, true>(w, pixels, h.row_stride, rgb); break;
        case kRgba8: resample_strip<4, false>(w, pixels, h.row_stride, rgb); break;
        default: resample_strip<3, false>(w, pixels, h.row_stride, rgb); break;
    }
}

}  // namespace

struct SamNormalization {
    float mean[3];
    float inv_std[3];
};

// Grid: a flat list of 32x32 tiles, first those of the D-FINE output, then those of the SAM
// one. Each block first builds its tile's weight tables in shared memory (one thread per column
// and per row), then every thread accumulates its strip of 4 pixels from them.
extern "C" __global__ void __launch_bounds__(kTileX * kThreadsY)
preprocess_frame(const uint8_t* __restrict__ upload, __half* __restrict__ dfine_out, int dfine_size,
                 __half* __restrict__ sam_out, int sam_size, SamNormalization norm) {
    __shared__ TileWeights weights;
    const FrameHeader h = *reinterpret_cast<const FrameHeader*>(upload);
    const uint8_t* pixels = upload + kFramePixelOffset;

    const int dfine_tiles_x = (dfine_size + kTileX - 1) / kTileX;
    const int dfine_tiles = dfine_tiles_x * ((dfine_size + kTileY - 1) / kTileY);
    int tile = blockIdx.x;
    const bool is_dfine = tile < dfine_tiles;
    const int size = is_dfine ? dfine_size : sam_size;
    if (!is_dfine) tile -= dfine_tiles;
    const int tiles_x = (size + kTileX - 1) / kTileX;
    const int x0 = (tile % tiles_x) * kTileX, y0 = (tile / tiles_x) * kTileY;
    const int ox = x0 + threadIdx.x, oy0 = y0 + threadIdx.y * kRowsPerThread;
    // The resampled extent: the whole square for D-FINE, the longest-side-1024 box for SAM.
    const int out_w = is_dfine ? size : static_cast<int>(h.sam_width);
    const int out_h = is_dfine ? size : static_cast<int>(h.sam_height);
    const size_t plane = static_cast<size_t>(size) * size;
    __half* out = is_dfine ? dfine_out : sam_out;
    const __half zero = __float2half_rn(0.f);

    // SAM tiles entirely in the padding: zeros (padding follows normalisation in the reference).
    if (x0 >= out_w || y0 >= out_h) {
        for (int k = 0; k < kRowsPerThread; ++k) {
            const int oy = oy0 + k;
            if (ox < size && oy < size)
                for (int c = 0; c < 3; ++c) out[c * plane + static_cast<size_t>(oy) * size + ox] = zero;
        }
        return;
    }
    const int tid = threadIdx.y * kTileX + threadIdx.x;
    if (tid < kTileX) {
        const int col = min(x0 + tid, out_w - 1);
        weights.x_start[tid] = axis_weights(col, static_cast<float>(h.width) / out_w, h.width,
                                            &weights.x[0][tid], kTileX, weights.x_size[tid]);
    } else if (tid < kTileX + kTileY) {
        const int r = tid - kTileX;
        const int row = min(y0 + r, out_h - 1);
        weights.y_start[r] = axis_weights(row, static_cast<float>(h.height) / out_h, h.height,
                                          &weights.y[0][r], kTileY, weights.y_size[r]);
    }
    __syncthreads();
    if (ox >= size) return;

    float rgb[kRowsPerThread][3];
    resample_any(weights, pixels, h, rgb);
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
        const int oy = oy0 + k;
        if (oy >= size) break;
        const size_t at = static_cast<size_t>(oy) * size + ox;
        for (int c = 0; c < 3; ++c) {
            float v;
            if (is_dfine) {
                v = rgb[k][c] * (1.f / 255.f);
            } else if (ox < out_w && oy < out_h) {
                v = (rgb[k][c] - norm.mean[c]) * norm.inv_std[c];
            } else {
                v = 0.f;  // SAM padding inside a boundary tile
            }
            out[c * plane + at] = __float2half_rn(v);
        }
    }
}

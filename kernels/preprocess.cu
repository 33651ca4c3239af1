// Preprocessing: one uploaded u8 frame (Gray8/Rgb8/Bgr8/Rgba8, any size, explicit row stride)
// -> both network inputs in a single launch:
//   (a) D-FINE:    640x640 RGB, bilinear with antialias, /255, NCHW fp16;
//   (b) MobileSAM: longest side 1024 (extent from the frame header), bilinear with antialias,
//                  (x - mean) / std, zero-padded bottom/right to 1024x1024, NCHW fp16.
// Reference op: torch.nn.functional.interpolate(x.float(), size, mode="bilinear",
// align_corners=False, antialias=True) on 0..255 values, i.e. ATen's upsample_bilinear2d_aa
// (separable triangle filter whose support grows with the downscale factor, weights
// normalised per axis); followed by /255 (D-FINE) or SamPredictor's normalisation (SAM).
#include "common.cuh"

using namespace finesam;

namespace {

constexpr int kTileX = 32;  // one warp spans 32 consecutive output pixels of a row
constexpr int kTileY = 8;

__device__ __forceinline__ float triangle(float x) {
    x = fabsf(x);
    return x < 1.f ? 1.f - x : 0.f;
}

// The input span and weight normalisation of one output index along one axis, exactly as
// ATen computes them (compute_weights_span + compute_weights with interp_size 2).
struct AxisSpan {
    int start;
    int size;
    float start_minus_center;
    float inv_scale;
    float inv_total;
};

__device__ __forceinline__ AxisSpan axis_span(int out_index, float scale, int in_size) {
    AxisSpan s;
    const float support = scale >= 1.f ? scale : 1.f;
    const float center = scale * (out_index + 0.5f);
    s.start = max(static_cast<int>(center - support + 0.5f), 0);
    s.size = min(static_cast<int>(center + support + 0.5f), in_size) - s.start;
    s.start_minus_center = s.start - center;
    s.inv_scale = scale >= 1.f ? 1.f / scale : 1.f;
    float total = 0.f;
    for (int j = 0; j < s.size; ++j) total += triangle((j + s.start_minus_center + 0.5f) * s.inv_scale);
    s.inv_total = total != 0.f ? 1.f / total : 0.f;
    return s;
}

__device__ __forceinline__ float axis_weight(const AxisSpan& s, int j) {
    return triangle((j + s.start_minus_center + 0.5f) * s.inv_scale) * s.inv_total;
}

// Resamples the frame at output pixel (ox, oy) of an out_w x out_h image; RGB in 0..255.
__device__ void resample(const FrameHeader& h, const uint8_t* pixels, int ox, int oy, int out_w,
                         int out_h, float rgb[3]) {
    const float scale_x = static_cast<float>(h.width) / out_w;
    const float scale_y = static_cast<float>(h.height) / out_h;
    const AxisSpan sx = axis_span(ox, scale_x, h.width);
    const AxisSpan sy = axis_span(oy, scale_y, h.height);
    const int bpp = bytes_per_pixel(h.format);
    rgb[0] = rgb[1] = rgb[2] = 0.f;
    for (int j = 0; j < sy.size; ++j) {
        const uint8_t* row = pixels + static_cast<size_t>(sy.start + j) * h.row_stride +
                             static_cast<size_t>(sx.start) * bpp;
        float r = 0.f, g = 0.f, b = 0.f;
        for (int i = 0; i < sx.size; ++i) {
            float pr, pg, pb;
            load_rgb(row + i * bpp, h.format, pr, pg, pb);
            const float w = axis_weight(sx, i);
            r = fmaf(w, pr, r);
            g = fmaf(w, pg, g);
            b = fmaf(w, pb, b);
        }
        const float wy = axis_weight(sy, j);
        rgb[0] = fmaf(wy, r, rgb[0]);
        rgb[1] = fmaf(wy, g, rgb[1]);
        rgb[2] = fmaf(wy, b, rgb[2]);
    }
}

}  // namespace

struct SamNormalization {
    float mean[3];
    float inv_std[3];
};

// Grid: a flat list of 32x8 tiles, first those of the D-FINE output, then those of the SAM one.
extern "C" __global__ void __launch_bounds__(kTileX * kTileY)
preprocess_frame(const uint8_t* __restrict__ upload, __half* __restrict__ dfine_out, int dfine_size,
                 __half* __restrict__ sam_out, int sam_size, SamNormalization norm) {
    const FrameHeader h = *reinterpret_cast<const FrameHeader*>(upload);
    const uint8_t* pixels = upload + kFramePixelOffset;

    const int dfine_tiles_x = (dfine_size + kTileX - 1) / kTileX;
    const int dfine_tiles = dfine_tiles_x * ((dfine_size + kTileY - 1) / kTileY);
    int tile = blockIdx.x;
    const bool is_dfine = tile < dfine_tiles;
    const int size = is_dfine ? dfine_size : sam_size;
    if (!is_dfine) tile -= dfine_tiles;
    const int tiles_x = (size + kTileX - 1) / kTileX;
    const int ox = (tile % tiles_x) * kTileX + threadIdx.x;
    const int oy = (tile / tiles_x) * kTileY + threadIdx.y;
    if (ox >= size || oy >= size) return;
    const size_t plane = static_cast<size_t>(size) * size;
    const size_t at = static_cast<size_t>(oy) * size + ox;

    float rgb[3];
    if (is_dfine) {
        resample(h, pixels, ox, oy, size, size, rgb);
        constexpr float kInv255 = 1.f / 255.f;
        for (int c = 0; c < 3; ++c) dfine_out[c * plane + at] = __float2half_rn(rgb[c] * kInv255);
        return;
    }
    // SAM: resample into the resized extent, zero padding outside it (padding happens after
    // normalisation in the reference, so it is exactly 0).
    if (ox >= static_cast<int>(h.sam_width) || oy >= static_cast<int>(h.sam_height)) {
        for (int c = 0; c < 3; ++c) sam_out[c * plane + at] = __float2half_rn(0.f);
        return;
    }
    resample(h, pixels, ox, oy, h.sam_width, h.sam_height, rgb);
    for (int c = 0; c < 3; ++c)
        sam_out[c * plane + at] = __float2half_rn((rgb[c] - norm.mean[c]) * norm.inv_std[c]);
}

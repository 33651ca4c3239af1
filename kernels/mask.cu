// Mask decoding: MobileSAM's low-res mask logits (K x 256 x 256, fp32) -> binary masks at the
// frame's resolution, bit-packed and cropped, written straight into the result packet's mask
// index and mask data sections. Never materialises a full-resolution float mask.
//
// Reference op: Sam.postprocess_masks followed by `> mask_threshold` (0.0):
//   m = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)
//   m = m[..., :sam_h, :sam_w]
//   m = F.interpolate(m, (H, W), mode="bilinear", align_corners=False)
//   mask = m > 0
// Both interpolations are evaluated on the fly per output pixel with ATen's arithmetic
// (upsample_bilinear2d: src = scale * (dst + 0.5) - 0.5 clamped at 0, scale = in / out).
//
// Three launches: mask_bounds (one block per mask: a box that provably holds every set pixel,
// from the low-res logits), mask_layout (one block: crop sizes -> packet offsets, records,
// counts), mask_encode (one thread per 32-bit word of bits).
#include "common.cuh"

using namespace finesam;

namespace {

constexpr int kLowRes = 256;   // MobileSAM low-res mask side
constexpr int kSamSize = 1024; // MobileSAM input side

struct MaskRecord {  // mirrors finesam::packet::MaskRecord
    uint32_t detection, x, y, width, height, data_offset, data_bytes;
    float quality;
};

// One bilinear tap pair along an axis, as ATen computes it for align_corners=False.
struct Taps {
    int i0, i1;
    float w0, w1;
};

__device__ __forceinline__ Taps taps(float scale, int dst, int in_size) {
    float src = scale * (dst + 0.5f) - 0.5f;
    src = src < 0.f ? 0.f : src;
    Taps t;
    t.i0 = min(static_cast<int>(src), in_size - 1);
    t.i1 = t.i0 + (t.i0 < in_size - 1 ? 1 : 0);
    t.w1 = src - t.i0;
    t.w0 = 1.f - t.w1;
    return t;
}

// Value of the 1024x1024 upsampled logits at (u, v) (the first interpolate).
__device__ __forceinline__ float upsampled(const float* __restrict__ low, int u, int v) {
    constexpr float kScale = static_cast<float>(kLowRes) / kSamSize;
    const Taps ty = taps(kScale, v, kLowRes), tx = taps(kScale, u, kLowRes);
    const float* r0 = low + ty.i0 * kLowRes;
    const float* r1 = low + ty.i1 * kLowRes;
    return ty.w0 * (tx.w0 * r0[tx.i0] + tx.w1 * r0[tx.i1]) +
           ty.w1 * (tx.w0 * r1[tx.i0] + tx.w1 * r1[tx.i1]);
}

// The logit of frame pixel (x, y): the second interpolate over the cropped upsampled logits.
__device__ __forceinline__ float frame_logit(const float* __restrict__ low, const FrameHeader& h,
                                             int x, int y) {
    const Taps ty = taps(static_cast<float>(h.sam_height) / h.height, y, h.sam_height);
    const Taps tx = taps(static_cast<float>(h.sam_width) / h.width, x, h.sam_width);
    return ty.w0 * (tx.w0 * upsampled(low, tx.i0, ty.i0) + tx.w1 * upsampled(low, tx.i1, ty.i0)) +
           ty.w1 * (tx.w0 * upsampled(low, tx.i0, ty.i1) + tx.w1 * upsampled(low, tx.i1, ty.i1));
}

// Frame pixels [first, last] whose value can depend on crop-space indices [u0, u1] (one axis).
// Crop index u feeds frame pixel x iff floor(src) is u or u - 1, src = s * (x + 0.5) - 0.5, so
// x lies in ((u - 0.5) / s - 0.5 - 1, (u + 1.5) / s - 0.5 + 1); one extra pixel of margin
// absorbs float rounding.
__device__ __forceinline__ void frame_span(int u0, int u1, int crop, int frame, int& first,
                                           int& last) {
    const float s = static_cast<float>(crop) / frame;
    first = max(static_cast<int>(floorf((u0 - 0.5f) / s - 0.5f)) - 2, 0);
    last = min(static_cast<int>(ceilf((u1 + 1.5f) / s - 0.5f)) + 2, frame - 1);
}

}  // namespace

struct MaskGeometry {
    uint32_t mask_index_offset;   // bytes from the packet start
    uint32_t mask_data_offset;
    uint32_t mask_data_capacity;
    uint32_t masks_per_detection; // 1, or 3 with multimask output
    uint32_t max_masks;           // capacity of `bounds` and of the mask index
};

// bounds[k] = {x0, y0, x1, y1} inclusive frame-pixel box holding every pixel of mask k whose
// logit can be > threshold, or x0 > x1 when none can. A frame logit is a convex combination of
// low-res logits, so it can only exceed the threshold where some low-res logit it depends on
// does: the box of those low-res pixels, mapped through both interpolations, is enough.
extern "C" __global__ void __launch_bounds__(256)
mask_bounds(const float* __restrict__ low_res, const uint32_t* __restrict__ mask_count,
            const uint8_t* __restrict__ upload, float threshold, int4* __restrict__ bounds) {
    const int k = blockIdx.x;
    if (k >= static_cast<int>(*mask_count)) return;
    const float* low = low_res + static_cast<size_t>(k) * kLowRes * kLowRes;
    int lo_x = kLowRes, lo_y = kLowRes, hi_x = -1, hi_y = -1;
    for (int i = threadIdx.x; i < kLowRes * kLowRes / 4; i += blockDim.x) {
        const float4 v = reinterpret_cast<const float4*>(low)[i];
        const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (e[j] > threshold) {
                const int p = 4 * i + j, x = p % kLowRes, y = p / kLowRes;
                lo_x = min(lo_x, x); hi_x = max(hi_x, x);
                lo_y = min(lo_y, y); hi_y = max(hi_y, y);
            }
        }
    }
    __shared__ int box[4];
    if (threadIdx.x == 0) { box[0] = kLowRes; box[1] = kLowRes; box[2] = -1; box[3] = -1; }
    __syncthreads();
    if (hi_x >= 0) {
        atomicMin(&box[0], lo_x); atomicMin(&box[1], lo_y);
        atomicMax(&box[2], hi_x); atomicMax(&box[3], hi_y);
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    if (box[2] < 0) {
        bounds[k] = make_int4(1, 1, 0, 0);
        return;
    }
    const FrameHeader h = *reinterpret_cast<const FrameHeader*>(upload);
    // Low-res index i feeds 1024-space pixels u with floor(0.25 * (u + 0.5) - 0.5) in {i-1, i}:
    // u in [4i - 2, 4i + 5]; clip to the crop (the SAM extent).
    const int u0 = max(4 * box[0] - 2, 0), u1 = min(4 * box[2] + 5, static_cast<int>(h.sam_width) - 1);
    const int v0 = max(4 * box[1] - 2, 0), v1 = min(4 * box[3] + 5, static_cast<int>(h.sam_height) - 1);
    if (u0 > u1 || v0 > v1) {  // every positive logit lies in the padding, cropped away
        bounds[k] = make_int4(1, 1, 0, 0);
        return;
    }
    int x0, x1, y0, y1;
    frame_span(u0, u1, h.sam_width, h.width, x0, x1);
    frame_span(v0, v1, h.sam_height, h.height, y0, y1);
    bounds[k] = make_int4(x0, y0, x1, y1);
}

// One block: turns the boxes into packet mask records with 4-byte aligned data offsets, and
// the counts the packet header reports (counts[1] masks, counts[2] mask bytes, counts[3] flags).
// Masks that do not fit the data capacity get an empty crop and set flag bit 1.
// `quality` (nullable): one predicted IoU per mask, copied into the records.
extern "C" __global__ void mask_layout(const int4* __restrict__ bounds,
                                       const uint32_t* __restrict__ mask_count,
                                       const float* __restrict__ quality,
                                       uint8_t* __restrict__ packet, MaskGeometry geometry,
                                       uint32_t* __restrict__ counts) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    const uint32_t n = min(*mask_count, geometry.max_masks);
    MaskRecord* records = reinterpret_cast<MaskRecord*>(packet + geometry.mask_index_offset);
    uint32_t used = 0, flags = 0;
    for (uint32_t k = 0; k < n; ++k) {
        const int4 b = bounds[k];
        MaskRecord r = {};
        r.detection = k / geometry.masks_per_detection;
        r.quality = quality != nullptr ? quality[k] : __int_as_float(0x7fc00000);  // NaN
        if (b.x <= b.z && b.y <= b.w) {
            r.x = b.x;
            r.y = b.y;
            r.width = b.z - b.x + 1;
            r.height = b.w - b.y + 1;
        }
        const uint32_t bits = r.width * r.height;
        r.data_bytes = (bits + 7) / 8;
        const uint32_t padded = (r.data_bytes + 3) & ~3u;
        if (used + padded > geometry.mask_data_capacity) {
            flags |= 2u;
            r.width = r.height = r.data_bytes = 0;
        } else {
            r.data_offset = used;
            used += padded;
        }
        if (r.data_bytes == 0) r.data_offset = used;
        records[k] = r;
    }
    counts[1] = n;
    counts[2] = used;
    counts[3] |= flags;
}

// Grid (x: a few blocks per mask, y: masks); threads stride over their mask's words. Each word
// is 32 consecutive pixels of the crop (row-major), written little-endian, LSB first.
extern "C" __global__ void __launch_bounds__(256)
mask_encode(const float* __restrict__ low_res, const uint32_t* __restrict__ mask_count,
            const uint8_t* __restrict__ upload, float threshold, uint8_t* __restrict__ packet,
            MaskGeometry geometry) {
    const uint32_t k = blockIdx.y;
    if (k >= min(*mask_count, geometry.max_masks)) return;
    const MaskRecord r =
        reinterpret_cast<const MaskRecord*>(packet + geometry.mask_index_offset)[k];
    const uint32_t bits = r.width * r.height;
    const FrameHeader h = *reinterpret_cast<const FrameHeader*>(upload);
    const float* low = low_res + static_cast<size_t>(k) * kLowRes * kLowRes;
    uint32_t* data = reinterpret_cast<uint32_t*>(packet + geometry.mask_data_offset + r.data_offset);
    for (uint32_t word = blockIdx.x * blockDim.x + threadIdx.x; word * 32 < bits;
         word += gridDim.x * blockDim.x) {
        uint32_t out = 0;
        uint32_t x = r.x + (word * 32) % r.width, y = r.y + (word * 32) / r.width;
        for (uint32_t b = 0; b < 32 && word * 32 + b < bits; ++b) {
            if (frame_logit(low, h, x, y) > threshold) out |= 1u << b;
            if (++x == r.x + r.width) {
                x = r.x;
                ++y;
            }
        }
        data[word] = out;
    }
}

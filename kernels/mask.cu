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
// Three launches: mask_bounds (16 blocks per mask, one per row slice of the low-res logits:
// boxes of the logits above the threshold), mask_layout (one block: the boxes mapped to frame
// crops that provably hold every set pixel -> packet offsets, records, counts), mask_encode
// (blocks over bands of crop rows; a warp per 32-bit word).
//
// mask_encode is separable: the first interpolate's value at a 1024-space point (4 low-res
// taps) is read by every frame pixel within a tap of it, so each band of crop rows evaluates
// the 1024-space points its pixels read once into shared memory, then every pixel combines 4
// of them with its column and row taps (shared tables). Same expressions as evaluating each
// pixel on its own, so the same bits. At 1920x1080: ~0.5-1 first interpolations per pixel
// instead of 4, and ~30 instructions per pixel for the second.
//
// Floor (8 full-frame masks at 1920x1080): 16.6 M pixels x (4 shared loads + 6 FMAs) ~ 10 us
// of issue on an H100/H200; the 2 MB of bits written and the 2 MB of logits read are noise.
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

// The 1024-space indices (one axis) that a band's frame pixels [first, last] read, as cache
// slots: the contiguous index range when that is no longer than two taps per pixel (frames at
// least half the SAM extent), else two slots per pixel (tap 0, tap 1).
struct AxisSlots {
    int first;  // first frame pixel of the band
    int base;   // first 1024-space index (range mode)
    int count;  // slots
    bool range;
};

__device__ __forceinline__ AxisSlots axis_slots(float scale, int first, int last, int in_size) {
    const Taps a = taps(scale, first, in_size), b = taps(scale, last, in_size);
    const int range = b.i1 - a.i0 + 1, per_tap = 2 * (last - first + 1);
    return range <= per_tap ? AxisSlots{first, a.i0, range, true}
                            : AxisSlots{first, 0, per_tap, false};
}

// Cache slot of a frame pixel's tap (0 or 1) whose taps are `t`.
__device__ __forceinline__ int slot_of(const AxisSlots& s, const Taps& t, int pixel, int tap) {
    return s.range ? (tap ? t.i1 : t.i0) - s.base : 2 * (pixel - s.first) + tap;
}

// The 1024-space index held in cache slot `slot`.
__device__ __forceinline__ int index_of(const AxisSlots& s, float scale, int slot, int in_size) {
    if (s.range) return s.base + slot;
    const Taps t = taps(scale, s.first + slot / 2, in_size);
    return (slot & 1) ? t.i1 : t.i0;
}

// Upper bound on the slots of `pixels` consecutive frame pixels (the range grows by at most
// scale per pixel, plus the taps at both ends and float rounding).
__device__ __forceinline__ int slot_bound(float scale, int pixels) {
    return min(2 * pixels, static_cast<int>(scale * pixels) + 5);
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

// Row slices of the low-res logits that mask_bounds scans in parallel (one block each).
constexpr int kBoundSlices = 16;
constexpr int kSliceRows = kLowRes / kBoundSlices;

// partial[k * kBoundSlices + s] = {x0, y0, x1, y1}: the inclusive low-res box of mask k's logits
// above the threshold in row slice s, or {256, 256, -1, -1} when there are none. A frame logit
// is a convex combination of low-res logits, so it can only exceed the threshold where some
// low-res logit it depends on does (mask_layout maps the union through both interpolations).
extern "C" __global__ void __launch_bounds__(256)
mask_bounds(const float* __restrict__ low_res, const uint32_t* __restrict__ mask_count,
            float threshold, int4* __restrict__ partial) {
    const int k = blockIdx.y, slice = blockIdx.x;
    if (k >= static_cast<int>(*mask_count)) return;
    const float4* low = reinterpret_cast<const float4*>(
        low_res + (static_cast<size_t>(k) * kLowRes + slice * kSliceRows) * kLowRes);
    int lo_x = kLowRes, lo_y = kLowRes, hi_x = -1, hi_y = -1;
#pragma unroll
    for (int i = threadIdx.x; i < kSliceRows * kLowRes / 4; i += 256) {
        const float4 v = low[i];
        const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (e[j] > threshold) {
                const int p = 4 * i + j, x = p % kLowRes, y = slice * kSliceRows + p / kLowRes;
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
    if (threadIdx.x == 0) partial[k * kBoundSlices + slice] = make_int4(box[0], box[1], box[2], box[3]);
}

// The frame-pixel crop {x0, y0, x1, y1} (inclusive) that holds every pixel of mask k whose
// logit can be > threshold, or x0 > x1 when none can, from its slices' low-res boxes.
__device__ int4 mask_crop(const int4* __restrict__ partial, int k, const FrameHeader& h) {
    int4 b = make_int4(kLowRes, kLowRes, -1, -1);
    for (int s = 0; s < kBoundSlices; ++s) {
        const int4 p = partial[k * kBoundSlices + s];
        b = make_int4(min(b.x, p.x), min(b.y, p.y), max(b.z, p.z), max(b.w, p.w));
    }
    if (b.z < 0) return make_int4(1, 1, 0, 0);
    // Low-res index i feeds 1024-space pixels u with floor(0.25 * (u + 0.5) - 0.5) in {i-1, i}:
    // u in [4i - 2, 4i + 5]; clip to the crop (the SAM extent).
    const int u0 = max(4 * b.x - 2, 0), u1 = min(4 * b.z + 5, static_cast<int>(h.sam_width) - 1);
    const int v0 = max(4 * b.y - 2, 0), v1 = min(4 * b.w + 5, static_cast<int>(h.sam_height) - 1);
    if (u0 > u1 || v0 > v1) return make_int4(1, 1, 0, 0);  // all positives lie in the padding
    int x0, x1, y0, y1;
    frame_span(u0, u1, h.sam_width, h.width, x0, x1);
    frame_span(v0, v1, h.sam_height, h.height, y0, y1);
    return make_int4(x0, y0, x1, y1);
}

// One block of 256 threads: crops (in parallel, 256 masks at a time) -> packet mask records
// with 4-byte aligned data offsets (in order, one thread), and the counts the packet header
// reports (counts[1] masks, counts[2] mask bytes, counts[3] flags). Masks that do not fit the
// data capacity get an empty crop and set flag bit 1. `quality` (nullable): one predicted IoU
// per mask, copied into the records.
extern "C" __global__ void __launch_bounds__(256)
mask_layout(const int4* __restrict__ partial, const uint32_t* __restrict__ mask_count,
            const uint8_t* __restrict__ upload, const float* __restrict__ quality,
            uint8_t* __restrict__ packet, MaskGeometry geometry, uint32_t* __restrict__ counts) {
    __shared__ int4 crops[256];
    __shared__ float scores[256];
    const uint32_t n = min(*mask_count, geometry.max_masks);
    const FrameHeader h = *reinterpret_cast<const FrameHeader*>(upload);
    MaskRecord* records = reinterpret_cast<MaskRecord*>(packet + geometry.mask_index_offset);
    uint32_t used = 0, flags = 0;  // thread 0's running totals
    for (uint32_t base = 0; base < n; base += 256) {
        const uint32_t k = base + threadIdx.x;
        if (k < n) {
            crops[threadIdx.x] = mask_crop(partial, static_cast<int>(k), h);
            scores[threadIdx.x] = quality != nullptr ? quality[k] : __int_as_float(0x7fc00000);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (uint32_t i = 0; i < 256 && base + i < n; ++i) {
                const int4 b = crops[i];
                MaskRecord r = {};
                r.detection = (base + i) / geometry.masks_per_detection;
                r.quality = scores[i];
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
                records[base + i] = r;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        counts[1] = n;
        counts[2] = used;
        counts[3] |= flags;
    }
}

// Dynamic shared memory of mask_encode (70.5 KiB, three blocks per SM), in this order:
constexpr int kCacheFloats = 9216;   // upsampled (1024-space) logits the band reads
constexpr int kStageRows = 8;        // low-res rows staged for the cache fill
constexpr int kMaxColSlots = 1024;   // column slots (the SAM extent, or 2 per pixel below 512)
constexpr int kMaxBandRows = 160;    // crop rows of a band (its rows + those its last word spills into)
constexpr int kMaxFrameCols = 2048;  // crop columns with tabled taps (wider crops compute them)
constexpr int kEncodeSmemBytes = (kCacheFloats + kStageRows * kLowRes) * 4 + kMaxColSlots * 8 +
                                 kMaxBandRows * 16 + kMaxFrameCols * 8;
static_assert(kEncodeSmemBytes == 72192, "must match ENCODE_SMEM_BYTES in src/ops/mask.rs");
constexpr int kBandWordsMax = 1024;  // 32-bit words a band writes at most

// Two taps along one axis, packed: indices i0 | i1 << 16 and the weight of i1 (the weight of i0
// is 1 - w1, as `taps` computes it). For a cache column: low-res columns (first interpolate);
// for a crop column: cache column slots (second interpolate).
struct PackedTaps {
    uint32_t index;
    float w1;
};
__device__ __forceinline__ PackedTaps pack_taps(int i0, int i1, float w1) {
    return PackedTaps{static_cast<uint32_t>(i0) | (static_cast<uint32_t>(i1) << 16), w1};
}
// A band row's second-interpolate taps along y: cache line offsets and weights.
struct RowTaps {
    float w0, w1;
    int line0, line1;
};

// Grid (x: blocks striding over a mask's bands, y: masks), 256 threads. A band is R crop rows
// and owns the 32-bit words whose first bit lies in it (its last word may spill into the next
// rows). Each word is 32 consecutive pixels of the crop (row-major), little-endian, LSB first.
//
// Once per block: the first interpolate's x taps of every cache column and the second's of
// every crop column (the crop's columns are the same for every band). Per band: (1) the
// low-res rows the band reads are staged in shared memory by one coalesced pass, and the
// 1024-space logits its pixels read are computed from them into `cache` (axis_slots per
// axis), a warp per cache line (y taps uniform), a lane per column slot; (2) a warp per word,
// a lane per bit: 2 table reads, 4 cached values and 6 FMAs per pixel, one ballot and one
// store per word. Bands are short enough that every block of the mask gets one (a single mask
// must fill the GPU) and long enough to amortise the cache lines they share.
//
// Measured on an H200 (1920x1080, full-frame masks from the random-weight decoder): the first
// version (4 cached values per pixel, one pixel at a time per thread) took ~44 us for one mask
// and ~430 us for 32; with the tables and the parallel band size, 25 us for one.
extern "C" __global__ void __launch_bounds__(256, 3)
mask_encode(const float* __restrict__ low_res, const uint32_t* __restrict__ mask_count,
            const uint8_t* __restrict__ upload, float threshold, uint8_t* __restrict__ packet,
            MaskGeometry geometry) {
    extern __shared__ __align__(16) float encode_smem[];
    float* cache = encode_smem;
    float* staged = cache + kCacheFloats;
    PackedTaps* col_taps = reinterpret_cast<PackedTaps*>(staged + kStageRows * kLowRes);
    RowTaps* row_taps = reinterpret_cast<RowTaps*>(col_taps + kMaxColSlots);
    PackedTaps* x_taps = reinterpret_cast<PackedTaps*>(row_taps + kMaxBandRows);
    const uint32_t k = blockIdx.y;
    if (k >= min(*mask_count, geometry.max_masks)) return;
    const MaskRecord r =
        reinterpret_cast<const MaskRecord*>(packet + geometry.mask_index_offset)[k];
    const int width = static_cast<int>(r.width), height = static_cast<int>(r.height);
    const int bits = width * height;
    if (bits == 0) return;
    const FrameHeader h = *reinterpret_cast<const FrameHeader*>(upload);
    const int sam_w = static_cast<int>(h.sam_width), sam_h = static_cast<int>(h.sam_height);
    const float sx = static_cast<float>(h.sam_width) / h.width;
    const float sy = static_cast<float>(h.sam_height) / h.height;
    constexpr float kLowScale = static_cast<float>(kLowRes) / kSamSize;
    const float* low = low_res + static_cast<size_t>(k) * kLowRes * kLowRes;
    uint32_t* data = reinterpret_cast<uint32_t*>(packet + geometry.mask_data_offset + r.data_offset);

    // Columns: the whole crop width, the same for every band.
    const AxisSlots cols = axis_slots(sx, r.x, r.x + width - 1, sam_w);
    for (int i = threadIdx.x; i < cols.count; i += blockDim.x) {
        const Taps t = taps(kLowScale, index_of(cols, sx, i, sam_w), kLowRes);
        col_taps[i] = pack_taps(t.i0, t.i1, t.w1);
    }
    const bool tabled = width <= kMaxFrameCols;  // else each pixel computes its column taps
    for (int i = threadIdx.x; tabled && i < width; i += blockDim.x) {
        const Taps t = taps(sx, r.x + i, sam_w);
        x_taps[i] = pack_taps(slot_of(cols, t, r.x + i, 0), slot_of(cols, t, r.x + i, 1), t.w1);
    }
    // Rows per band: at most what the cache, the row table and kBandWordsMax allow, and few
    // enough that each of the mask's blocks gets a band. A band of R rows reads at most
    // R + spill rows (its last word spills past it). One row always fits: at most 1024 column
    // slots (the SAM extent, or two per pixel below 512 pixels) x 4 row slots, or for crops
    // narrower than 32 pixels 2 x width x 2 x (2 + 31 / width) slots. (The estimate below uses
    // the range branch of slot_bound, exact or conservative.)
    const int spill = 1 + 31 / width;
    const int line_budget = kCacheFloats / cols.count;  // row slots the cache holds
    int rows = min(min((kBandWordsMax - 1) * 32 / width, kMaxBandRows - spill), height);
    rows = min(rows, max(height / static_cast<int>(gridDim.x), 1));
    rows = max(min(rows, static_cast<int>((line_budget - 5) / sy) - spill), 1);
    while (rows > 1 && slot_bound(sy, rows + spill) > line_budget) --rows;  // float slack
    const int bands = (height + rows - 1) / rows;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;

    for (int band = blockIdx.x; band < bands; band += gridDim.x) {
        // Linear pixels [p_first, p_end) of the band's words; rows [row_a, row_b] hold them.
        const int word0 = (band * rows * width + 31) / 32;
        const int word_end = (min(band * rows + rows, height) * width + 31) / 32;
        const int p_first = word0 * 32, p_end = min(word_end * 32, bits);
        if (p_first >= p_end) continue;  // a narrow band whose bits all start an earlier word
        const int row_a = p_first / width, row_b = (p_end - 1) / width;
        const AxisSlots lines = axis_slots(sy, r.y + row_a, r.y + row_b, sam_h);

        __syncthreads();  // the previous band is done with the shared buffers
        for (int i = threadIdx.x; i <= row_b - row_a; i += blockDim.x) {
            const int y = r.y + row_a + i;
            const Taps ty = taps(sy, y, sam_h);
            row_taps[i] = RowTaps{ty.w0, ty.w1, slot_of(lines, ty, y, 0) * cols.count,
                                  slot_of(lines, ty, y, 1) * cols.count};
        }
        // Low-res rows the band's 1024-space rows read (slots are in increasing index order).
        const int low_a = taps(kLowScale, index_of(lines, sy, 0, sam_h), kLowRes).i0;
        const int low_b = taps(kLowScale, index_of(lines, sy, lines.count - 1, sam_h), kLowRes).i1;
        const bool stage = low_b - low_a < kStageRows;  // else (strong downscaling) read global
        if (stage) {
            const float4* src = reinterpret_cast<const float4*>(low + low_a * kLowRes);
            for (int i = threadIdx.x; i < (low_b - low_a + 1) * kLowRes / 4; i += blockDim.x)
                reinterpret_cast<float4*>(staged)[i] = src[i];
        }
        __syncthreads();
        const float* rows_src = stage ? staged : low;
        const int rows_first = stage ? low_a : 0;
        // The first interpolate as ATen evaluates it: y taps per cache line, x taps
        // from the column table. Each line is split between two warps.
        for (int task = warp; task < 2 * lines.count; task += warps) {
            const int line = task / 2;
            const Taps ty = taps(kLowScale, index_of(lines, sy, line, sam_h), kLowRes);
            const float* r0 = rows_src + (ty.i0 - rows_first) * kLowRes;
            const float* r1 = rows_src + (ty.i1 - rows_first) * kLowRes;
            float* out = cache + line * cols.count;
            for (int c = (task % 2) * 32 + lane; c < cols.count; c += 64) {
                const PackedTaps tx = col_taps[c];
                const int i0 = tx.index & 0xffff, i1 = tx.index >> 16;
                const float w1 = tx.w1, w0 = 1.f - w1;
                out[c] = ty.w0 * (w0 * r0[i0] + w1 * r0[i1]) + ty.w1 * (w0 * r1[i0] + w1 * r1[i1]);
            }
        }
        __syncthreads();

        // A warp per word, a lane per bit; the lane's crop pixel advances by 32 x warps each
        // word (one wrap at most for crops at least that wide, else divide).
        const int stride = warps * 32;
        int cy = (word0 * 32 + threadIdx.x) / width;
        int cx = word0 * 32 + threadIdx.x - cy * width;
        for (int word = word0 + warp; word < word_end; word += warps) {
            const int p = word * 32 + lane;
            bool set = false;
            if (p < p_end) {
                uint32_t index;
                float wx1;
                if (tabled) {
                    const PackedTaps xt = x_taps[cx];
                    index = xt.index;
                    wx1 = xt.w1;
                } else {
                    const Taps t = taps(sx, r.x + cx, sam_w);
                    const PackedTaps xt = pack_taps(slot_of(cols, t, r.x + cx, 0),
                                                    slot_of(cols, t, r.x + cx, 1), t.w1);
                    index = xt.index;
                    wx1 = xt.w1;
                }
                const int c0 = index & 0xffff, c1 = index >> 16;
                const float wx0 = 1.f - wx1;
                const RowTaps ry = row_taps[cy - row_a];
                const float* line0 = cache + ry.line0;
                const float* line1 = cache + ry.line1;
                const float logit = ry.w0 * (wx0 * line0[c0] + wx1 * line0[c1]) +
                                    ry.w1 * (wx0 * line1[c0] + wx1 * line1[c1]);
                set = logit > threshold;
            }
            const uint32_t word_bits = __ballot_sync(0xffffffffu, set);
            if (lane == 0) data[word] = word_bits;
            if (width >= stride) {
                cx += stride;
                if (cx >= width) {
                    cx -= width;
                    ++cy;
                }
            } else {
                cy = (p + stride) / width;
                cx = p + stride - cy * width;
            }
        }
    }
}

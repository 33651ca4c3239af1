// Mask decoding: MobileSAM's low-res mask logits (K x 256 x 256, fp32) -> binary masks at the
// frame's resolution, bit-packed and cropped, written straight into the result packet's mask
// index and mask data sections. Never materialises a full-resolution float mask.
//
// Reference op: Sam.postprocess_masks followed by `> mask_threshold` (0.0):
//   m = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)
//   m = m[..., :sam_h, :sam_w]
//   m = F.interpolate(m, (H, W), mode="bilinear", align_corners=False)
//   mask = m > 0
// Both interpolations are evaluated on the fly per output pixel with ATen's taps and weights
// (upsample_bilinear2d: src = scale * (dst + 0.5) - 0.5 clamped at 0, scale = in / out),
// multiplied out in fp32 (logits differ from ATen's by float rounding only).
//
// Three launches: mask_bounds (16 blocks per mask, one per row slice of the low-res logits:
// boxes of the logits above the threshold), mask_layout (one block: the boxes mapped to frame
// crops that provably hold every set pixel -> packet offsets, records, counts), mask_encode
// (one wave of blocks over the masks' bands of crop rows).
//
// mask_encode evaluates every pixel of a crop: both interpolations multiplied out into at most
// 3 x 3 low-res cells with separable weights, so a pixel costs 3 FMAs, a compare and a share of
// a ballot (the kernel's comment has the layout and the measurements).
//
// Floor (32 full-frame masks at 1920x1080, every pixel evaluated): 66 M pixels x ~9 lane
// instructions ~ 19 M warp instructions, ~15 us of issue on an H100/H200. The 8 MB of bits
// written and the 8 MB of logits read are ~4 us of HBM traffic.
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

// Output words of a mask_encode band, assembled in shared memory. A band holds at least two
// crop rows, so crops are at most kMaxCropWidth wide (mask_layout drops wider ones, flagged).
constexpr int kBandWordsMax = 8192;
constexpr int kMaxCropWidth = (kBandWordsMax - 2) * 16;

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
// data capacity, or whose crop is wider than kMaxCropWidth, get an empty crop and set flag bit 1. `quality` (nullable): one predicted IoU
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
                if (b.z - b.x + 1 > kMaxCropWidth) {
                    flags |= 2u;  // wider than mask_encode's word buffer: dropped, as for capacity
                } else if (b.x <= b.z && b.y <= b.w) {
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


// Dynamic shared memory of mask_encode (36,864 B), in this order:
constexpr int kMaxBandRows = 256;    // crop rows of a band (its rows + those its last word spills into)

// One crop row: the low-res row `a` it starts at and the composite weights of rows a, a+1,
// a+2 (both interpolations' y taps multiplied out: a frame row reads two 1024-space lines,
// adjacent, and each line two low-res rows, so three rows at most).
struct __align__(16) RowWeights {
    int a;
    float e0, e1, e2;
};

constexpr int kEncodeSmemBytes =
    kBandWordsMax * 4 + kMaxBandRows * static_cast<int>(sizeof(RowWeights));
static_assert(kEncodeSmemBytes == 36864, "must match ENCODE_SMEM_BYTES in src/ops/mask.rs");

// The composite weights of one axis at frame pixel `dst`: the second interpolate's taps
// (frame -> 1024-space c0, c1 = c0 or c0 + 1) times the first's (1024-space -> low-res), over
// low-res indices base, base + 1, base + 2 (clamped to the last index; an index past it has
// weight 0).
__device__ __forceinline__ void composite_taps(float scale, int dst, int sam_size, int& base,
                                               float& k0, float& k1, float& k2) {
    constexpr float kLowScale = static_cast<float>(kLowRes) / kSamSize;
    const Taps t = taps(scale, dst, sam_size);
    const Taps u = taps(kLowScale, t.i0, kLowRes), v = taps(kLowScale, t.i1, kLowRes);
    base = u.i0;
    const float a = t.w0 * u.w0, b = t.w0 * u.w1, c = t.w1 * v.w0, d = t.w1 * v.w1;
    // u.i1 and v.i0 are base or base + 1, v.i1 is base .. base + 2.
    k0 = a + (u.i1 == base ? b : 0.f) + (v.i0 == base ? c : 0.f) + (v.i1 == base ? d : 0.f);
    k1 = (u.i1 == base + 1 ? b : 0.f) + (v.i0 == base + 1 ? c : 0.f) + (v.i1 == base + 1 ? d : 0.f);
    k2 = v.i1 == base + 2 ? d : 0.f;
}

// Crop columns a lane evaluates side by side (the row record, the advance test and the loop are
// shared): 4 columns halve the per-row overhead per pixel of 2 and still fit 80 registers.
constexpr int kColumnsPerLane = 4;

// One crop column of a lane: its composite x weights over low-res columns jb .. jb + 2, the
// horizontal interpolates h of the low-res rows in play (cur .. cur + 2) and the cells of row
// cur + 3, loaded one step ahead so the window's advance does not wait on L2. The window never
// passes the last column (jb <= 253): composite_taps gives indices past it weight 0, so a window
// that would is shifted left with its weights, which keeps the three cells at offsets 0, 1, 2
// of one address per row load (the same sums bit for bit for finite cells; the first version
// clamped each index, and its 64-bit address arithmetic per cell made the window's advance
// about a third of the kernel's instructions).
struct Column {
    int jb;  // low-res column of the first cell (<= 253)
    float k0, k1, k2, h0, h1, h2, n0, n1, n2;

    __device__ __forceinline__ void init(float sx, int crop_x, int x, int width, int sam_w) {
        composite_taps(sx, crop_x + min(x, width - 1), sam_w, jb, k0, k1, k2);
        if (jb == kLowRes - 2) {  // k2 == 0
            k2 = k1;
            k1 = k0;
            k0 = 0.f;
        } else if (jb == kLowRes - 1) {  // k1 == k2 == 0
            k2 = k0;
            k1 = k0 = 0.f;
        }
        jb = min(jb, kLowRes - 3);
        h0 = h1 = h2 = n0 = n1 = n2 = 0.f;
    }
    // Cells of low-res row `row` (clamped: a row past the last has weight 0).
    __device__ __forceinline__ void load(const float* low, int row, float& c0, float& c1,
                                         float& c2) const {
        const float* l = low + (min(row, kLowRes - 1) * kLowRes + jb);
        c0 = l[0];
        c1 = l[1];
        c2 = l[2];
    }
    // The window moves from low-res row `cur` to `a` (> cur).
    __device__ __forceinline__ void advance(const float* low, int a, int cur) {
        if (a == cur + 1) {
            h0 = h1;
            h1 = h2;
            h2 = k0 * n0 + k1 * n1 + k2 * n2;
        } else {
            float c0, c1, c2;
            load(low, a, c0, c1, c2);
            h0 = k0 * c0 + k1 * c1 + k2 * c2;
            load(low, a + 1, c0, c1, c2);
            h1 = k0 * c0 + k1 * c1 + k2 * c2;
            load(low, a + 2, c0, c1, c2);
            h2 = k0 * c0 + k1 * c1 + k2 * c2;
        }
        load(low, a + 3, n0, n1, n2);
    }
    // Columns past the crop compute a copy of its last column; their bits are masked off.
    __device__ __forceinline__ bool above(const RowWeights& w, float threshold) const {
        return w.e0 * h0 + w.e1 * h1 + w.e2 * h2 > threshold;
    }
};

// Grid: sm_count x 3 blocks of 256 threads, one wave, shared out over the device's mask count
// (`per` blocks a mask); a mask's blocks stride over its bands of crop rows. A band owns the
// 32-bit words whose first bit lies in its rows (its last word may spill into the next rows);
// each word is 32 consecutive pixels of the crop (row-major), LSB first.
//
// Both interpolations are linear, so a frame pixel's logit is sum_r e_r(y) sum_j k_j(x) L[r][j]
// over at most 3 x 3 low-res cells, with composite weights e (per crop row, tabled per band)
// and k (per crop column). A warp owns a 128-column strip of the band and walks its rows: each
// lane keeps, for its four columns, k and the horizontal interpolates H[r] = sum_j k_j L[r][j]
// of the 3 low-res rows in play (a new row enters every 4 / scale_y crop rows, read from L2),
// so a pixel is 3 FMAs, a compare, a ballot and a select. The 32 bits of a strip row go into the
// band's words in shared memory (two atomicOr when the row does not start on a word boundary),
// then the band's words are written out coalesced.
//
// Numerics: the same weights as ATen's two interpolations (align_corners=False), multiplied out
// in fp32: the logit differs from ATen's by float rounding (~1e-7 of the cells' magnitude), so
// only pixels that close to the threshold can differ (the tests bound them).
//
// Cost: per warp row of a strip (128 pixels) ~36 instructions (4 x (3 FMA, compare, ballot,
// select) + the row record and the loop), plus the window's advance every ~7.5 crop rows at
// 1920x1080; no shared-memory traffic per pixel beyond one broadcast row record per warp row.
// 32 full-frame noisy masks (66 M pixels, every word mixed) ~19 M warp instructions, ~15 us of
// the GPU's issue at IPC 4.
// Measured (H100, 2026-11-27, a standalone harness over this kernel alone, outputs bitwise equal
// across versions): 32 full-frame noisy masks 73.9 us with two columns per lane and per-cell
// clamped addresses (ncu: 49.8 M instructions, issue 63 % busy), 62.7 us with the fixed-offset
// window, 52.4 us with it and four columns per lane; 8 masks 30.6 -> 24.2 us. Smooth blob masks
// (crops ~9 % of the frame): 15.5 -> 15.8 us at 32 masks (two columns per lane with the
// fixed-offset window: 13.7; narrow crops waste part of a 128-column strip). The version before
// (a cache of 1024-space values per band, ATen's expression per pixel from 4 of them) issued ~75
// instructions per pixel: 312 us for 32 full-frame masks (H200, ncu).
extern "C" __global__ void __launch_bounds__(256, 3)
mask_encode(const float* __restrict__ low_res, const uint32_t* __restrict__ mask_count,
            const uint8_t* __restrict__ upload, float threshold, uint8_t* __restrict__ packet,
            MaskGeometry geometry) {
    extern __shared__ __align__(16) uint32_t encode_smem[];
    uint32_t* band_words = encode_smem;
    RowWeights* row_weights = reinterpret_cast<RowWeights*>(band_words + kBandWordsMax);
    const int n = static_cast<int>(min(*mask_count, geometry.max_masks));
    if (n == 0) return;
    const int per = max(static_cast<int>(gridDim.x) / n, 1);  // blocks per mask
    const FrameHeader h = *reinterpret_cast<const FrameHeader*>(upload);
    const int sam_w = static_cast<int>(h.sam_width), sam_h = static_cast<int>(h.sam_height);
    const float sx = static_cast<float>(h.sam_width) / h.width;
    const float sy = static_cast<float>(h.sam_height) / h.height;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;

    for (int k = static_cast<int>(blockIdx.x) / per; k < n;
         k += max(static_cast<int>(gridDim.x) / per, 1)) {
        const MaskRecord r =
            reinterpret_cast<const MaskRecord*>(packet + geometry.mask_index_offset)[k];
        const int width = static_cast<int>(r.width), height = static_cast<int>(r.height);
        const int bits = width * height;
        if (bits == 0) continue;  // mask_layout keeps width <= kMaxCropWidth
        const float* low = low_res + static_cast<size_t>(k) * kLowRes * kLowRes;
        uint32_t* data =
            reinterpret_cast<uint32_t*>(packet + geometry.mask_data_offset + r.data_offset);
        // Rows per band: one band per block of the mask where possible, within the row table
        // and the word buffer (a band's words span at most rows + spill rows, plus one).
        const int spill = 1 + 31 / width;
        int rows = min(min(kMaxBandRows - spill, height), max(height / per, 1));
        rows = max(min(rows, (kBandWordsMax - 2) * 32 / width - spill), 1);
        const int bands = (height + rows - 1) / rows;
        const int strips = (width + 32 * kColumnsPerLane - 1) / (32 * kColumnsPerLane);

        for (int band = static_cast<int>(blockIdx.x) % per; band < bands; band += per) {
            // Linear pixels [p_first, p_end) of the band's words; rows [row_a, row_b] hold them.
            const int word0 = (band * rows * width + 31) / 32;
            const int word_end = (min(band * rows + rows, height) * width + 31) / 32;
            const int p_first = word0 * 32, p_end = min(word_end * 32, bits);
            if (p_first >= p_end) continue;  // a narrow band whose bits all start an earlier word
            const int row_a = p_first / width, row_b = (p_end - 1) / width;
            const int band_rows = row_b - row_a + 1;

            __syncthreads();  // the previous band's words are written out
            for (int i = threadIdx.x; i < word_end - word0; i += blockDim.x) band_words[i] = 0u;
            for (int i = threadIdx.x; i < band_rows; i += blockDim.x) {
                int a;
                float e0, e1, e2;
                composite_taps(sy, r.y + row_a + i, sam_h, a, e0, e1, e2);
                row_weights[i] = RowWeights{a, e0, e1, e2};
            }
            __syncthreads();

            // Work items: strips of 128 columns (four per lane: x, x + 32, ...) x row segments
            // (segments only when strips < warps).
            const int segments = max(warps / strips, 1);
            const int seg_rows = (band_rows + segments - 1) / segments;
            for (int item = warp; item < strips * segments; item += warps) {
                const int strip = item % strips, seg = item / strips;
                Column col[kColumnsPerLane];
#pragma unroll
                for (int c = 0; c < kColumnsPerLane; ++c)
                    col[c].init(sx, r.x, strip * 32 * kColumnsPerLane + c * 32 + lane, width, sam_w);
                const int y_first = seg * seg_rows, y_end = min(y_first + seg_rows, band_rows);
                int cur = -4;  // low-res row of h0 (warp-uniform)
                // Each lane keeps the bits of one strip row of every 32 (row y0 + lane) and puts
                // them into the band's words after the 32.
                for (int y0 = y_first; y0 < y_end; y0 += 32) {
                    const int group = min(32, y_end - y0);
                    uint32_t mine[kColumnsPerLane] = {};
                    for (int i = 0; i < group; ++i) {
                        const RowWeights w = row_weights[y0 + i];
                        if (w.a != cur) {  // warp-uniform
#pragma unroll
                            for (int c = 0; c < kColumnsPerLane; ++c) col[c].advance(low, w.a, cur);
                            cur = w.a;
                        }
#pragma unroll
                        for (int c = 0; c < kColumnsPerLane; ++c) {
                            const uint32_t row_bits =
                                __ballot_sync(0xffffffffu, col[c].above(w, threshold));
                            if (lane == i) mine[c] = row_bits;
                        }
                    }
                    if (lane < group) {
#pragma unroll
                        for (int c = 0; c < kColumnsPerLane; ++c) {
                            // Only the bits of columns inside the crop.
                            const int x0 = (strip * kColumnsPerLane + c) * 32;
                            const int inside = min(max(width - x0, 0), 32);
                            if (inside < 32) mine[c] &= (1u << inside) - 1u;
                            if (mine[c] == 0u) continue;
                            // Linear index of the strip row's first pixel; its words in the band.
                            const int o = (row_a + y0 + lane) * width + x0;
                            const int wi = o / 32 - word0, shift = o % 32;
                            if (wi >= 0 && wi < word_end - word0)
                                atomicOr(&band_words[wi], mine[c] << shift);
                            if (shift != 0 && wi + 1 >= 0 && wi + 1 < word_end - word0)
                                atomicOr(&band_words[wi + 1], mine[c] >> (32 - shift));
                        }
                    }
                }
            }
            __syncthreads();
            // Bits past the crop's last pixel stay 0: they are masked off before the atomicOr.
            for (int i = threadIdx.x; i < word_end - word0; i += blockDim.x)
                data[word0 + i] = band_words[i];
        }
    }
}

// MobileSAM prompt encoder and mask decoder glue (the GEMMs, LayerNorms and attentions of the
// two-way transformer use gemm.cu, norm.cu and attention.cu):
//
// - sam_prompt_encode: PromptEncoder._embed_points / _embed_boxes (random-Fourier positional
//   encoding of prompt points scaled into the 1024 frame as ResizeLongestSide.apply_coords_torch
//   does, plus the label embeddings) and the token assembly of MaskDecoder.predict_masks:
//   tokens[b] = [iou_token, mask_tokens[0..4], sparse prompt embeddings].
// - sam_upscale_masks: the end of output_upscaling (LayerNorm2d(64, eps 1e-6) + GELU, the second
//   ConvTranspose2d + GELU) fused with masks = hyper_in @ upscaled (MaskDecoder.predict_masks),
//   the multimask slice and iou_pred[:, slice]; logits written fp32 [B, C, 256, 256] in image
//   order. Reads the first ConvTranspose2d's GEMM output; nothing else is stored.
//
// - sam_mask_embed: PromptEncoder._embed_masks (mask_downscaling: Conv2d(1,4,k2,s2) ->
//   LayerNorm2d(4) -> GELU -> Conv2d(4,16,k2,s2) -> LayerNorm2d(16) -> GELU -> Conv2d(16,256,k1))
//   fused with `src = image_embedding + dense_prompt_embeddings` of MaskDecoder.predict_masks:
//   [K, 256, 256] f32 low-res mask inputs -> [K, 64, 64, 256] fp16 NHWC (the decoder's keys).
//
// Upscaled layout: ConvTranspose2d(k2, s2) twice, each a GEMM whose output columns are ordered
// (dy, dx, channel); row r1 = (b*4096 + y*64 + x)*4 + dy*2 + dx of the second one's input (64
// channels), its columns (dy2*2 + dx2)*32 + c, is pixel (4y + 2dy + dy2, 4x + 2dx + dx2) of the
// 256x256 map. No scatter kernel runs: sam_upscale_masks writes each logit where it belongs.
#include "common.cuh"
#include "dense.cuh"
#include "mma.cuh"

using namespace finesam;

namespace {

constexpr int kDim = 256;          // transformer_dim
constexpr int kFreqs = 128;        // PositionEmbeddingRandom(embed_dim // 2)
constexpr int kOutputTokens = 5;   // iou token + 4 mask tokens
constexpr int kLowRes = 256;       // low-res mask side
constexpr int kUpChannels = 32;    // transformer_dim // 8
constexpr int kMaxMasks = 4;

// Mirrors `PromptParams` in src/ops/sam_decoder.rs.
struct PromptParams {
    const uint32_t* count;       // prompts in use; [count] prompts follow
    const float* prompts;        // [batch, points, 3]: x, y in frame pixels, label code
    const FrameHeader* header;   // frame size and MobileSAM extent
    const float* gauss;          // [2, 128] positional_encoding_gaussian_matrix
    const float* label_embed;    // [5, 256]: point_embeddings[0..4], then not_a_point_embed
    const float* output_tokens;  // [5, 256]: iou_token, mask_tokens
    __half* tokens;              // [batch, 5 + points, 256]
    int points;
};

}  // namespace

// Label codes: -1 padding (not a point), 0 negative, 1 positive, 2 box top-left, 3 box
// bottom-right (the index of point_embeddings). Anything else, non-finite coordinates and
// prompts past `count` become padding, so a garbage prompt can never produce NaN.
extern "C" __global__ void __launch_bounds__(kFreqs) sam_prompt_encode(PromptParams p) {
    const int t = blockIdx.x;
    const int b = blockIdx.y;
    const int c = threadIdx.x;
    const int tokens = kOutputTokens + p.points;
    __half* out = p.tokens + (static_cast<size_t>(b) * tokens + t) * kDim;
    if (t < kOutputTokens) {
        out[c] = __float2half_rn(p.output_tokens[t * kDim + c]);
        out[c + kFreqs] = __float2half_rn(p.output_tokens[t * kDim + c + kFreqs]);
        return;
    }
    const float* point = p.prompts + (static_cast<size_t>(b) * p.points + (t - kOutputTokens)) * 3;
    const float x = point[0], y = point[1], code = point[2];
    const bool valid = b < static_cast<int>(*p.count) && isfinite(x) && isfinite(y) &&
                       (code == 0.f || code == 1.f || code == 2.f || code == 3.f);
    if (!valid) {
        out[c] = __float2half_rn(p.label_embed[4 * kDim + c]);
        out[c + kFreqs] = __float2half_rn(p.label_embed[4 * kDim + c + kFreqs]);
        return;
    }
    const FrameHeader h = *p.header;
    // apply_coords_torch: coords * (new / old) with the ratio formed in double, the product in
    // float; then +0.5 (pixel centre) and / 1024 (input_image_size). Explicit roundings keep
    // nvcc from contracting these into FMAs that PyTorch does not do.
    const float sx = h.width ? static_cast<float>(static_cast<double>(h.sam_width) / h.width) : 1.f;
    const float sy = h.height ? static_cast<float>(static_cast<double>(h.sam_height) / h.height) : 1.f;
    float u = __fadd_rn(__fmul_rn(x, sx), 0.5f) * (1.f / 1024.f);
    float v = __fadd_rn(__fmul_rn(y, sy), 0.5f) * (1.f / 1024.f);
    u = 2.f * u - 1.f;
    v = 2.f * v - 1.f;
    // _pe_encoding: sin/cos(2 pi (coords @ G)). --use_fast_math would turn sinf into __sinf,
    // which is inaccurate at these arguments (|2 pi t| up to ~30); reduce to [-1/2, 1/2] turns
    // exactly and use sincospif instead.
    const float turns = __fadd_rn(__fmul_rn(u, p.gauss[c]), __fmul_rn(v, p.gauss[kFreqs + c]));
    const float r = turns - rintf(turns);
    float s, co;
    sincospif(2.f * r, &s, &co);
    const int label = static_cast<int>(code);
    out[c] = __float2half_rn(s + p.label_embed[label * kDim + c]);
    out[c + kFreqs] = __float2half_rn(co + p.label_embed[label * kDim + c + kFreqs]);
}

namespace {
constexpr int kUp1 = 64;                        // channels after the first ConvTranspose2d
constexpr int kUp2Cols = 4 * kUpChannels;       // second ConvTranspose2d as GEMM: (dy2, dx2, c)
constexpr int kUpRows = 16 * 4096 / 4;          // rows of 64 channels per prompt (128 x 128)
constexpr int kChunkRows = 128;                 // 8 warps x 16 rows
constexpr int kChunks = 2;
constexpr int kBlockRows = kChunkRows * kChunks;
constexpr int kUpLd = kUp1 + 8;                 // 72 halves = 36 words: fragment loads conflict-free

// Mirrors `ConvT1Params` in src/ops/sam_decoder.rs.
struct ConvT1Params {
    const __half* x;         // [rows, 256] the final keys
    const __half* w;         // [256, 256] first ConvTranspose2d as GEMM rows (dy, dx, channel)
    const float* bias;       // [256] (the 64 channel biases repeated per sub-pixel)
    const float* ln_gamma;   // [64] LayerNorm2d
    const float* ln_beta;    // [64]
    __half* y;               // [rows, 256] GELU(LayerNorm2d(x W^T + b)) per 64-column group
    int rows;                // a multiple of 64
    float eps;
};

constexpr int kCt1Ld = kDim + 8;                  // 264 halves: ldmatrix rows conflict-free
constexpr int kCt1Rows = 64;                      // rows per tile
constexpr int kCt1Smem = (kDim + 2 * kCt1Rows) * kCt1Ld * 2 + (kDim + 2 * kUp1) * 4;  // 204,288: W + 2 groups' tiles

}  // namespace

// The first ConvTranspose2d of output_upscaling (a GEMM: keys [rows, 256] x W^T, columns
// (dy, dx, channel)) with its bias, the LayerNorm2d(64, eps 1e-6) of every sub-pixel and the
// GELU, fused: y = GELU(LN2d(x W^T + b)) in fp16, what `sam_upscale_masks` would otherwise
// compute from the stored pre-norm output (with `normalized` set it only copies it).
// Persistent CTAs of two independent groups of 8 warps over 64-row tiles; the whole weight
// (128 KB) stays in shared memory (loaded once per CTA), each group streams its tiles through
// its own x buffer with group-local barriers, so one group's load overlaps the other's math.
// Warp w of a group owns rows 32 (w % 2).. of the tile (two m16 tiles) and columns 64 (w / 2)..
// = sub-pixel w / 2's 64 channels (8 n8 tiles), so the LayerNorm of a row's 64 channels is
// in-lane sums plus two quad shuffles on the fp32 accumulators (no fp16 rounding before the
// norm, unlike the unfused path).
// Floor (H200, 32 prompts, 131072 rows): 17.2 GFLOP (~29 us at ~600 TFLOP/s mma.sync), 64 MB
// read + 64 MB written (~28 us at ~4.5 TB/s); shared-memory reads per tile 8 warps x 16 k-steps x
// 6 ldmatrix.x4 x 512 B = 393 KB, ~3.1k cycles at 128 B/clk: ~1.6 us per tile, 15.5 tiles per
// SM: ~25 us. Measured (H200 ncu, 32 prompts, 2026-11-27): 98.5 us with one group of 8 warps
// and a double-buffered x (as slow as the GEMM it replaced: 8 warps per SM, latency-bound);
// the epilogue (64 GELUs per lane and tile) is ~2/3 of the instructions.
constexpr int kCt1Groups = 2;
constexpr int kCt1GroupThreads = 256;

extern "C" __global__ void __launch_bounds__(kCt1Groups * kCt1GroupThreads, 1)
    sam_convt1_ln_gelu(ConvT1Params p) {
    extern __shared__ __align__(16) unsigned char ct1_smem[];
    __half* w_s = reinterpret_cast<__half*>(ct1_smem);
    float* bias_s = reinterpret_cast<float*>(w_s + (kDim + kCt1Groups * kCt1Rows) * kCt1Ld);
    float* gamma_s = bias_s + kDim;
    float* beta_s = gamma_s + kUp1;
    const int group = threadIdx.x / kCt1GroupThreads;
    const int tid = threadIdx.x % kCt1GroupThreads, lane = tid & 31, warp = tid >> 5;
    __half* x_s = w_s + (kDim + group * kCt1Rows) * kCt1Ld;  // this group's tile
    const int g = lane >> 2, q2 = (lane & 3) * 2;
    const int wm = warp & 1, wn = warp >> 1;
    const int tiles = p.rows / kCt1Rows;
    const int stride = gridDim.x * kCt1Groups;
    const int first = blockIdx.x * kCt1Groups + group;

    auto load_tile = [&](int tile) {
        const __half* src = p.x + static_cast<size_t>(tile) * kCt1Rows * kDim;
        for (int i = tid; i < kCt1Rows * (kDim / 8); i += kCt1GroupThreads) {
            const int r = i / (kDim / 8), c = (i % (kDim / 8)) * 8;
            cp_async16(smem_addr(x_s + r * kCt1Ld + c), src + r * kDim + c, 16);
        }
    };
    // The weight (256 rows x 32 chunks of 16 B, shared by both groups) and each group's first
    // tile, then one CTA barrier; afterwards the groups run on their own (barrier 1 + group).
    for (int i = threadIdx.x; i < kDim * (kDim / 8); i += blockDim.x) {
        const int r = i / (kDim / 8), c = (i % (kDim / 8)) * 8;
        cp_async16(smem_addr(w_s + r * kCt1Ld + c), p.w + r * kDim + c, 16);
    }
    if (first < tiles) load_tile(first);
    cp_async_commit();
    if (threadIdx.x < kDim) bias_s[threadIdx.x] = p.bias[threadIdx.x];
    if (threadIdx.x < kUp1) {
        gamma_s[threadIdx.x] = p.ln_gamma[threadIdx.x];
        beta_s[threadIdx.x] = p.ln_beta[threadIdx.x];
    }
    cp_async_wait<0>();
    __syncthreads();

    const uint32_t a_addr = smem_addr(x_s + (wm * 32 + (lane & 15)) * kCt1Ld + (lane >> 4) * 8);
    const uint32_t b_addr =
        smem_addr(w_s + (wn * 64 + (lane >> 4) * 8 + (lane & 7)) * kCt1Ld + ((lane >> 3) & 1) * 8);
    for (int tile = first; tile < tiles; tile += stride) {
        // The accumulators start at the bias (this lane's channels j * 8 + q2, + 1).
        float acc[2][8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float2 bj = *reinterpret_cast<const float2*>(&bias_s[wn * 64 + j * 8 + q2]);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                acc[mt][j][0] = acc[mt][j][2] = bj.x;
                acc[mt][j][1] = acc[mt][j][3] = bj.y;
            }
        }
#pragma unroll 4
        for (int kk = 0; kk < kDim; kk += 16) {
            uint32_t a[2][4];
            ldmatrix_x4(a[0], a_addr + kk * 2);
            ldmatrix_x4(a[1], a_addr + (16 * kCt1Ld + kk) * 2);
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) {
                uint32_t bf[4];
                ldmatrix_x4(bf, b_addr + (jj * 16 * kCt1Ld + kk) * 2);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    mma16816(acc[mt][2 * jj], a[mt], bf[0], bf[1]);
                    mma16816(acc[mt][2 * jj + 1], a[mt], bf[2], bf[3]);
                }
            }
        }
        // Every warp of the group has its fragments: refill the buffer with the group's next
        // tile while the epilogue runs.
        named_barrier_sync(1 + group, kCt1GroupThreads);
        if (tile + stride < tiles) load_tile(tile + stride);
        cp_async_commit();

        // LayerNorm2d over the sub-pixel's 64 channels (this lane: 16 of a row's values, the
        // quad the rest), GELU, fp16 store. Half h: row g (h 0) or g + 8 (h 1).
        const size_t row0 = static_cast<size_t>(tile) * kCt1Rows + wm * 32;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float v[16];
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        v[2 * j + e] = acc[mt][j][2 * h + e];
                        sum += v[2 * j + e];
                    }
                }
                sum += __shfl_xor_sync(0xffffffffu, sum, 1);
                sum += __shfl_xor_sync(0xffffffffu, sum, 2);
                const float mean = sum * (1.f / kUp1);
                float var = 0.f;
#pragma unroll
                for (int i = 0; i < 16; ++i) {
                    v[i] -= mean;
                    var += v[i] * v[i];
                }
                var += __shfl_xor_sync(0xffffffffu, var, 1);
                var += __shfl_xor_sync(0xffffffffu, var, 2);
                const float inv = rsqrtf(var * (1.f / kUp1) + p.eps);
                __half* out = p.y + (row0 + mt * 16 + h * 8 + g) * kDim + wn * 64 + q2;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const float2 gm = *reinterpret_cast<const float2*>(&gamma_s[j * 8 + q2]);
                    const float2 bt = *reinterpret_cast<const float2*>(&beta_s[j * 8 + q2]);
                    const float y0 = gelu(fmaf(v[2 * j] * inv, gm.x, bt.x));
                    const float y1 = gelu(fmaf(v[2 * j + 1] * inv, gm.y, bt.y));
                    *reinterpret_cast<uint32_t*>(out + j * 8) = pack_half2(y0, y1);
                }
            }
        }
        cp_async_wait<0>();
        named_barrier_sync(1 + group, kCt1GroupThreads);  // the next tile has landed
    }
}

namespace {
static_assert(kCt1Smem == 204288, "mirrored in src/ops/sam_decoder.rs");
static_assert(kChunks * kChunkRows * kUpLd * 2 == 36864, "UPSCALE_SMEM_BYTES in src/ops/sam_decoder.rs");

// Mirrors `UpscaleMaskParams` in src/ops/sam_decoder.rs.
struct UpscaleMaskParams {
    const __half* up1;       // [batch * 4096, 256] (row stride up1_ld): first ConvTranspose2d + bias,
                             // before LayerNorm2d, columns (dy, dx, channel)
    const float* ln_gamma;   // [64] LayerNorm2d
    const float* ln_beta;    // [64]
    const __half* w2;        // [128, 64] second ConvTranspose2d, rows (dy2, dx2, c)
    const float* b2;         // [128]
    const __half* heads;     // [5][stride][32]: IoU head (first 4 columns), hyper_in of mask token 0..3
    const uint32_t* count;   // prompts in use
    float* low_res;          // [batch, masks, 256, 256]
    float* iou;              // [batch, masks]
    uint32_t* mask_count;    // receives min(count, batch) * masks (mask decoding reads it)
    float eps;
    int batch, stride, first, masks;
    int up1_ld;              // halves between the up1 rows of consecutive embedding pixels (>= 256)
    int normalized;          // up1 holds GELU(LayerNorm2d(.)) (sam_convt1_ln_gelu): copy it
};

}  // namespace

// The end of output_upscaling and the mask product in one pass, per block 256 rows of the
// first ConvTranspose2d output of one prompt (two chunks of 128):
//   a = GELU(LayerNorm2d(up1 row))               fp32, stored fp16 in shared memory (MMA operand)
//   u = GELU(a @ w2^T + b2)                       mma.sync, fp32 accumulators, never stored
//   low_res[m, pixel] = sum_c hyper[m, c] u[pixel, c]   fp32 (quad shuffles over the channels)
// so neither the LayerNorm output nor the [K, 32, 256, 256] map touches global memory.
// Warp w owns rows 16w..16w+15 of a chunk and all 128 columns (16 n-tiles of 8): n-tiles 4s..4s+3
// are sub-pixel s = dy2 * 2 + dx2, their columns the 32 channels.
// Three CTAs per SM (80 registers: 12 bytes spilled) measured 7 us faster at 32 prompts than two
// (98 registers, no spill) on the H200 (ncu: 88 -> 81 us): the kernel is issue- and latency-bound
// (GELU is half its instructions), so the extra warps matter more than the spill.
// With `normalized` (folded plans) both chunks' rows are copied by cp.async up front.
extern "C" __global__ void __launch_bounds__(256, 3) sam_upscale_masks(UpscaleMaskParams p) {
    // Both chunks' LayerNorm2d + GELU outputs (dynamic: 36,864 B; static memory stays < 48 KB).
    extern __shared__ __align__(16) unsigned char up_smem[];
    auto a_s = reinterpret_cast<__half (*)[kChunkRows][kUpLd]>(up_smem);
    __shared__ __align__(16) __half w_s[kUp2Cols][kUpLd];
    __shared__ __align__(16) float bias_s[kUp2Cols];
    __shared__ __align__(16) float gamma_s[kUp1];
    __shared__ __align__(16) float beta_s[kUp1];
    __shared__ __align__(16) float hyper[kMaxMasks][kUpChannels];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, q = lane & 3;
    const int b = blockIdx.y;
    for (int i = tid; i < kUp2Cols * kUp1 / 8; i += blockDim.x)
        *reinterpret_cast<uint4*>(&w_s[i / 8][(i % 8) * 8]) = reinterpret_cast<const uint4*>(p.w2)[i];
    if (tid < kUp2Cols) bias_s[tid] = p.b2[tid];
    if (tid < kUp1) {
        gamma_s[tid] = p.ln_gamma[tid];
        beta_s[tid] = p.ln_beta[tid];
    }
    if (tid < p.masks * kUpChannels) {
        const int m = tid / kUpChannels, j = tid % kUpChannels;
        hyper[m][j] = __half2float(p.heads[((1 + p.first + m) * static_cast<size_t>(p.stride) + b) * kUpChannels + j]);
    }
    if (blockIdx.x == 0 && tid < p.masks)
        p.iou[b * p.masks + tid] = __half2float(p.heads[static_cast<size_t>(b) * kUpChannels + p.first + tid]);
    if (blockIdx.x == 0 && b == 0 && tid == 0)
        p.mask_count[0] = min(*p.count, static_cast<uint32_t>(p.batch)) * p.masks;

    // Row R of this prompt is sub-pixel R % 4 of embedding pixel R / 4: its 64 channels.
    const int l8 = tid % 8;
    auto up1_row = [&](int row) {
        return p.up1 + (static_cast<size_t>(b) * (kUpRows / 4) + (row >> 2)) * p.up1_ld + (row & 3) * kUp1 + l8 * 8;
    };
    // sam_convt1_ln_gelu stored GELU(LayerNorm2d(.)) already: both chunks' rows go straight to
    // shared memory (one cp.async group per chunk), so chunk 1 loads under chunk 0's math.
    if (p.normalized) {
        for (int chunk = 0; chunk < kChunks; ++chunk) {
#pragma unroll
            for (int pass = 0; pass < kChunkRows / 32; ++pass) {
                const int r = pass * 32 + tid / 8;
                cp_async16(smem_addr(&a_s[chunk][r][l8 * 8]), up1_row(blockIdx.x * kBlockRows + chunk * kChunkRows + r), 16);
            }
            cp_async_commit();
        }
    }

    for (int chunk = 0; chunk < kChunks; ++chunk) {
        const int row0 = blockIdx.x * kBlockRows + chunk * kChunkRows;
        if (p.normalized) {
            if (chunk == 0)
                cp_async_wait<1>();
            else
                cp_async_wait<0>();
        }
        __syncthreads();  // this chunk's rows (normalized) or the parameters (chunk 0) are stored
        // LayerNorm2d + GELU: 8 lanes per row (one 16-byte vector each), 32 rows per pass;
        // variance from centred values as in norm.cu.
#pragma unroll
        for (int pass = 0; pass < kChunkRows / 32; ++pass) {
            if (p.normalized) break;
            const int r = pass * 32 + tid / 8;
            const uint4 raw = *reinterpret_cast<const uint4*>(up1_row(row0 + r));
            float v[8];
            unpack8(raw, v);
            float sum = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) sum += v[e];
#pragma unroll
            for (int o = 4; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            const float mean = sum * (1.f / kUp1);
            float var = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                v[e] -= mean;
                var += v[e] * v[e];
            }
#pragma unroll
            for (int o = 4; o > 0; o >>= 1) var += __shfl_xor_sync(0xffffffffu, var, o);
            const float inv = rsqrtf(var * (1.f / kUp1) + p.eps);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int ch = l8 * 8 + e;
                v[e] = activate(v[e] * inv * gamma_s[ch] + beta_s[ch], kActGelu);
            }
            *reinterpret_cast<uint4*>(&a_s[chunk][r][l8 * 8]) = pack8(v);
        }
        __syncthreads();

        const int wr = warp * 16;
        float acc[16][4];
#pragma unroll
        for (int j = 0; j < 16; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
        // Fragments by ldmatrix.x4 (rows 144 B apart: the 8 rows of a matrix hit distinct bank
        // quads). A: lanes 0-15 rows 0-15 at k, lanes 16-31 the same rows at k + 8. B: lanes
        // 8m..8m+7 the rows (n) of n-tile 2jj + m / 2 at k + 8 (m % 2): two n-tiles a load.
        const uint32_t a_addr = smem_addr(&a_s[chunk][wr + (lane & 15)][(lane >> 4) * 8]);
        const uint32_t b_addr = smem_addr(&w_s[(lane >> 4) * 8 + (lane & 7)][((lane >> 3) & 1) * 8]);
#pragma unroll
        for (int kk = 0; kk < kUp1; kk += 16) {
            uint32_t a[4];
            ldmatrix_x4(a, a_addr + kk * 2);
#pragma unroll
            for (int jj = 0; jj < 8; ++jj) {
                uint32_t bf[4];
                ldmatrix_x4(bf, b_addr + (jj * 16 * kUpLd + kk) * 2);
                mma16816(acc[2 * jj], a, bf[0], bf[1]);
                mma16816(acc[2 * jj + 1], a, bf[2], bf[3]);
            }
        }

        // Rows wr+g (accumulators 0, 1) and wr+g+8 (2, 3); this lane holds channels
        // jj*8 + 2q + {0, 1} of each sub-pixel. Row r = (y*64 + x)*4 + dy*2 + dx.
        const int r_lo = row0 + wr + g, r_hi = r_lo + 8;
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            float u[2][8];
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) {
                const float2 bias = *reinterpret_cast<const float2*>(&bias_s[(4 * s + jj) * 8 + 2 * q]);
                u[0][jj * 2] = gelu(acc[4 * s + jj][0] + bias.x);
                u[0][jj * 2 + 1] = gelu(acc[4 * s + jj][1] + bias.y);
                u[1][jj * 2] = gelu(acc[4 * s + jj][2] + bias.x);
                u[1][jj * 2 + 1] = gelu(acc[4 * s + jj][3] + bias.y);
            }
#pragma unroll
            for (int m = 0; m < kMaxMasks; ++m) {
                if (m >= p.masks) break;
                float lo = 0.f, hi = 0.f;
#pragma unroll
                for (int jj = 0; jj < 4; ++jj) {
                    const float2 h = *reinterpret_cast<const float2*>(&hyper[m][jj * 8 + 2 * q]);
                    lo = fmaf(h.x, u[0][jj * 2], lo);
                    hi = fmaf(h.x, u[1][jj * 2], hi);
                    lo = fmaf(h.y, u[0][jj * 2 + 1], lo);
                    hi = fmaf(h.y, u[1][jj * 2 + 1], hi);
                }
#pragma unroll
                for (int o = 1; o < 4; o <<= 1) {
                    lo += __shfl_xor_sync(0xffffffffu, lo, o);
                    hi += __shfl_xor_sync(0xffffffffu, hi, o);
                }
                if (q == s) {
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const int r = half ? r_hi : r_lo;
                        const int px = r >> 2, y = px >> 6, x = px & 63;
                        const int Y = 4 * y + 2 * ((r >> 1) & 1) + (s >> 1);
                        const int X = 4 * x + 2 * (r & 1) + (s & 1);
                        p.low_res[((static_cast<size_t>(b) * p.masks + m) * kLowRes + Y) * kLowRes + X] =
                            half ? hi : lo;
                    }
                }
            }
        }
    }
}

namespace {
constexpr int kCross = 128;        // cross attention width (downsample_rate 2)
constexpr int kCrossHeads = 8;     // head dim 16: one MMA k-step per head
constexpr int kMaxTokens = 69;     // 5 output tokens + up to 64 prompt points
constexpr int kI2tRows = 64;       // pixels per block: 4 row groups of 16 x 2 column halves

// Mirrors `ImageToTokenParams` in src/ops/sam_decoder.rs.
struct ImageToTokenParams {
    const __half* q;         // image->token q: 4096 rows of 128 (row stride q_stride)
    const __half* kv;        // [batch][tokens] rows of 256 (kv_stride apart): k (128) then v (128), head h at 16 h
    const __half* w;         // out_proj [256, 128]
    const float* bias;       // [256]
    const __half* residual;  // [4096, 256] per prompt (batch stride res_batch; may be y)
    const float* gamma;      // [256] LayerNorm (norm4)
    const float* beta;       // [256]
    __half* y;               // [batch][4096][256]
    long long q_stride, q_batch, res_batch, kv_stride;
    int batch, tokens;
    float scale, eps;
};

constexpr int kI2tTiles = 4096 / kI2tRows;  // 64-pixel tiles per prompt
constexpr int kWLd = kCross + 8;            // out_proj row in shared memory, halves (conflict-free B loads)
constexpr int kWBytes = kDim * kWLd * 2;    // 69,632
constexpr int kParamBytes = 3 * kDim * 4;   // out_proj bias, norm weight, norm bias
constexpr int kKLd = kCross + 8;            // token k row in shared memory, halves (as kWLd)
constexpr int kHeadsAtOnce = 2;             // heads per step (4 spill beside out_proj's accumulators)

// Halves between the rows (one per dim) of the transposed token v: the tokens padded to 8, then
// to an odd multiple of 8, so the 8 rows x 4 words of a B-fragment load hit 32 distinct banks.
// Mirrors `image_to_token_smem_bytes` in src/ops/sam_decoder.rs.
__host__ __device__ constexpr int i2t_vt_ld(int tokens) { return ((tokens + 7) / 8 | 1) * 8; }
constexpr int kI2tMaxSmem =
    kWBytes + kParamBytes + (kMaxTokens + 7) / 8 * 8 * kKLd * 2 + kCross * i2t_vt_ld(kMaxTokens) * 2;
// sm_90: 228 KB per SM, 1 KB reserved per block, 1 KB of static sum_s / var_s.
static_assert(2 * (kI2tMaxSmem + 2048) <= 228 * 1024, "two blocks per SM at the most tokens");

__device__ __forceinline__ uint32_t ld_shared32(const __half* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}

// One 8-token tile t of the online softmax of heads h0.. (kHeadsAtOnce of them) for the warp's 16
// rows (head h = h0 + hh), FlashAttention-2 style: scores, probabilities and outputs stay in
// registers.
// Fragments (PTX ISA mma.m16n8k16 / m16n8k8, .f16, lane = 4 g + q):
//   S = Q_h K_h^T (m16n8k16, rows x tokens, k = the head's 16 dims): A = qf[hh], a0 (row g; dims
//     2q, 2q+1), a1 (row g + 8; same), a2 (row g; dims 8+2q, 9+2q), a3 (row g + 8; same);
//     B (k x n, "col"): b0 = (dims 2q, 2q+1; token g), b1 = (dims 8+2q, 9+2q; token g), i.e.
//     two halves of k row 8t + g each; C: c0, c1 = (row g; tokens 8t+2q, +1), c2, c3 = row g + 8.
//   O_h += P V_h (m16n8k8, rows x dims, k = the 8 tokens), n-tile n = dims 8n..8n+7: A = P with
//     a0 = (row g; tokens 2q, 2q+1) = (c0, c1), a1 = (row g + 8; same) = (c2, c3), the S
//     accumulator layout; B: b0 = (tokens 2q, 2q+1; dim 8n + g), two halves of transposed v row
//     8n + g; C: o[n] = (row g; dims 8n+2q, +1), (row g + 8; same).
// m / l: running max (log2 units) and this lane's part of the row sums (quad-reduced at the end:
// the max is quad-uniform, so the parts rescale alike). The first tile holds token 0, so its max
// is finite and nothing accumulated needs rescaling.
template <bool kFirst>
__device__ __forceinline__ void i2t_attend_tile(const uint32_t (&qf)[kHeadsAtOnce][4], int h0,
                                                const __half* k_s, const __half* vt_s, int vt_ld,
                                                int t, int tokens, float scale_log2,
                                                float (&m)[kHeadsAtOnce][2], float (&l)[kHeadsAtOnce][2],
                                                float (&o)[kHeadsAtOnce][2][4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const bool live0 = t * 8 + 2 * q < tokens, live1 = t * 8 + 2 * q + 1 < tokens;
#pragma unroll
    for (int hh = 0; hh < kHeadsAtOnce; ++hh) {
        const int h = h0 + hh;
        float s[4] = {0.f, 0.f, 0.f, 0.f};
        const __half* kr = k_s + (t * 8 + g) * kKLd + h * 16 + 2 * q;
        mma16816(s, qf[hh], ld_shared32(kr), ld_shared32(kr + 8));
        // Scale into log2 units; tokens past T (zero k rows) score -inf.
        s[0] = live0 ? s[0] * scale_log2 : -INFINITY;
        s[1] = live1 ? s[1] * scale_log2 : -INFINITY;
        s[2] = live0 ? s[2] * scale_log2 : -INFINITY;
        s[3] = live1 ? s[3] * scale_log2 : -INFINITY;
#pragma unroll
        for (int i = 0; i < 2; ++i) {  // row g, then row g + 8
            float mx = fmaxf(s[2 * i], s[2 * i + 1]);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float alpha = 0.f;
            if constexpr (!kFirst) {
                mx = fmaxf(m[hh][i], mx);
                alpha = exp2f(m[hh][i] - mx);
            }
            m[hh][i] = mx;
            s[2 * i] = exp2f(s[2 * i] - mx);
            s[2 * i + 1] = exp2f(s[2 * i + 1] - mx);
            const float part = s[2 * i] + s[2 * i + 1];
            if constexpr (kFirst) {
                l[hh][i] = part;
            } else {
                l[hh][i] = fmaf(l[hh][i], alpha, part);
#pragma unroll
                for (int n = 0; n < 2; ++n) {
                    o[hh][n][2 * i] *= alpha;
                    o[hh][n][2 * i + 1] *= alpha;
                }
            }
        }
        // P is rounded to fp16 for the product (the row sums keep the fp32 values).
        const uint32_t pa[2] = {pack_half2(s[0], s[1]), pack_half2(s[2], s[3])};
#pragma unroll
        for (int n = 0; n < 2; ++n)
            mma16808(o[hh][n], pa, ld_shared32(vt_s + (h * 16 + n * 8 + g) * vt_ld + t * 8 + 2 * q));
    }
}

}  // namespace


// Image -> token cross attention of a two-way block, its out_proj, the residual and norm4 in
// one pass: keys = LayerNorm(keys + out_proj(attn(q = pixels, k/v = tokens))), i.e. MobileSAM
// TwoWayAttentionBlock's cross_attn_image_to_token (8 heads of 16) + residual + norm4.
// Persistent: each block copies out_proj (64 KB) into shared memory once (cp.async, overlapping
// its first attention) and then walks 64-pixel tiles of the prompts, reloading the tokens when
// the prompt changes (k rows padded, v transposed: the B fragments below are 32-bit loads). Per
// tile, 8 warps; warp w owns rows 16 (w % 4).. and output columns 128 (w / 4)... Each warp runs
// the whole 8-head attention of its 16 rows on mma.sync (the two warps of a row group compute
// the same attention: cheaper than trading fragments through shared memory with two barriers):
// S = Q K^T per head and 8-token tile (m16n8k16), online softmax in fp32 on the accumulators
// (quad shuffles, base-2 exponentials with log2(e) * scale folded in), O += P V (m16n8k8, P
// rounded to fp16 as attention.cu does), normalised and packed straight into out_proj's A
// fragments (one m16n8k16 k-step per head). Heads go in pairs, each pair's attention straight
// into out_proj, so 128 registers hold it without spills (q rows prefetched into L1 so the
// pairs' q loads do not each wait on L2). out_proj runs on mma.sync with fp32 accumulators (B
// fragments from the padded shared copy by ldmatrix.x4, two n-tiles a load: its 8 row addresses
// per matrix hit 32 distinct banks; 4 LDS.32 a pair before, which throttled the MIO queue);
// bias, residual and the LayerNorm (two-pass mean / centred variance over the 256 columns, halves
// combined through shared memory) stay in fp32 until the one fp16 store. Residual and output may
// alias: each element is read and then written by the same thread. Dynamic shared memory:
// out_proj | bias, norm weight and bias | k (tokens padded to 8, x 272 B) | v transposed (128 x
// i2t_vt_ld halves): 76,928 B for box prompts, 110,720 B at 69 tokens; two blocks per SM either
// way. (The first persistent version, parameters and q read from L2 in the epilogue and per head,
// measured 54 us for 8 prompts on an H200 under ncu; the L2 round trips taken one after another,
// not the math, bound it. The scalar-FMA attention that followed, heads split between the two
// warps of a row group, measured 55 us at issue rate 0.39: the attention was a third of the
// instructions.)
extern "C" __global__ void __launch_bounds__(256, 2) sam_image_to_token(ImageToTokenParams p) {
    extern __shared__ __align__(16) unsigned char i2t_smem[];
    __half* w_s = reinterpret_cast<__half*>(i2t_smem);
    float* bias_s = reinterpret_cast<float*>(i2t_smem + kWBytes);
    float* gamma_s = bias_s + kDim;
    float* beta_s = gamma_s + kDim;
    const int t_pad = (p.tokens + 7) / 8 * 8;
    const int vt_ld = i2t_vt_ld(p.tokens);
    __half* k_s = reinterpret_cast<__half*>(i2t_smem + kWBytes + kParamBytes);
    __half* vt_s = k_s + t_pad * kKLd;
    __shared__ float sum_s[kI2tRows][2], var_s[kI2tRows][2];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, q = lane & 3;
    const int rg = warp & 3, half = warp >> 2;
    constexpr int kKChunks = kCross / 8;  // 16-byte chunks per k (or v) row
    constexpr int kWChunks = kCross / 8;  // 16-byte chunks per out_proj row
    for (int i = tid; i < kDim * kWChunks; i += blockDim.x) {
        const int n = i / kWChunks, c = i % kWChunks;
        cp_async16(smem_addr(w_s + n * kWLd + c * 8), p.w + n * kCross + c * 8, 16);
    }
    if (tid < kDim / 4) {
        cp_async16(smem_addr(bias_s + 4 * tid), p.bias + 4 * tid, 16);
        cp_async16(smem_addr(gamma_s + 4 * tid), p.gamma + 4 * tid, 16);
        cp_async16(smem_addr(beta_s + 4 * tid), p.beta + 4 * tid, 16);
    }
    cp_async_commit();
    const float scale_log2 = p.scale * 1.4426950408889634f;
    const int t_tiles = t_pad / 8;

    for (int tile = blockIdx.x; tile < p.batch * kI2tTiles; tile += gridDim.x) {
        const int b = tile / kI2tTiles;
        const bool first = tile == static_cast<int>(blockIdx.x);
        // Tokens are reloaded when the prompt changes (recomputed, not kept in a register).
        if (first || b != (tile - static_cast<int>(gridDim.x)) / kI2tTiles) {
            __syncthreads();  // every warp is done with the previous prompt's tokens
            const __half* kv_src = p.kv + static_cast<long long>(b) * p.tokens * p.kv_stride;
            // k rows as they are; rows T..t_pad zero (masked scores, but 0 * garbage could be NaN).
            for (int i = tid; i < t_pad * kKChunks; i += blockDim.x) {
                const int j = i / kKChunks, c = i % kKChunks;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (j < p.tokens) v = *reinterpret_cast<const uint4*>(kv_src + j * p.kv_stride + c * 8);
                *reinterpret_cast<uint4*>(k_s + j * kKLd + c * 8) = v;
            }
            // v transposed, vt_s[dim][token]: a thread takes tokens 2jp, 2jp + 1 of 8 dims and
            // writes 8 words; tokens past T are zero (their probabilities are exactly 0).
            const int pairs = t_pad / 2;
            for (int i = tid; i < pairs * kKChunks; i += blockDim.x) {
                const int jp = i % pairs, c = i / pairs;
                uint4 v0 = make_uint4(0u, 0u, 0u, 0u), v1 = v0;
                const __half* src = kv_src + 2 * jp * p.kv_stride + kCross + c * 8;
                if (2 * jp < p.tokens) v0 = *reinterpret_cast<const uint4*>(src);
                if (2 * jp + 1 < p.tokens) v1 = *reinterpret_cast<const uint4*>(src + p.kv_stride);
                const __half2* e0 = reinterpret_cast<const __half2*>(&v0);
                const __half2* e1 = reinterpret_cast<const __half2*>(&v1);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    __half* dst = vt_s + (c * 8 + 2 * e) * vt_ld + 2 * jp;
                    *reinterpret_cast<__half2*>(dst) = __lows2half2(e0[e], e1[e]);
                    *reinterpret_cast<__half2*>(dst + vt_ld) = __highs2half2(e0[e], e1[e]);
                }
            }
            __syncthreads();
        }

        // The epilogue's residual rows (64 x 512 B, 4 lines each) are pulled into L1 now, so
        // its 32 dependent-looking reads per thread hit L1 instead of waiting on L2 in turn.
        asm volatile("prefetch.global.L1 [%0];" ::"l"(p.residual + b * p.res_batch +
                                                    ((tile % kI2tTiles) * kI2tRows + tid / 4) * 256 +
                                                    (tid % 4) * 64));
        const int lr = rg * 16 + g;  // local rows lr and lr + 8
        long long r_lo = (tile % kI2tTiles) * kI2tRows + lr, r_hi = r_lo + 8;
        const __half* qb = p.q + b * p.q_batch;
        // Head pairs one after another, each attention straight into out_proj, so only a pair's
        // q, softmax state and A fragments are live beside out_proj's 64 accumulators. The
        // block's q rows (64 x 2 lines) are pulled into L1 first: the pairs' q loads then do
        // not each wait on L2.
        if (tid < 2 * kI2tRows)
            asm volatile("prefetch.global.L1 [%0];" ::"l"(qb + ((tile % kI2tTiles) * kI2tRows + tid / 2) *
                                                                     p.q_stride + (tid % 2) * 64));
        const int n0 = half * 128;  // this warp's 128 output columns, 16 n-tiles
        float acc[16][4];
#pragma unroll
        for (int j = 0; j < 16; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
        for (int h0 = 0; h0 < kCrossHeads; h0 += kHeadsAtOnce) {
            // The A fragments of S = Q K^T: qf[hh] = (row g; dims 2q..), (row g + 8; 2q..),
            // (row g; 8+2q..), (row g + 8; 8+2q..) of head h0 + hh.
            uint32_t qf[kHeadsAtOnce][4];
#pragma unroll
            for (int hh = 0; hh < kHeadsAtOnce; ++hh)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const __half* row = qb + (r ? r_hi : r_lo) * p.q_stride + (h0 + hh) * 16 + 2 * q;
                    qf[hh][r] = *reinterpret_cast<const uint32_t*>(row);
                    qf[hh][2 + r] = *reinterpret_cast<const uint32_t*>(row + 8);
                }
            float m[kHeadsAtOnce][2], l[kHeadsAtOnce][2], o[kHeadsAtOnce][2][4] = {};
            i2t_attend_tile<true>(qf, h0, k_s, vt_s, vt_ld, 0, p.tokens, scale_log2, m, l, o);
#pragma unroll 1
            for (int t = 1; t < t_tiles; ++t)
                i2t_attend_tile<false>(qf, h0, k_s, vt_s, vt_ld, t, p.tokens, scale_log2, m, l, o);
            // The first tile publishes out_proj's shared copy and parameters (each thread
            // waited for its own part); later tiles need no barrier here.
            if (h0 == 0 && first) {
                cp_async_wait<0>();
                __syncthreads();
            }
#pragma unroll
            for (int hh = 0; hh < kHeadsAtOnce; ++hh) {
                float inv[2];
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    float sum = l[hh][i];
                    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
                    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
                    inv[i] = 1.f / sum;  // >= 1: the row max's own term is exp2(0)
                }
                // out_proj's A fragment of head h: (row g; dims 2q..), (row g + 8; 2q..),
                // (row g; 8+2q..), (row g + 8; 8+2q..), from O's n-tiles 0 (dims 0-7) and 1 (8-15).
                const uint32_t a[4] = {pack_half2(o[hh][0][0] * inv[0], o[hh][0][1] * inv[0]),
                                       pack_half2(o[hh][0][2] * inv[1], o[hh][0][3] * inv[1]),
                                       pack_half2(o[hh][1][0] * inv[0], o[hh][1][1] * inv[0]),
                                       pack_half2(o[hh][1][2] * inv[1], o[hh][1][3] * inv[1])};
                // B fragments of n-tiles 2jj and 2jj + 1 in one ldmatrix.x4: lanes 8m..8m+7
                // address the 8 rows (n) of matrix m = (n-tile 2jj + m / 2, dims 8 (m % 2)..).
                const int m_tile = lane >> 4, m_dims = ((lane >> 3) & 1) * 8;
#pragma unroll
                for (int jj = 0; jj < 8; ++jj) {
                    uint32_t b[4];
                    ldmatrix_x4(b, smem_addr(w_s + (n0 + (2 * jj + m_tile) * 8 + (lane & 7)) * kWLd +
                                             (h0 + hh) * 16 + m_dims));
                    mma16816(acc[2 * jj], a, b[0], b[1]);
                    mma16816(acc[2 * jj + 1], a, b[2], b[3]);
                }
            }
        }

        // + bias + residual; row sums (quad, then the two column halves).
        r_lo = (tile % kI2tTiles) * kI2tRows + lr;
        r_hi = r_lo + 8;
        const __half* res = p.residual + b * p.res_batch;
        float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int n = n0 + j * 8 + 2 * q;
            const float2 rl = __half22float2(*reinterpret_cast<const __half2*>(res + r_lo * 256 + n));
            const float2 rh = __half22float2(*reinterpret_cast<const __half2*>(res + r_hi * 256 + n));
            const float2 bias = *reinterpret_cast<const float2*>(bias_s + n);
            acc[j][0] += bias.x + rl.x;
            acc[j][1] += bias.y + rl.y;
            acc[j][2] += bias.x + rh.x;
            acc[j][3] += bias.y + rh.y;
            sum_lo += acc[j][0] + acc[j][1];
            sum_hi += acc[j][2] + acc[j][3];
        }
        // Only the two warps of a row group (rg, both column halves) exchange row totals: they
        // sync on named barrier 1 + rg, not the whole block.
        const float2 sums = quad_row_totals(sum_lo, sum_hi, sum_s, lr, half, q == 0, 1 + rg, 64);
        const float mean_lo = sums.x * (1.f / 256.f), mean_hi = sums.y * (1.f / 256.f);
        float var_lo = 0.f, var_hi = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                acc[j][e] -= mean_lo;
                acc[j][2 + e] -= mean_hi;
                var_lo += acc[j][e] * acc[j][e];
                var_hi += acc[j][2 + e] * acc[j][2 + e];
            }
        }
        const float2 vars = quad_row_totals(var_lo, var_hi, var_s, lr, half, q == 0, 1 + rg, 64);
        const float inv_lo = rsqrtf(vars.x * (1.f / 256.f) + p.eps);
        const float inv_hi = rsqrtf(vars.y * (1.f / 256.f) + p.eps);
        __half* y = p.y + static_cast<size_t>(b) * 4096 * 256;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int n = n0 + j * 8 + 2 * q;
            const float2 gm = *reinterpret_cast<const float2*>(gamma_s + n);
            const float2 bt = *reinterpret_cast<const float2*>(beta_s + n);
            *reinterpret_cast<__half2*>(y + r_lo * 256 + n) =
                __floats2half2_rn(acc[j][0] * inv_lo * gm.x + bt.x, acc[j][1] * inv_lo * gm.y + bt.y);
            *reinterpret_cast<__half2*>(y + r_hi * 256 + n) =
                __floats2half2_rn(acc[j][2] * inv_hi * gm.x + bt.x, acc[j][3] * inv_hi * gm.y + bt.y);
        }
    }
}

namespace {
constexpr int kMaskSide = 256;     // mask_input side (4 x the embedding side)
constexpr int kEmbedSide = 64;
constexpr int kMaskC1 = 4;         // mask_in_chans // 4
constexpr int kMaskC2 = 16;        // mask_in_chans
// Offsets into the packed f32 parameters: the official tensors of
// prompt_encoder.mask_downscaling, each flattened in its own (row-major) order. Mirrors
// `mask_params` in src/ops/sam_decoder.rs.
constexpr int kW1 = 0;                          // 0.weight [4, 1, 2, 2]
constexpr int kB1 = kW1 + kMaskC1 * 4;          // 0.bias [4]
constexpr int kG1 = kB1 + kMaskC1;              // 1.weight [4] (LayerNorm2d)
constexpr int kBe1 = kG1 + kMaskC1;             // 1.bias [4]
constexpr int kW2 = kBe1 + kMaskC1;             // 3.weight [16, 4, 2, 2]
constexpr int kB2 = kW2 + kMaskC2 * kMaskC1 * 4;  // 3.bias [16]
constexpr int kG2 = kB2 + kMaskC2;              // 4.weight [16] (LayerNorm2d)
constexpr int kBe2 = kG2 + kMaskC2;             // 4.bias [16]
constexpr int kW3 = kBe2 + kMaskC2;             // 6.weight [256, 16, 1, 1]
constexpr int kB3 = kW3 + kDim * kMaskC2;       // 6.bias [256]
constexpr int kMaskParams = kB3 + kDim;         // 4684
constexpr int kSmallParams = kW3;               // what stage 1 reads (kept in shared memory)

// Mirrors `MaskEmbedParams` in src/ops/sam_decoder.rs.
struct MaskEmbedParams {
    const float* mask;       // [batch, 256, 256] low-res mask inputs (logits)
    const float* params;     // [kMaskParams] packed mask_downscaling (offsets above)
    const __half* embedding; // [4096, 256] NHWC image embedding (shared by every prompt)
    __half* y;               // [batch, 4096, 256] NHWC: embedding + mask_downscaling(mask)
    float eps;               // LayerNorm2d eps (1e-6)
};

// LayerNorm2d over N channels of one pixel (mean, then the centred variance, as the official
// module), then the affine and GELU, in place.
template <int N>
__device__ __forceinline__ void layer_norm_gelu(float (&v)[N], const float* gamma, const float* beta,
                                                float eps) {
    float mean = 0.f;
#pragma unroll
    for (int c = 0; c < N; ++c) mean += v[c];
    mean *= 1.f / N;
    float var = 0.f;
#pragma unroll
    for (int c = 0; c < N; ++c) {
        v[c] -= mean;
        var += v[c] * v[c];
    }
    const float inv = rsqrtf(var * (1.f / N) + eps);
#pragma unroll
    for (int c = 0; c < N; ++c) v[c] = activate(v[c] * inv * gamma[c] + beta[c], kActGelu);
}

}  // namespace

// y[b, p, :] = embedding[p, :] + mask_downscaling(mask[b])[:, p] for one row of 64 embedding
// pixels of one prompt per block. Output pixel (y, x) depends only on the 4x4 input patch
// rows 4y..4y+3, columns 4x..4x+3: the first conv's output (2y+i, 2x+j) reads patch element
// (2i+dy, 2j+dx) with its tap (dy, dx), the second conv's output reads the first's (i, j)
// with its tap (i, j). Stage 1 (threads 0..63, one pixel each): both convs, LayerNorm2d and
// GELU in fp32 registers -> the 16 channels in shared memory. Stage 2 (all threads, two
// channels each, 2 pixels at a time): the 1x1 conv 16 -> 256 in fp32, + bias + embedding, one
// fp16 rounding, coalesced half2 stores. Reference: PromptEncoder._embed_masks plus the add
// `src = image_embeddings + dense_prompt_embeddings` (mask_decoder.py), up to fp16 storage.
extern "C" __global__ void __launch_bounds__(256) sam_mask_embed(MaskEmbedParams p) {
    __shared__ float w_s[kSmallParams];
    __shared__ __align__(16) float h_s[kEmbedSide][kMaskC2];
    const int tid = threadIdx.x;
    const int row = blockIdx.x;  // embedding row y
    const int b = blockIdx.y;
    for (int i = tid; i < kSmallParams; i += blockDim.x) w_s[i] = p.params[i];
    __syncthreads();

    if (tid < kEmbedSide) {
        const int x = tid;
        // The 4x4 patch: four 16-byte rows (adjacent threads read adjacent vectors).
        float m[4][4];
        const float* src = p.mask + (static_cast<size_t>(b) * kMaskSide + 4 * row) * kMaskSide + 4 * x;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const float4 v = *reinterpret_cast<const float4*>(src + r * kMaskSide);
            m[r][0] = v.x;
            m[r][1] = v.y;
            m[r][2] = v.z;
            m[r][3] = v.w;
        }
        float h2[kMaskC2];
#pragma unroll
        for (int o = 0; o < kMaskC2; ++o) h2[o] = w_s[kB2 + o];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                // First conv at (2y + i, 2x + j), its LayerNorm2d and GELU.
                float h1[kMaskC1];
#pragma unroll
                for (int c = 0; c < kMaskC1; ++c) {
                    float s = w_s[kB1 + c];
#pragma unroll
                    for (int dy = 0; dy < 2; ++dy)
#pragma unroll
                        for (int dx = 0; dx < 2; ++dx)
                            s = fmaf(w_s[kW1 + c * 4 + dy * 2 + dx], m[2 * i + dy][2 * j + dx], s);
                    h1[c] = s;
                }
                layer_norm_gelu(h1, &w_s[kG1], &w_s[kBe1], p.eps);
                // Its contribution to the second conv through tap (i, j).
#pragma unroll
                for (int o = 0; o < kMaskC2; ++o)
#pragma unroll
                    for (int c = 0; c < kMaskC1; ++c)
                        h2[o] = fmaf(w_s[kW2 + (o * kMaskC1 + c) * 4 + i * 2 + j], h1[c], h2[o]);
            }
        }
        layer_norm_gelu(h2, &w_s[kG2], &w_s[kBe2], p.eps);
#pragma unroll
        for (int o = 0; o < kMaskC2; o += 4)
            *reinterpret_cast<float4*>(&h_s[x][o]) = make_float4(h2[o], h2[o + 1], h2[o + 2], h2[o + 3]);
    }
    __syncthreads();

    // Stage 2: thread -> channels 2c2, 2c2 + 1 and pixels half, half + 2, ...
    const int c0 = 2 * (tid % (kDim / 2));
    const int half = tid / (kDim / 2);
    float w0[kMaskC2], w1[kMaskC2];
#pragma unroll
    for (int k = 0; k < kMaskC2; ++k) {
        w0[k] = __ldg(p.params + kW3 + c0 * kMaskC2 + k);
        w1[k] = __ldg(p.params + kW3 + (c0 + 1) * kMaskC2 + k);
    }
    const float bias0 = __ldg(p.params + kB3 + c0), bias1 = __ldg(p.params + kB3 + c0 + 1);
    const size_t row_px = static_cast<size_t>(row) * kEmbedSide;
    __half* out = p.y + (static_cast<size_t>(b) * kEmbedSide * kEmbedSide + row_px) * kDim;
    const __half* emb = p.embedding + row_px * kDim;
    for (int x = half; x < kEmbedSide; x += 2) {
        float a0 = bias0, a1 = bias1;
#pragma unroll
        for (int k = 0; k < kMaskC2; ++k) {
            const float h = h_s[x][k];  // the same address across the warp: a broadcast
            a0 = fmaf(w0[k], h, a0);
            a1 = fmaf(w1[k], h, a1);
        }
        const float2 e = __half22float2(*reinterpret_cast<const __half2*>(emb + x * kDim + c0));
        *reinterpret_cast<__half2*>(out + x * kDim + c0) = __floats2half2_rn(e.x + a0, e.y + a1);
    }
}

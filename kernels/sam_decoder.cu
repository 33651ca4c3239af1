// MobileSAM prompt encoder and mask decoder glue (the GEMMs, LayerNorms and attentions of the
// two-way transformer use gemm.cu, norm.cu and attention.cu):
//
// - sam_prompt_encode: PromptEncoder._embed_points / _embed_boxes (random-Fourier positional
//   encoding of prompt points scaled into the 1024 frame as ResizeLongestSide.apply_coords_torch
//   does, plus the label embeddings) and the token assembly of MaskDecoder.predict_masks:
//   tokens[b] = [iou_token, mask_tokens[0..4], sparse prompt embeddings].
// - sam_ln_gelu_c64: LayerNorm2d(64, eps 1e-6) + GELU of output_upscaling, on the 128x128 map
//   stored as rows of 64 channels (the ConvTranspose2d-as-GEMM output viewed [4 M, 64]).
// - sam_masks: masks = hyper_in @ upscaled (MaskDecoder.predict_masks) with the multimask
//   slice, written as fp32 [B, C, 256, 256] in image order, and iou_pred[:, slice].
//
// Upscaled layout: ConvTranspose2d(k2, s2) twice, each done as a GEMM whose output columns are
// ordered (dy, dx, channel); row r1 = (b*4096 + y*64 + x)*4 + dy*2 + dx of the second GEMM's
// input, its columns (dy2*2 + dx2)*32 + c, is pixel (4y + 2dy + dy2, 4x + 2dx + dx2) of the
// 256x256 map. No scatter kernel runs: sam_masks reads pixels in that order.
#include "common.cuh"
#include "dense.cuh"

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

// In-place y = GELU(LayerNorm(x) * gamma + beta) over rows of 64 fp16 channels: 8 lanes per
// row, one 16-byte vector each; variance from centred values as in norm.cu.
extern "C" __global__ void __launch_bounds__(256)
    sam_ln_gelu_c64(__half* x, const float* gamma, const float* beta, long long rows, float eps) {
    const long long row = blockIdx.x * 32ll + threadIdx.x / 8;
    const int lane = threadIdx.x % 8;
    const bool ok = row < rows;
    uint4* ptr = reinterpret_cast<uint4*>(x + (ok ? row : 0) * 64) + lane;
    float v[8];
    unpack8(ok ? *ptr : make_uint4(0, 0, 0, 0), v);
    float sum = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) sum += v[e];
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float mean = sum * (1.f / 64.f);
    float var = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        v[e] -= mean;
        var += v[e] * v[e];
    }
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) var += __shfl_xor_sync(0xffffffffu, var, o);
    const float inv = rsqrtf(var * (1.f / 64.f) + eps);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const int ch = lane * 8 + e;
        v[e] = activate(v[e] * inv * gamma[ch] + beta[ch], kActGelu);
    }
    if (ok) *ptr = pack8(v);
}

namespace {
// Mirrors `MaskParams` in src/ops/sam_decoder.rs.
struct MaskParams {
    const __half* upscaled;  // [batch * 16384, 128] in ConvTranspose order (file comment)
    const __half* heads;     // [5][stride][32]: IoU head (first 4 columns), hyper_in of mask token 0..3
    const uint32_t* count;   // prompts in use
    float* low_res;          // [batch, masks, 256, 256]
    float* iou;              // [batch, masks]
    uint32_t* mask_count;    // receives min(count, batch) * masks (mask decoding reads it)
    int batch, stride, first, masks;
};

}  // namespace

// One block per (output row Y, prompt b), one thread per column X.
extern "C" __global__ void __launch_bounds__(kLowRes) sam_masks(MaskParams p) {
    __shared__ float hyper[kMaxMasks][kUpChannels];
    const int Y = blockIdx.x, b = blockIdx.y, X = threadIdx.x;
    if (X < p.masks * kUpChannels) {
        const int m = X / kUpChannels, j = X % kUpChannels;
        hyper[m][j] = __half2float(p.heads[((1 + p.first + m) * static_cast<size_t>(p.stride) + b) * kUpChannels + j]);
    }
    if (Y == 0 && X < p.masks)
        p.iou[b * p.masks + X] = __half2float(p.heads[static_cast<size_t>(b) * kUpChannels + p.first + X]);
    if (Y == 0 && b == 0 && X == 0) p.mask_count[0] = min(*p.count, static_cast<uint32_t>(p.batch)) * p.masks;
    __syncthreads();
    const int y = Y >> 2, dy = (Y >> 1) & 1, dy2 = Y & 1;
    const int x = X >> 2, dx = (X >> 1) & 1, dx2 = X & 1;
    const size_t row = ((static_cast<size_t>(b) * 4096 + y * 64 + x) * 4 + dy * 2 + dx);
    const uint4* src = reinterpret_cast<const uint4*>(p.upscaled + row * 128 + (dy2 * 2 + dx2) * kUpChannels);
    float f[kUpChannels];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        float part[8];
        unpack8(src[q], part);
#pragma unroll
        for (int e = 0; e < 8; ++e) f[q * 8 + e] = part[e];
    }
#pragma unroll
    for (int m = 0; m < kMaxMasks; ++m) {
        if (m >= p.masks) break;
        float acc = 0.f;
#pragma unroll
        for (int j = 0; j < kUpChannels; ++j) acc = fmaf(hyper[m][j], f[j], acc);
        p.low_res[((static_cast<size_t>(b) * p.masks + m) * kLowRes + Y) * kLowRes + X] = acc;
    }
}

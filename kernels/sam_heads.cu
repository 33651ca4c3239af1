// MobileSAM mask decoder: the five output MLPs in one launch. Reference (official
// segment_anything/modeling/mask_decoder.py, `MaskDecoder.predict_masks`):
//
//   iou_pred = iou_prediction_head(iou_token_out)                       MLP(256, 256, 4, 3 layers)
//   hyper_in[:, i] = output_hypernetworks_mlps[i](mask_tokens_out[:, i])  MLP(256, 256, 32, 3 layers)
//
// MLP: Linear -> ReLU -> Linear -> ReLU -> Linear (no activation after the last layer). MLP 0 (the
// IoU head) reads token 0 of each prompt, MLP 1 + i (hypernetwork i, i = 0..3) reads token 1 + i
// (`hs[:, 0, :]`, `hs[:, 1:5, :]`: the queries after the final attention and norm_final_attn).
//
// Layout. x: fp16 queries [prompts, tokens, 256]. Weights as nn.Linear stores them ([out, in]),
// fp16, stacked over the 5 MLPs: W1 [5][256][256], W2 [5][256][256], W3 [5][32][256] (the IoU
// head's 4 rows padded to 32 with zeros); biases f32 [5][256], [5][256], [5][32] (padded with
// zeros). Output y: fp16 [5][stride][32], row mlp * stride + prompt (the IoU head's 4 values in
// the first columns of the first row block, its other 28 columns 0): the layout sam_upscale_masks
// reads as `heads`.
//
// Numerics: fp32 accumulation on mma.sync.m16n8k16; bias (f32) + ReLU in fp32, then the hidden
// activations are rounded to fp16 between layers, where the former batched GEMMs stored them; the
// output is rounded to fp16 once. (The GEMM path added the biases as fp16 residual tables: the
// biases here are not rounded, ~1e-4 relative of a bias apart.) No atomics, no cross-CTA
// reduction: bitwise deterministic; a prompt's result does not depend on the others in its tile.
//
// Grid (ceil(prompts / 16), 5): a 256-thread CTA computes one MLP for 16 prompts (rows, zero-
// filled past the end). Warp w owns hidden columns 32w..32w+31 of layers 1 and 2 (4 n8 tiles);
// warps 0 and 1 own output columns 0..15 and 16..31 of layer 3. The MLP's weights stream through
// a 4-slot cp.async ring, 17 steps: W1 in 8 K steps of 32 ([256][40] halves per slot), W2 the
// same, then W3 whole ([32][264] halves). The x tile (16 x 256) is copied once with the first
// step; layer 1 writes fp16(relu(.)) to h_s, layer 2 writes its output over the x tile (no longer
// read: every warp is past layer 1 at the first W2 barrier), layer 3 reads it from there. Padded
// rows (odd multiples of 16 bytes) keep every ldmatrix conflict-free.
//
// Estimate (not a measurement; H100/H200): the weights dominate. A CTA streams 128 + 128 + 16 KB
// = 272 KB from L2; one SM pulls ~64 B/clk (~127 GB/s at 1.98 GHz), so ~2.2 us per CTA, plus
// ~1-2 us of launch and first-load latency: ~3.5-4.5 us for 1 to 16 prompts (5 CTAs) and the
// same for 32 (10 CTAs, 2.7 MB of L2 reads in all), against 12.5 / 12.7 / 14.2 us measured
// (H200) for the three batched GEMM launches at 1 / 8 / 32 prompts. The FLOPs (2 x 16 x 139k per
// CTA on mma.sync) are negligible. If the weights come from HBM (evicted by the decode's image
// traffic), 48 KB in flight per SM at ~0.8 us latency is still ~60 B/clk. Splitting each MLP's
// columns over a 4-CTA cluster (hidden slices exchanged through distributed shared memory) would
// cut the per-CTA stream to 68 KB (~0.6 us); not done.
// Measured (H200, 2026-11-27): 11.9 us (ncu, 32 prompts); the decoder bench's heads part 11.5
// us at 1 / 8 / 32 prompts (was 12.5 / 12.7 / 14.2). Far above the estimate: one CTA streaming
// 272 KB is latency-bound well below ~127 GB/s; the cluster split above is the next step.
#include "dense.cuh"
#include "mma.cuh"

using namespace finesam;

namespace {

constexpr int kDim = 256;       // transformer_dim = the MLPs' input and hidden width
constexpr int kOut = 32;        // output columns (hypernetworks 32; the IoU head 4, padded)
constexpr int kRows = 16;       // prompts per CTA: mirrors HEADS_PROMPTS_PER_CTA
constexpr int kThreads = 256;   // 8 warps
constexpr int kStages = 4;      // cp.async ring depth
constexpr int kKStep = 32;      // K per ring slot in layers 1 and 2
constexpr int kLdW = kKStep + 8;            // 40 halves (5 16-byte units: odd)
constexpr int kLdW3 = kDim + 8;             // 264 halves (33 units: odd)
constexpr int kLdX = kDim + 8;              // x / hidden tile rows, halves
constexpr int kStageBytes = kDim * kLdW * 2;            // 20,480
constexpr int kLayerSteps = kDim / kKStep;              // 8
constexpr int kSteps = 2 * kLayerSteps + 1;             // 17
constexpr int kXOff = kStages * kStageBytes;            // 81,920
constexpr int kHOff = kXOff + kRows * kLdX * 2;         // + 8,448
constexpr int kSmem = kHOff + kRows * kLdX * 2;         // + 8,448 = 98,816
static_assert(kOut * kLdW3 * 2 <= kStageBytes, "W3 fits one ring slot");
static_assert(kSmem == 98816, "mirrors HEADS_SMEM_BYTES in src/ops/sam_heads.rs");
static_assert(kSmem <= 99 * 1024, "fits sm_86/sm_89's 99 KB per block");
static_assert(2 * (kSmem + 1024) <= 228 * 1024, "two CTAs per SM on sm_90");

// Mirrors `HeadsParams` in src/ops/sam_heads.rs.
struct HeadsParams {
    const __half* x;   // [prompts, tokens, 256]
    const __half* w1;  // [5][256][256]
    const float* b1;   // [5][256]
    const __half* w2;  // [5][256][256]
    const float* b2;   // [5][256]
    const __half* w3;  // [5][32][256]
    const float* b3;   // [5][32]
    __half* y;         // [5][stride][32]
    int prompts, tokens, stride;
};


}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 2) sam_heads(HeadsParams p) {
    extern __shared__ __align__(128) unsigned char heads_smem[];
    __half* x_s = reinterpret_cast<__half*>(heads_smem + kXOff);  // x, later layer 2's output
    __half* h_s = reinterpret_cast<__half*>(heads_smem + kHOff);  // layer 1's output
    const int tid = threadIdx.x, warp = tid >> 5;
    const Lanes L;
    const int mlp = blockIdx.y;
    const int p0 = blockIdx.x * kRows;
    const __half* w1 = p.w1 + static_cast<size_t>(mlp) * kDim * kDim;
    const __half* w2 = p.w2 + static_cast<size_t>(mlp) * kDim * kDim;
    const __half* w3 = p.w3 + static_cast<size_t>(mlp) * kOut * kDim;

    // Ring step s: W1 (s < 8) or W2 (s < 16) rows 0..255, K 32 (s % 8).. as [256][40]; step 16:
    // W3 whole as [32][264]. 1024 16-byte vectors either way, 4 per thread.
    auto load_step = [&](int s) {
        __half* slot = reinterpret_cast<__half*>(heads_smem + (s % kStages) * kStageBytes);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int v = tid + i * kThreads;
            if (s < 2 * kLayerSteps) {
                const __half* w = s < kLayerSteps ? w1 : w2;
                const int n = v >> 2, c = (v & 3) * 8;
                cp_async16(smem_addr(slot + n * kLdW + c), w + n * kDim + (s % kLayerSteps) * kKStep + c, 16);
            } else {
                const int n = v >> 5, c = (v & 31) * 8;
                cp_async16(smem_addr(slot + n * kLdW3 + c), w3 + n * kDim + c, 16);
            }
        }
    };
    // Group 0: the x tile (token `mlp` of prompts p0.., rows past the end zero-filled) and step 0;
    // groups 1, 2: steps 1, 2.
    for (int v = tid; v < kRows * (kDim / 8); v += kThreads) {
        const int r = v / (kDim / 8), c = (v % (kDim / 8)) * 8;
        const bool ok = p0 + r < p.prompts;
        const size_t row = ok ? static_cast<size_t>(p0 + r) * p.tokens + mlp : 0;
        cp_async16(smem_addr(x_s + r * kLdX + c), p.x + row * kDim + c, ok ? 16 : 0);
    }
    ring_fill<kStages>(load_step);

    // This thread's bias values (their latency hides behind the ring): layers 1 and 2 at columns
    // 32 warp + 8 j + q2, layer 3 (warps 0, 1) at 16 warp + 8 j + q2.
    const int n0 = warp * 32;
    float2 bias1[4], bias2[4], bias3[2];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = mlp * kDim + n0 + j * 8 + L.q2;
        bias1[j] = __ldg(reinterpret_cast<const float2*>(p.b1 + col));
        bias2[j] = __ldg(reinterpret_cast<const float2*>(p.b2 + col));
    }
    const int n3 = (warp & 1) * 16;
#pragma unroll
    for (int j = 0; j < 2; ++j)
        bias3[j] = __ldg(reinterpret_cast<const float2*>(p.b3 + mlp * kOut + n3 + j * 8 + L.q2));

    float acc[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    const uint32_t xa = smem_addr(x_s + L.a_row * kLdX + L.a_col);
    const uint32_t ha = smem_addr(h_s + L.a_row * kLdX + L.a_col);

#pragma unroll 1
    for (int s = 0; s < kSteps; ++s) {
        // At s = 8 the ring step's barrier also means every warp's layer-1 columns are in h_s
        // (and x_s is free); at s = 16 layer 2's are in x_s.
        ring_advance<kStages>(s, kSteps, load_step);
        const __half* slot = reinterpret_cast<const __half*>(heads_smem + (s % kStages) * kStageBytes);
        if (s < 2 * kLayerSteps) {
            // Layers 1, 2: acc += in[:, 32 ks..] W[n0.., 32 ks..]^T.
            const int ks = s % kLayerSteps;
            const uint32_t a_base = (s < kLayerSteps ? xa : ha) + ks * kKStep * 2;
            const uint32_t b_base = smem_addr(slot + (n0 + L.b_row) * kLdW + L.b_col);
#pragma unroll
            for (int kk = 0; kk < kKStep; kk += 16) mma_k16<4, kLdW>(acc, a_base + kk * 2, b_base + kk * 2);
            if (ks == kLayerSteps - 1) {
                // fp16(relu(acc + b)) into the next layer's input tile: layer 1 -> h_s, layer 2 ->
                // x_s (layer 2 reads only h_s, so the two never alias within a layer).
                __half* out = s < kLayerSteps ? h_s : x_s;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int col = n0 + j * 8 + L.q2;
                    const float2 b = s < kLayerSteps ? bias1[j] : bias2[j];
                    *reinterpret_cast<__half2*>(out + L.g * kLdX + col) = __floats2half2_rn(
                        fmaxf(acc[j][0] + b.x, 0.f), fmaxf(acc[j][1] + b.y, 0.f));
                    *reinterpret_cast<__half2*>(out + (L.g + 8) * kLdX + col) = __floats2half2_rn(
                        fmaxf(acc[j][2] + b.x, 0.f), fmaxf(acc[j][3] + b.y, 0.f));
                    acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
                }
            }
        } else if (warp < 2) {
            // Layer 3 (warps 0, 1: 16 output columns each, K 256 from the one slot).
            float acc3[2][4];
#pragma unroll
            for (int j = 0; j < 2; ++j) acc3[j][0] = acc3[j][1] = acc3[j][2] = acc3[j][3] = 0.f;
            const uint32_t b_base = smem_addr(slot + (n3 + L.b_row) * kLdW3 + L.b_col);
#pragma unroll
            for (int kk = 0; kk < kDim; kk += 16) mma_k16<2, kLdW3>(acc3, xa + kk * 2, b_base + kk * 2);
            const int r_lo = p0 + L.g, r_hi = r_lo + 8;
            __half* y = p.y + static_cast<size_t>(mlp) * p.stride * kOut;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int col = n3 + j * 8 + L.q2;
                if (r_lo < p.prompts)
                    *reinterpret_cast<__half2*>(y + static_cast<size_t>(r_lo) * kOut + col) =
                        __floats2half2_rn(acc3[j][0] + bias3[j].x, acc3[j][1] + bias3[j].y);
                if (r_hi < p.prompts)
                    *reinterpret_cast<__half2*>(y + static_cast<size_t>(r_hi) * kOut + col) =
                        __floats2half2_rn(acc3[j][2] + bias3[j].x, acc3[j][3] + bias3[j].y);
            }
        }
    }
}

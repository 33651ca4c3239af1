// The deterministic merge of a key-split attention, shared by the token->image attentions
// (sam_cross_attention.cu, sam_folded_t2i.cu): every chunk of a prompt's keys left its
// unnormalised fp32 output rows and, per row (and head), its running max m_c (log2 units) and
// sum l_c; the last CTA to arrive combines them in chunk order:
//     O = sum_c 2^(m_c - M) O_c / sum_c 2^(m_c - M) l_c,   M = max_c m_c.
#pragma once

namespace finesam {

// Called by every thread of a CTA after it stored its chunk's partials: publishes them (fence),
// counts the CTA's arrival on its prompt's counter and returns true in the last CTA to arrive
// (which then sees every chunk's partials; it must reset the counter to 0 after merging).
__device__ __forceinline__ bool arrive_last(unsigned int* counter, int chunks) {
    __shared__ bool is_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(counter, 1u) == static_cast<unsigned int>(chunks) - 1;
    __syncthreads();
    const bool last = is_last;
    if (last) __threadfence();
    return last;
}

// Four consecutive output values of one row: `parts` is chunk 0's partial block (chunk c at
// parts + c * part_floats), `value` the offset of the four values in a block, `stats` the offset
// of the row's (max, sum) pair. Loads bypass L1 (__ldcg): other CTAs wrote them.
__device__ __forceinline__ float4 merge_key_chunks(const float* parts, int chunks,
                                                   long long part_floats, int value, int stats) {
    float m = -INFINITY;
#pragma unroll 8
    for (int ch = 0; ch < chunks; ++ch) m = fmaxf(m, __ldcg(parts + ch * part_floats + stats));
    float total = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
    for (int ch = 0; ch < chunks; ++ch) {
        const float* part = parts + ch * part_floats;
        const float2 ms = __ldcg(reinterpret_cast<const float2*>(part + stats));
        const float4 a = __ldcg(reinterpret_cast<const float4*>(part + value));
        const float f = exp2f(ms.x - m);
        total += f * ms.y;
        acc.x += f * a.x;
        acc.y += f * a.y;
        acc.z += f * a.z;
        acc.w += f * a.w;
    }
    const float inv = 1.f / total;
    return make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
}

}  // namespace finesam

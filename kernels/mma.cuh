// Async-copy and fragment-load primitives shared by the tensor-core kernel files (gemm.cu,
// tinyvit.cu, sam_*.cu): shared-memory addresses, 16-byte cp.async with zero fill, ldmatrix
// (x4, x2, x4 transposed), lane offsets, a k16 MMA step and a cp.async ring step. The
// mma.sync.m16n8k16 wrapper itself lives in dense.cuh.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

#include "dense.cuh"

namespace finesam {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global->shared copy; src_bytes = 0 writes zeros without reading.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Two 8x8 matrices (addresses from lanes 0-15): the b0/b1 registers of one n8 tile.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// A lane's ldmatrix offsets for m16n8k16 tiles over row-major shared-memory rows (as gemm.cu):
// A x4 rows (lane & 15), k half (lane >> 4); B x4 (weights [n][k]) rows (lane & 7) + 8 (lane >>
// 4) (two n8 tiles), k half (lane >> 3) & 1; and the accumulator's row g and column pair q2.
struct Lanes {
    int a_row, a_col, b_row, b_col, g, q2;
    __device__ __forceinline__ Lanes() {
        const int lane = threadIdx.x & 31;
        a_row = lane & 15;
        a_col = (lane >> 4) * 8;
        b_row = (lane & 7) + ((lane >> 4) << 3);
        b_col = ((lane >> 3) & 1) * 8;
        g = lane >> 2;
        q2 = (lane & 3) * 2;
    }
};

// One k16 step of a warp's 16 x (8 NT) tile: A by ldmatrix.x4 at a_addr, B of n-tile pairs
// 2j, 2j + 1 by ldmatrix.x4 from weight rows LD halves apart (16 rows per pair) at b_addr.
template <int NT, int LD>
__device__ __forceinline__ void mma_k16(float (&acc)[NT][4], uint32_t a_addr, uint32_t b_addr) {
    uint32_t a[4];
    ldmatrix_x4(a, a_addr);
#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
        uint32_t b[4];
        ldmatrix_x4(b, b_addr + j * 16 * LD * 2);
        mma16816(acc[2 * j], a, b[0], b[1]);
        mma16816(acc[2 * j + 1], a, b[2], b[3]);
    }
}

// Fill a STAGES-deep cp.async ring: steps 0 .. STAGES - 2, one commit group each (copies issued
// before the call join step 0's group).
template <int STAGES, class LoadStep>
__device__ __forceinline__ void ring_fill(LoadStep&& load_step) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        load_step(s);
        cp_async_commit();
    }
}

// Start of step s of a STAGES-deep cp.async ring of `steps` steps: wait until step s has landed
// (this thread's copies; the barrier publishes everyone's and means every warp is done with
// step s - 1, whose slot the next copy reuses), then issue step s + STAGES - 1 and commit
// (always, possibly empty: keeps the group count exact).
template <int STAGES, class LoadStep>
__device__ __forceinline__ void ring_advance(int s, int steps, LoadStep&& load_step) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (s + STAGES - 1 < steps) load_step(s + STAGES - 1);
    cp_async_commit();
}

}  // namespace finesam

// Assignment kernels: minimum-cost rectangular assignment, D-FINE's matching cost, and an IoU
// tracker built on both. Everything stays on the device; no host synchronisation inside.
//
//   assign_solve      batched epsilon-scaling auction (Bertsekas), one block per matrix
//                     (assign_solve_512: a cluster of kSparseCluster blocks prepares a sparse
//                     matrix, then its blocks race epsilon schedules and the least-work one
//                     reports; see kRaceTheta).
//                     Reference op: scipy.optimize.linear_sum_assignment (same optimum; float
//                     costs within the bound in docs/ASSIGN.md, integer costs exactly). The CPU
//                     model src/assign/cpu.rs reproduces it round for round (same result).
//                     Matrices whose costs fit shared memory (and have no +inf) are solved by
//                     scipy's own algorithm instead, shortest augmenting paths in f64 (one warp;
//                     bit-identical to src/assign/oracle.rs): fewer dependent steps than the
//                     auction's phases for thin problems (300x10: 10 row scans, 300x100: ~120).
//                     Square matrices of sides 128..384 bid over each row's cheapest entries
//                     (kept in shared memory) and are checked exactly against the full matrix at
//                     the end (the sparse path; assign_solve_512, docs/ASSIGN.md).
//   matcher_cost      D-FINE HungarianMatcher cost (focal class cost, L1, -GIoU on cxcywh boxes,
//                     nan_to_num(nan=1.0)), written as ragged per-image matrices plus the
//                     problem descriptors assign_solve reads. Reference op: zoo/dfine/matcher.py.
//   matcher_mask_rows top-k (one-to-many) matching: forbids the queries matched in a round.
//   tracker_cost      1 - IoU between live tracks and detections, gated (+inf below the gate).
//   tracker_update    applies a solved frame: matched tracks follow their detection, unmatched
//                     ones age and die after max_age, unmatched detections open new ids.
//
// Numerics: the file is compiled with --use_fast_math. The solver quantises costs with explicit
// double-precision _rn intrinsics and runs on integers, so its result is bit-identical to the
// CPU model; subnormal costs are flushed to zero explicitly on both sides. The tracker's IoU
// uses _rn intrinsics (never contracted, IEEE division) so the CPU model matches it bit for
// bit. The matcher cost follows PyTorch's fp32 op order with IEEE-rounded operations and
// exp/log in double (see focal_pow); it is compared to PyTorch with a tolerance.
#include "common.cuh"

#include <cooperative_groups.h>

// Thread block clusters (sm_90 and newer): the sparse path's preparation runs on a cluster.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FINESAM_CLUSTERS 1
#endif

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr long long kNegInf = -9223372036854775807LL - 1;
constexpr long long kPosInf = 9223372036854775807LL;
constexpr long long kMaxIncrement = 1LL << 47;                 // packed bid keys: inc << 16 | id
// Prices are shifted to min 0 at a phase start only once one of them reached this (see the
// phases in solve_matrix). Solves from prices 0 stay far below it (scaled benefits are below
// kScaledRangeLimit); it keeps a sparse key's p * 512 and an empty slot's key far from 2^63.
constexpr long long kPriceShiftAt = 1LL << 48;
constexpr unsigned long long kScaledRangeLimit = 1ULL << 44;  // see docs/ASSIGN.md
constexpr int kMaxSide = 65534;
// SHORTEST_PATH_MAX_ENTRIES / SHORTEST_PATH_MAX_OBJECTS in src/assign/mod.rs (uses_shortest_path).
constexpr long long kSpMaxEntries = 32768;
constexpr int kSpMaxObjects = 1024;
// Sparse candidates (SPARSE_* in src/assign/mod.rs): square matrices of these sides keep up to
// kSparseSlots objects per person (the shared-memory region: 8 bytes per slot). Above 384 the
// region would need fewer slots, and with 16 the CPU model needs 2-9x the dense rounds.
constexpr int kSparseMinSide = 128;
constexpr int kSparseMaxSide = 384;
constexpr int kSparseSlots = 32;
// A person's kept keys (and their objects) lie kSparseStride apart: the one padding slot puts
// the rows of consecutive persons on different banks, so a thread per person (the first round)
// reads slot t of its row at a fixed offset without conflicts (32 apart, all rows of a warp
// would share a bank and the reads had to be rotated, an address computation per slot).
constexpr int kSparseStride = kSparseSlots + 1;
// An unused slot: below every real key even after a price is subtracted (real keys and prices
// stay within 2^58 in magnitude, see kScaledRangeLimit), low bits 511 (k = 0: the diagonal,
// a valid object to read a price for). Values below kEmptyValue can only come from it.
constexpr long long kEmptySlot = -(1LL << 62) + 511;
constexpr long long kEmptyValue = -(1LL << 52);
// Rounds the sparse path may take (SPARSE_ROUND_BUDGET_*): beyond them the solve restarts on
// the dense path (kept sets that barely contain a perfect matching make long price wars).
constexpr unsigned kSparseRoundsPerSide = 8;
constexpr unsigned kSparseRoundsBase = 2048;
// With the phase cut on, the first budget (SPARSE_CUT_ROUNDS_*); past it the sparse solve starts
// again with whole phases and the budget above on top (a person carried over a cut can start a
// price war at the next, finer epsilon).
constexpr unsigned kSparseCutRoundsPerSide = 2;
constexpr unsigned kSparseCutRoundsBase = 512;

// The sparse path's round budget for n persons, with or without the phase cut (before the
// configured cap; sparse_round_cap / sparse_cut_round_cap in src/assign/mod.rs).
__host__ __device__ constexpr unsigned sparse_round_budget(int n, bool cut) {
    return cut ? kSparseCutRoundsPerSide * n + kSparseCutRoundsBase : kSparseRoundsPerSide * n + kSparseRoundsBase;
}
// Sparse path: once at most kSmallBidders bidders are left, warp 0 runs the rest of the forward
// part alone (warp_forward: no block barriers). Most rounds of a sparse solve have 1-8 bidders.
// With 17-32 bidders a lane of warp 0 would scan a whole row alone (~3.2 us per round at
// 300x300, H100); the block's rounds, with 8 lanes per bidder, are faster.
constexpr int kSmallBidders = 16;
// Sparse path (SPARSE_PHASE_CUT): a phase other than the last ends once at most this many
// bidders are left; they bid again in the next phase's first round.
constexpr int kPhaseCut = 2;
// Blocks per matrix of assign_solve_512 (SPARSE_CLUSTER_BLOCKS in src/assign/mod.rs), one
// thread block cluster on sm_90 and newer. Pass 1 and the candidate selection of a sparse
// matrix run on all of them (~105 us on one SM at 300x300): each scans a slice of the rows,
// the partial ranges meet in distributed shared memory, and every warp of the cluster selects
// rows, writing the kept keys into block 0's shared memory (in a race into its own block's,
// and each block then pulls the rows the others selected). Then the others exit and block 0
// runs the auction alone, or all race (below). Without cluster support (older cards) block 0
// does it all.
constexpr int kSparseCluster = 8;
// The race (RACE_VARIANTS in src/assign/mod.rs, params.race): after the preparation every
// block of the cluster solves the sparse matrix with its own schedule, block k >= 1 with factor
// kRaceTheta[k - 1] from range / (theta * kRaceDivisor[k - 1]), phases before the last cut at
// kRaceCut[k - 1] bidders (block 0: params.theta from range / theta, cut at kPhaseCut). The
// result is the finished variant with the least work (rounds weighted by their kind, kWork*;
// ties to the lower block); a block stops once its work exceeds a finished one's (race_key).
__constant__ unsigned kRaceTheta[kSparseCluster - 1] = {7, 6, 5, 5, 5, 5, 6};
__constant__ unsigned kRaceDivisor[kSparseCluster - 1] = {32, 64, 8, 64, 16, 32, 32};
__constant__ int kRaceCut[kSparseCluster - 1] = {12, 8, 6, 16, 16, 16, 12};  // <= kSmallBidders
// RACE_WORK_* in src/assign/mod.rs, in units of a chain step (~0.38 us at 300x300, H100): a
// round that scans every person (a phase's first round, a round after the sparse check, a
// reverse part's first one), a block-wide round, sparse rounds in warp 0 by bidders, a step of
// a lone bidder's chain.
constexpr unsigned kWorkFullRound = 11;
constexpr unsigned kWorkBlockRound = 5;
constexpr unsigned kWorkWarpRound4 = 2;   // 2..4 bidders (8 lanes each)
constexpr unsigned kWorkWarpRound8 = 3;   // 5..8 (4 lanes)
constexpr unsigned kWorkWarpRound16 = 5;  // 9..kSmallBidders (2 lanes)
constexpr unsigned kWorkChainStep = 1;

enum Algorithm : uint32_t { kAuction = 0, kShortestPath = 1, kSparseAuction = 2 };

enum Status : uint32_t {
    kOptimal = 0,
    kInfeasible = 1,
    kInvalidCost = 2,
    kIterationLimit = 3,
    kTooLarge = 4,
    kOverflow = 5,
    kAborted = 6,  // a race variant that cannot win stopped (never reported)
};

}  // namespace

// Layouts shared with src/assign/solver.rs (repr(C) mirrors).
struct AssignProblem {
    unsigned long long cost_offset;     // elements into `costs`
    unsigned long long scratch_offset;  // elements into `scratch` (needs rows * cols)
    uint32_t rows, cols, ld;            // ld: row stride of the cost, in elements
    uint32_t row_offset;                // into row_to_col
    uint32_t col_offset;                // into col_to_row
    uint32_t pad;
};

// Used when `problems` is null: `count` equal matrices `stride` elements apart.
struct AssignUniform {
    uint32_t count, rows, cols, ld;
    unsigned long long stride;
};

struct AssignParams {
    uint32_t theta;       // epsilon reduction factor
    uint32_t levels;      // quantisation levels K for float costs
    uint32_t max_rounds;  // round cap per matrix
    uint32_t capacity;    // objects the dynamic shared memory was sized for
    uint32_t q_capacity;  // quantised costs the shared memory holds after the state (0: none)
    uint32_t cache_width;    // bid candidates per person after the state when q is global (0: none)
    uint32_t cache_persons;  // persons the candidate cache was sized for
    uint32_t shortest_path;  // 1: solve matrices whose costs fit shared memory by shortest paths
    uint32_t sparse_persons; // sparse candidates for square matrices up to this side (0: off)
    uint32_t race;           // 1: a sparse matrix's cluster races the epsilon schedules (kRaceTheta)
};

struct AssignInfo {
    double total;     // sum of the assigned original costs
    double quantum;   // 1/S (0 = exact integer mode)
    uint32_t status;  // Status
    uint32_t rounds;
    uint32_t phases;
    uint32_t unassigned;  // smaller-side members left on forbidden pairs
    // Diagnostics (thread 0's clock64 between stage marks, see ProfStage), then the kernel's
    // globaltimer ns.
    uint32_t cycles[10];
    uint32_t ns;
    uint32_t algorithm;  // Algorithm
    uint32_t variant;    // the race variant (block) whose result this is
    uint32_t pad;
};

namespace {

__device__ __forceinline__ float flush_subnormal(float c) {
    return fabsf(c) < 1.17549435e-38f ? 0.0f : c;
}

// Deterministic block reduction (fixed shuffle pattern on both levels). Every thread of the
// block must call it; `red` holds >= 32 entries; `identity` is op's neutral value. The second
// level is a shuffle over the warp totals in every warp (5 steps, not nwarps dependent loads).
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* red, T identity) {
    for (int off = 16; off; off >>= 1) v = op(v, __shfl_xor_sync(kFull, v, off));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    T r = lane < nwarps ? red[lane] : identity;
    for (int off = 16; off; off >>= 1) r = op(r, __shfl_xor_sync(kFull, r, off));
    return r;
}

struct MinLL {
    __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
};
struct AddD {
    __device__ double operator()(double a, double b) const { return a + b; }
};

// Best value, its scan position, and the second-best value (kNegInf when absent).
struct Top2 {
    long long v1, v2;
    int k1;
};

__device__ __forceinline__ void top2_insert(Top2& t, long long v, int k) {
    if (v > t.v1) {
        t.v2 = t.v1;
        t.v1 = v;
        t.k1 = k;
    } else if (v > t.v2) {
        t.v2 = v;
    }
}

// Merges the top-2 of lanes `off` apart; ties on the best value go to the smaller scan
// position, exactly like a sequential scan that keeps the first maximum (the CPU model).
__device__ __forceinline__ Top2 top2_merge(Top2 t, int off) {
    const long long o1 = __shfl_xor_sync(kFull, t.v1, off);
    const long long o2 = __shfl_xor_sync(kFull, t.v2, off);
    const int ok = __shfl_xor_sync(kFull, t.k1, off);
    if (o1 > t.v1 || (o1 == t.v1 && ok < t.k1)) {
        t.v2 = max(t.v1, o2);
        t.v1 = o1;
        t.k1 = ok;
    } else {
        t.v2 = max(t.v2, o1);
    }
    return t;
}

// Warp-wide top-2 (every lane gets the result).
__device__ __forceinline__ Top2 warp_top2(Top2 t) {
#pragma unroll
    for (int off = 16; off; off >>= 1) t = top2_merge(t, off);
    return t;
}

struct Scaling {
    double scale;
    double quantum;
    float cmin;
    int pad;
    long long levels;
    long long mult;
    long long big;
    long long range;  // scaled range of the benefits: the first epsilon is a fraction of it
};

__device__ __forceinline__ int quantize(float c, const Scaling& s) {
    c = flush_subnormal(c);
    if (c == INFINITY) return -1;
    const double d = __dmul_rn(__dsub_rn(static_cast<double>(c), static_cast<double>(s.cmin)), s.scale);
    const long long q = __double2ll_rn(d);
    return static_cast<int>(min(max(q, 0LL), s.levels));
}

// The same shared-memory address in block `rank` of this thread block cluster (this block's own
// address without clusters), and a barrier over the cluster with release/acquire semantics
// (shared and global memory), a no-op without clusters.
template <typename T>
__device__ __forceinline__ T* cluster_block(T* p, int rank) {
#ifdef FINESAM_CLUSTERS
    return cooperative_groups::this_cluster().map_shared_rank(p, static_cast<unsigned>(rank));
#else
    (void)rank;
    return p;
#endif
}

__device__ __forceinline__ void cluster_sync() {
#ifdef FINESAM_CLUSTERS
    cooperative_groups::this_cluster().sync();
#endif
}

// Where the sparse selection writes (kept keys, floors, dense flags, coverage marks): with
// cluster preparation and no race into block 0's shared memory (block 0 then solves alone),
// else into this block's (in a race each block then pulls the rows the others selected; pushing
// every row into all eight blocks cost ~9 us more at 300x300, and seven blocks copying block 0's
// afterwards ~16 us: all read one SM). `p` is this block's address of the item.
struct SelectionWrites {
    bool to_block0;
    template <typename T>
    __device__ __forceinline__ void put(T* p, T v) const {
        *(to_block0 ? cluster_block(p, 0) : p) = v;
    }
};

// The auction state in shared memory plus the quantised costs (persons x objects, global).
struct Auction {
    const int* q;  // written earlier in the kernel by this block or (sparse selection) its cluster,
                   // before a block or cluster barrier: plain (coherent) loads only
    int n, m;
    long long mult, big;
    long long* price;          // [m]
    unsigned long long* slot;  // [m] forward: best bid per object; reverse: best offer per person
    long long* aux;            // [m] forward: profit after winning; reverse: offered price
    long long* profit;         // [n]
    int* owner;                // [m] person holding the object, -1
    int* object;               // [n] object held by the person, -1
    int* target;               // [m] forward: object bid for; reverse: person offered to
    int* list0;                // [m] bidders of even rounds
    int* list1;                // [m] bidders of odd rounds
    int* counts;               // [3] list sizes, rotating
    int* overflow;             // set when a bid leaves the packed range
    int* price_high;           // set when a price reaches kPriceShiftAt (set_price)
    // Bid candidates (forward part only, when q is in global memory): person i's full scan
    // keeps cw candidates (the best object of each group of 32 / cw lanes) and a bound every
    // other object's value was <= at that scan. See bid_scan.
    int cw;                    // candidates per person, 0 = no cache
    long long* cand_benefit;   // [n][cw] a_ij of the candidate, j = cand_object
    int* cand_object;          // [n][cw] -1 = none
    long long* cand_bound;     // [n]
    // Sparse candidates (square matrices of kSparseMinSide..kSparseMaxSide, no +inf; see
    // select_candidates): person i bids over its kept objects only, until the final check
    // finds an object outside them that it prefers (then the row turns dense: full scans).
    int slots;                     // kSparseSlots, 0 = dense path
    long long* sparse_key;         // [n][kSparseStride] a_ij * 512 + (511 - k), k = (j - i) mod m; kEmptySlot
    unsigned short* sparse_obj;    // [n][kSparseStride] the slot's object j (kEmptySlot: i)
    int* sparse_floor;             // [n] every object not kept has q_ij >= sparse_floor[i]
    int* dense;                    // [n] 1: the row is scanned in full (after a failed check)
    int* any_dense;                // whether any row is dense (warp rounds skip the test otherwise)

    // mult = n + 1 <= 65535 and 0 <= qv < 2^31: both operands are sign-extended 32-bit values,
    // so the product is one 32x32->64 multiply (IMAD.WIDE) instead of a 64x64 one per entry.
    __device__ __forceinline__ long long benefit(int qv) const {
        return qv < 0 ? -big : -(static_cast<long long>(qv) * static_cast<long long>(static_cast<int>(mult)));
    }
    __device__ __forceinline__ int* list(unsigned r) const { return (r & 1) ? list1 : list0; }
    // Every price change of a solve goes through here (the phase's shift and the resets aside).
    __device__ __forceinline__ void set_price(int j, long long p) const {
        price[j] = p;
        if (p >= kPriceShiftAt) atomicOr(price_high, 1);  // winners of one round may set it together
    }
    // Person i takes object j at price p with profit v; `old`, j's owner until now as the caller
    // read it (-1: none), loses it. The winner's update of every forward step.
    __device__ __forceinline__ void take(int i, int j, long long p, long long v, int old) const {
        set_price(j, p);
        owner[j] = i;
        object[i] = j;
        profit[i] = v;
        if (old >= 0) object[old] = -1;
    }
    // Object at rotated position k of person i's scan: (i + k) mod m, for 0 <= k < m.
    __device__ __forceinline__ int object_at(int i, int k) const { return i + k >= m ? i + k - m : i + k; }
    __device__ __forceinline__ bool sparse_row(int i) const { return slots != 0 && dense[i] == 0; }
};

// Stage profile: thread 0 adds the clock64 cycles since its last mark to prof[k]
// (prof[kProfStages]: the last mark, prof[kProfStages + 1]: globaltimer at entry). Only
// thread 0 touches prof. Stages: pass 1 (scan), pass 2 (quantise) and the state's
// initialisation, the sparse selection, phase bookkeeping (price shift when due, lambda),
// forward first rounds, block-wide forward rounds, warp 0's rounds (sparse path), single-bidder
// chains, reverse part or the sparse check, final sum (SolveProfile in src/assign/solver.rs).
enum ProfStage {
    kProfScan = 0,
    kProfQuantise = 1,
    kProfSelect = 2,
    kProfPhase = 3,
    kProfForwardFirst = 4,
    kProfForward = 5,
    kProfSmall = 6,
    kProfChain = 7,
    kProfReverse = 8,
    kProfFinish = 9,
    kProfStages = 10
};

__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ void prof_mark(unsigned long long* prof, int k) {
    if (threadIdx.x == 0) {
        const unsigned long long t = clock64();
        prof[k] += t - prof[kProfStages];
        prof[kProfStages] = t;
    }
}

// Loads issued together per lane before any is used by a scan: the scan's latency is then one
// memory round trip per kScanBatch * 32 entries (6: 300 objects in two trips, and no spills at
// the 64 registers of 1024-thread blocks).
constexpr int kScanBatch = 6;

// This lane's top-2 over the entries x = (start + k) mod count, k = lane, lane + 32, ...,
// inserted in increasing scan position k (the order of the CPU model's sequential scan), with
// value(x) loaded kScanBatch at a time.
template <typename Value>
__device__ __forceinline__ Top2 lane_top2(int count, int start, int lane, Value value) {
    Top2 t{kNegInf, kNegInf, 0x7fffffff};
    for (int k0 = lane; k0 < count; k0 += 32 * kScanBatch) {
        long long v[kScanBatch];
#pragma unroll
        for (int u = 0; u < kScanBatch; ++u) {
            const int k = k0 + 32 * u;
            if (k < count) {
                int x = start + k;
                if (x >= count) x -= count;
                v[u] = value(x);
            }
        }
#pragma unroll
        for (int u = 0; u < kScanBatch; ++u)
            if (k0 + 32 * u < count) top2_insert(t, v[u], k0 + 32 * u);
    }
    return t;
}

// Person i's best and second-best object value, scanning objects from i on (rotation spreads
// ties); with a candidate cache it also refreshes i's candidates. Warp-collective.
__device__ __forceinline__ Top2 scan_person(const Auction& A, int i, int lane) {
    const int* row = A.q + static_cast<size_t>(i) * A.m;
    Top2 t = lane_top2(A.m, i, lane, [&](int j) { return A.benefit(row[j]) - A.price[j]; });
    if (A.cw != 0) {
        // The first merge steps leave each group of 32 / cw lanes with its own top-2.
        for (int off = 16; off >= A.cw; off >>= 1) t = top2_merge(t, off);
        long long bound = t.v2;
        for (int off = 16; off; off >>= 1) bound = max(bound, __shfl_xor_sync(kFull, bound, off));
        if (lane < A.cw) {
            const int c = i * A.cw + lane;
            int j = -1;
            if (t.v1 != kNegInf) {
                j = A.object_at(i, t.k1);
                A.cand_benefit[c] = t.v1 + A.price[j];
            }
            A.cand_object[c] = j;
        }
        if (lane == 0) A.cand_bound[i] = bound;
        // Lanes of one group now hold the same top-2: merging two of them again would count
        // its best twice (v2 = v1). Only the merges across groups remain.
        for (int off = A.cw >> 1; off; off >>= 1) t = top2_merge(t, off);
        return t;
    }
    return warp_top2(t);
}

// Person i's bid scan with the same result as scan_person, from the candidates kept by i's
// last full scan when they decide it. Within the forward part of a phase prices only rise, so
// every value only falls: each object outside the candidates is still <= bound. If the best two
// candidate values c1 >= c2 satisfy c2 >= bound and c1 > bound, no other object can be the
// best, tie with it, or exceed the second: (v1, v2, k1) are exactly the full scan's. Otherwise
// the full scan runs (and refreshes the candidates). Warp-collective.
__device__ __forceinline__ Top2 bid_scan(const Auction& A, int i, int lane) {
    if (A.cw != 0) {
        Top2 t{kNegInf, kNegInf, 0x7fffffff};
        if (lane < A.cw) {
            const int c = i * A.cw + lane;
            const int j = A.cand_object[c];
            if (j >= 0) {
                t.v1 = A.cand_benefit[c] - A.price[j];
                t.k1 = j >= i ? j - i : j - i + A.m;
            }
        }
        t = warp_top2(t);
        const long long bound = A.cand_bound[i];
        if (t.v2 >= bound && t.v1 > bound) return t;
    }
    return scan_person(A, i, lane);
}

// Top-2 of packed keys (value << 9 | position): insert one key, merge two pairs.
__device__ __forceinline__ void top2_key_insert(long long& k1, long long& k2, long long x) {
    const bool above = x > k1;  // one 64-bit comparison for both the min and the max
    k2 = max(k2, above ? k1 : x);
    k1 = above ? x : k1;
}
__device__ __forceinline__ void top2_key_merge(long long& k1, long long& k2, long long o1, long long o2) {
    k2 = max(max(k2, o2), min(k1, o1));
    k1 = max(k1, o1);
}

// One key per lane: k1 becomes the warp's best key and k2 the best key of the other lanes, each
// by two 32-bit max reductions (REDUX) on the order-preserving unsigned image of the key; a
// shorter dependent chain than five shuffle merge steps. Real keys differ in their low bits (the
// position), so exactly one lane holds the best: at least the diagonal is kept, and every real
// key is above an empty slot's. Returns whether this lane holds it. Warp-collective.
__device__ __forceinline__ bool warp_top2_keys(long long& k1, long long& k2) {
    constexpr unsigned long long kSign = 1ULL << 63;
    const unsigned long long u = static_cast<unsigned long long>(k1) ^ kSign;
    const unsigned hi = static_cast<unsigned>(u >> 32), lo = static_cast<unsigned>(u);
    const unsigned h1 = __reduce_max_sync(kFull, hi);
    const unsigned l1 = __reduce_max_sync(kFull, hi == h1 ? lo : 0u);
    const bool best = hi == h1 && lo == l1;
    const unsigned h2 = __reduce_max_sync(kFull, best ? 0u : hi);
    const unsigned l2 = __reduce_max_sync(kFull, !best && hi == h2 ? lo : 0u);
    k1 = static_cast<long long>(((static_cast<unsigned long long>(h1) << 32) | l1) ^ kSign);
    k2 = static_cast<long long>(((static_cast<unsigned long long>(h2) << 32) | l2) ^ kSign);
    return best;
}

// The top-2 of a sparse row from its two largest keys (an empty slot's value is -inf).
__device__ __forceinline__ Top2 keys_top2(long long k1, long long k2) {
    const long long v1 = k1 >> 9, v2 = k2 >> 9;
    return Top2{v1 < kEmptyValue ? kNegInf : v1, v2 < kEmptyValue ? kNegInf : v2, 511 - static_cast<int>(k1 & 511)};
}

// Person i's top-2 over its kept objects (a sparse row), computed by a group of G lanes: the
// aligned run of G lanes containing this one, `sub` = its index in the run (G = 1: one thread
// alone). A slot holds the key a_ij * 512 + (511 - k) with k = (j - i) mod m the rotated
// position, so the object's value as a key is key - p_j * 512, the best is the largest key (ties
// to the smaller k, as a full scan breaks them), and the second-largest key carries the second
// value. Lane sub reads the slots sub, sub + G, ... at fixed offsets from its row (the padded
// stride keeps them conflict-free), with the object of each slot from sparse_obj, then the group
// merges. The top-2 does not depend on the order of the slots, so every G gives the same result.
// A slot costs its two loads, its price load and ~19 instructions (was ~30 with rotated reads
// and the object derived from the key; 300x300 on H100: first rounds 46 -> 34 us, block rounds
// 126 -> 114 us); nothing else happens per slot (a test of each slot against the held object had
// kept the compiler from issuing a batch's price loads together).
// Group-collective (G > 1: every lane of the warp calls it).
template <int G>
__device__ __forceinline__ Top2 group_top2(const Auction& A, int i, int sub) {
    constexpr int kPer = kSparseSlots / G;                       // slots per lane
    constexpr int kBatch = kPer < 8 ? kPer : 8;                  // loads in flight per lane
    constexpr int kAcc = kPer >= 8 ? 4 : (kPer >= 2 ? 2 : 1);    // independent insert chains
    const long long* keys = A.sparse_key + i * kSparseStride + sub;
    const unsigned short* objs = A.sparse_obj + i * kSparseStride + sub;
    // Per chain: the largest and second-largest key (at the current prices).
    long long k1[kAcc], k2[kAcc];
#pragma unroll
    for (int a = 0; a < kAcc; ++a) k1[a] = k2[a] = kEmptySlot - (1LL << 61);
#pragma unroll
    for (int t0 = 0; t0 < kPer; t0 += kBatch) {
        long long key[kBatch], price[kBatch];
        int obj[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
            key[u] = keys[G * (t0 + u)];
            obj[u] = objs[G * (t0 + u)];
        }
        // Every price load of the batch in flight at once (an empty slot reads p_i), scaled to
        // key units as loaded: with the multiply in the insert loop the 512-thread kernel
        // spilled 24 bytes at its 128 registers; this way it spills none.
#pragma unroll
        for (int u = 0; u < kBatch; ++u) price[u] = A.price[obj[u]] * 512;
#pragma unroll
        for (int u = 0; u < kBatch; ++u) top2_key_insert(k1[u % kAcc], k2[u % kAcc], key[u] - price[u]);
    }
#pragma unroll
    for (int a = 1; a < kAcc; ++a) top2_key_merge(k1[0], k2[0], k1[a], k2[a]);
    if constexpr (G == 32) {
        warp_top2_keys(k1[0], k2[0]);
    } else {
#pragma unroll
        for (int off = G >> 1; off; off >>= 1) {
            const long long o1 = __shfl_xor_sync(kFull, k1[0], off);
            const long long o2 = __shfl_xor_sync(kFull, k2[0], off);
            top2_key_merge(k1[0], k2[0], o1, o2);
        }
    }
    return keys_top2(k1[0], k2[0]);
}

// A bid's scan: over the kept objects of a sparse row, else bid_scan. Warp-collective.
__device__ __forceinline__ Top2 bid_values(const Auction& A, int i, int lane) {
    return A.sparse_row(i) ? group_top2<32>(A, i, lane) : bid_scan(A, i, lane);
}

__device__ __forceinline__ unsigned long long select_key(int qv, int k) {
    return (static_cast<unsigned long long>(static_cast<unsigned>(qv)) << 16) | static_cast<unsigned>(k);
}

// Chooses the objects person i keeps (sparse path), from its quantised row in A.q. Entries are
// ordered by key (q_ij, k) with k = (j - i) mod m the rotated position; lane l holds the positions
// k = l (mod 32). T_r is the r-th smallest of the 32 lane minima: at least r entries are <= T_r,
// so the entries <= T_r include the row's r cheapest. Kept: every entry <= T_r plus the diagonal
// j = i (k = 0, so the kept objects always contain a perfect matching and the sparse auction
// terminates), for the largest r <= 16 whose set fits the 32 slots (r = 1 always fits: the
// minimum and the diagonal). A row so keeps at least its 16 cheapest entries unless they crowd
// into few lanes. Each kept object other than the diagonal is marked in `covered`.
// src/assign/cpu.rs (select_kept) applies the same rule. The selection also quantises the row
// (the dense path's pass 2): it reads the f32 costs (row stride ld), writes q to the scratch row
// (the final check and dense rows scan it) and keeps it in registers, and counts the row in
// *tied_rows when its minimum occurs more than once. Warp-collective; L = entries per lane
// (m <= 32 L).
template <int L>
__device__ void select_candidates(const Auction& A, int i, int lane, const float* cost, size_t ld, const Scaling& s,
                                  int* q, const SelectionWrites& out, int* tied_rows) {
    const int m = A.m, slots = kSparseSlots;
    int* row = q + static_cast<size_t>(i) * m;
    const float* crow = cost + static_cast<size_t>(i) * ld;
    float cf[L];
#pragma unroll
    for (int u = 0; u < L; ++u) {
        const int k = lane + 32 * u;
        const int j = A.object_at(i, k);
        cf[u] = k < m ? crow[j] : 0.0f;
    }
    int cache[L];
#pragma unroll
    for (int u = 0; u < L; ++u) {
        const int k = lane + 32 * u;
        const int j = A.object_at(i, k);
        cache[u] = 0x7fffffff;
        if (k < m) {
            cache[u] = quantize(cf[u], s);
            row[j] = cache[u];
        }
    }
    int bq = 0x7fffffff, bk = lane;
#pragma unroll
    for (int u = 0; u < L; ++u) {
        const int qu = cache[u];
        if (qu < bq) {
            bq = qu;
            bk = lane + 32 * u;
        }
    }
    // Bitonic sort of the lane minima, ascending across the warp.
    unsigned long long key = select_key(bq, bk);
#pragma unroll
    for (int size = 2; size <= 32; size <<= 1)
#pragma unroll
        for (int stride = size >> 1; stride; stride >>= 1) {
            const unsigned long long other = __shfl_xor_sync(kFull, key, stride);
            const bool ascending = (lane & size) == 0 || size == 32;
            const bool lower = (lane & stride) == 0;
            key = (lower == ascending) ? min(key, other) : max(key, other);
        }
    // Whether the row's minimum occurs more than once (row_ties_at_minimum in the CPU model).
    const int qmin = static_cast<int>(__shfl_sync(kFull, key, 0) >> 16);
    int at_min = 0;
#pragma unroll
    for (int u = 0; u < L; ++u) at_min += lane + 32 * u < m && cache[u] == qmin;
    if (static_cast<int>(__reduce_add_sync(kFull, at_min)) >= 2 && lane == 0) atomicAdd(tied_rows, 1);
    auto count_kept = [&](unsigned long long T) {
        int c = 0;
#pragma unroll
        for (int u = 0; u < L; ++u) {
            const int k = lane + 32 * u;
            c += k < m && (k == 0 || select_key(cache[u], k) <= T);
        }
        return c;
    };
    const int rmax = slots >> 1;
    unsigned long long T = __shfl_sync(kFull, key, rmax - 1);
    int mine = count_kept(T);
    if (static_cast<int>(__reduce_add_sync(kFull, mine)) > slots) {
        // The kept count grows with r: binary search for the largest r that fits.
        int lo = 1, hi = rmax - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            const unsigned long long Tm = __shfl_sync(kFull, key, mid - 1);
            if (static_cast<int>(__reduce_add_sync(kFull, count_kept(Tm))) <= slots) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        T = __shfl_sync(kFull, key, lo - 1);
        mine = count_kept(T);
    }
    int incl = mine;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const int v = __shfl_up_sync(kFull, incl, off);
        if (lane >= off) incl += v;
    }
    const int total = __shfl_sync(kFull, incl, 31);
    int pos = i * kSparseStride + incl - mine;
#pragma unroll
    for (int u = 0; u < L; ++u) {
        const int k = lane + 32 * u;
        const int qu = cache[u];
        if (k < m && (k == 0 || select_key(qu, k) <= T)) {
            const int j = A.object_at(i, k);
            out.put(A.sparse_key + pos, A.benefit(qu) * 512 + (511 - k));
            if (k != 0) out.put(A.target + j, 1);
            ++pos;
        }
    }
    for (int s = total + lane; s < slots; s += 32) out.put(A.sparse_key + i * kSparseStride + s, kEmptySlot);
    if (lane == 0) {
        out.put(A.sparse_floor + i, static_cast<int>(T >> 16));
        out.put(A.dense + i, 0);
    }
}

// Object j's best and second-best person for a reverse bid (value a_ij - profit_i), scanning
// persons from j mod n on. Warp-collective.
__device__ __forceinline__ Top2 scan_object(const Auction& A, int j, int lane) {
    const Top2 t = lane_top2(A.n, j % A.n, lane, [&](int i) {
        return A.benefit(A.q[static_cast<size_t>(i) * A.m + j]) - A.profit[i];
    });
    return warp_top2(t);
}

// A forward bid's price increment over the best object's price: v1 - v2 + eps (v2 = v1 when
// the person has a single object). Leaves the bidder's profit at v1 - inc = v2 - eps.
__device__ __forceinline__ long long bid_increment(const Top2& t, long long eps) {
    return t.v1 - (t.v2 == kNegInf ? t.v1 : t.v2) + eps;
}

// Lane 0: person i bids for object j at price + (v1 - v2 + eps).
__device__ __forceinline__ void place_bid(const Auction& A, int i, int j, const Top2& t, long long eps) {
    const long long inc = bid_increment(t, eps);
    if (inc >= kMaxIncrement) {
        *A.overflow = 1;
        return;
    }
    A.target[i] = j;
    A.aux[i] = t.v1 - inc;
    atomicMax(&A.slot[j], (static_cast<unsigned long long>(inc) << 16) | static_cast<unsigned long long>(i + 1));
}

// Reverse step of unassigned object j (warp-collective): lower its price to lambda when no
// person wants it by more than eps, else offer it to the best person at the price that keeps
// every other person eps-satisfied. Returns whether it made an offer.
__device__ __forceinline__ bool reverse_bid(const Auction& A, int j, long long lambda, long long eps, int lane) {
    const Top2 t = scan_object(A, j, lane);
    if (t.v1 - eps <= lambda) {
        if (lane == 0) {
            A.set_price(j, lambda);
            A.target[j] = -1;
        }
        return false;
    }
    if (lane == 0) {
        int i = j % A.n + t.k1;
        if (i >= A.n) i -= A.n;
        const long long offered = t.v2 == kNegInf ? lambda : max(lambda, t.v2 - eps);
        const long long delta = t.v1 - offered;
        if (delta >= kMaxIncrement) {
            *A.overflow = 1;
        } else {
            A.target[j] = i;
            A.aux[j] = offered;
            atomicMax(&A.slot[i], (static_cast<unsigned long long>(delta) << 16) | static_cast<unsigned long long>(j + 1));
        }
    }
    return true;
}

__device__ __forceinline__ unsigned long long load_key(const unsigned long long* p) {
    return *reinterpret_cast<const volatile unsigned long long*>(p);
}

__device__ __forceinline__ long long next_epsilon(long long eps, unsigned theta, unsigned forward_rounds) {
    const long long step = forward_rounds <= 2 ? static_cast<long long>(theta) * theta : theta;
    const long long e = eps / step;
    return e < 1 ? 1 : e;
}

// Appends `value` of every lane with `push` to `list` (one atomic per warp on *count; the order
// of a list does not matter: a round's bids all see the same prices). Warp-collective.
__device__ __forceinline__ void warp_append(int* list, int* count, bool push, int value, int lane) {
    const unsigned pushed = __ballot_sync(kFull, push);
    int base = 0;
    if (lane == 0 && pushed != 0) base = atomicAdd(count, __popc(pushed));
    base = __shfl_sync(kFull, base, 0);
    if (push) list[base + __popc(pushed & ((1u << lane) - 1))] = value;
}

// Whether a block's forward rounds stop, read after a barrier: kOverflow when a bid left the
// packed range, kAborted when the race beat this block, else kOptimal.
__device__ __forceinline__ uint32_t rounds_stopped(const Auction& A, const int* race_stop) {
    if (*reinterpret_cast<const volatile int*>(A.overflow)) return kOverflow;
    if (*reinterpret_cast<const volatile int*>(race_stop)) return kAborted;
    return kOptimal;
}

// Forward resolve of one bid: the highest key on each object wins it. Returns the person who
// bids next round (the loser itself, or the owner the winner displaced), or -1. The slot is read
// and cleared with atomics: a loser that reads after its winner cleared the slot sees 0, which
// also says "lost", so no barrier has to separate the readers from the clearing.
__device__ __forceinline__ int resolve_bid(const Auction& A, const int* cur, int e) {
    const int i = cur[e];
    const int j = A.target[i];
    const unsigned long long key = atomicCAS(&A.slot[j], 0ULL, 0ULL);  // an atomic read
    if (static_cast<int>(key & 0xFFFF) != i + 1) return i;
    const int old = A.owner[j];
    A.take(i, j, A.price[j] + static_cast<long long>(key >> 16), A.aux[i], old);
    atomicExch(&A.slot[j], 0ULL);
    return old;
}

// Resolves forward round r: losers and displaced owners form the next round's list.
// Block-collective, ends with a barrier; returns the next list's size.
__device__ int resolve_forward(const Auction& A, unsigned r) {
    const int cnt = A.counts[r % 3];
    const int* cur = A.list(r);
    int* nxt = A.list(r + 1);
    int* nxt_count = &A.counts[(r + 1) % 3];
    if (threadIdx.x == 0) A.counts[(r + 2) % 3] = 0;
    for (int e0 = 0; e0 < cnt; e0 += blockDim.x) {
        const int e = e0 + threadIdx.x;
        const int next = e < cnt ? resolve_bid(A, cur, e) : -1;
        warp_append(nxt, nxt_count, next >= 0, next, threadIdx.x & 31);
    }
    __syncthreads();
    return *reinterpret_cast<volatile int*>(nxt_count);
}

// Resolves reverse round r: each person accepts its best offer, releasing its old object
// (which joins the next list when priced above lambda); refused objects retry.
__device__ int resolve_reverse(const Auction& A, unsigned r, long long lambda) {
    const int cnt = A.counts[r % 3];
    const int* cur = A.list(r);
    int* nxt = A.list(r + 1);
    int* nxt_count = &A.counts[(r + 1) % 3];
    if (threadIdx.x == 0) A.counts[(r + 2) % 3] = 0;
    // Losers are marked (target -2) before any winner clears a slot (a barrier apart).
    for (int e = threadIdx.x; e < cnt; e += blockDim.x) {
        const int j = cur[e];
        const int i = A.target[j];
        if (i >= 0 && static_cast<int>(load_key(&A.slot[i]) & 0xFFFF) != j + 1) A.target[j] = -2;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < cnt; e += blockDim.x) {
        const int j = cur[e];
        const int i = A.target[j];
        if (i == -1) continue;  // lowered its price to lambda this round: done
        if (i >= 0) {
            const unsigned long long key = load_key(&A.slot[i]);
            const int k = A.object[i];
            A.set_price(j, A.aux[j]);
            A.owner[j] = i;
            A.object[i] = j;
            A.profit[i] += static_cast<long long>(key >> 16);
            A.owner[k] = -1;
            A.slot[i] = 0;
            if (A.price[k] > lambda) nxt[atomicAdd(nxt_count, 1)] = k;
        } else {
            nxt[atomicAdd(nxt_count, 1)] = j;
        }
    }
    __syncthreads();
    return *reinterpret_cast<volatile int*>(nxt_count);
}

// Race keys travel between running blocks (a finisher writes its key into every block's slot,
// the others poll their slots), so both sides are atomic in the memory model: plain accesses are
// data races to racecheck. The write names the shared::cluster state space explicitly (mapa +
// atom): a 64-bit atomicMin through a map_shared_rank (generic) address lost updates on H100.
// The poll is a relaxed cluster-scope load: an atomicOr(0) compiled to a generic atomic and a
// CAS loop on shared memory, and the polls cost ~8 us per 300x300 solve (chains 67 -> 61k cycles).
__device__ __forceinline__ void race_key_put(unsigned long long* slot, int rank, unsigned long long key) {
#ifdef FINESAM_CLUSTERS
    const unsigned local = static_cast<unsigned>(__cvta_generic_to_shared(slot));
    unsigned remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    unsigned long long old;
    asm volatile("atom.shared::cluster.exch.b64 %0, [%1], %2;" : "=l"(old) : "r"(remote), "l"(key) : "memory");
#else
    *slot = key;
#endif
}
__device__ __forceinline__ unsigned long long race_key_get(const unsigned long long* slot) {
#ifdef FINESAM_CLUSTERS
    unsigned long long v;
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(slot));
    asm volatile("ld.relaxed.cluster.shared::cta.b64 %0, [%1];" : "=l"(v) : "r"(a) : "memory");
    return v;
#else
    return atomicOr(const_cast<unsigned long long*>(slot), 0ULL);
#endif
}

// The rounds of one solve and their cap; in a race (kRaceTheta) also its work and `stop`, this
// block's copy of the race keys the finished variants published (kSparseCluster slots, ~0 for
// none; nullptr: no race). The CPU model's State::count_round: the cap first, then the race.
struct RoundCount {
    unsigned rounds;
    unsigned cap;
    unsigned long long work;
    const unsigned long long* stop;
    unsigned rank;
    // Counts a round of work w: kIterationLimit past the cap, else kOptimal (the race is
    // tested by the caller: poll, or count_warp).
    __device__ __forceinline__ uint32_t count(unsigned w) {
        work += w;
        return ++rounds > cap ? kIterationLimit : kOptimal;
    }
    // This variant's race key (race_key in src/assign/mod.rs): work, then the block.
    __device__ __forceinline__ unsigned long long key() const {
        static_assert(kSparseCluster == 8, "race keys hold the block in 3 bits");
        return (work << 3) | rank;
    }
    // Whether finished variant k beats this one: its race key is lower than this one's can
    // still become. Keys only appear, so the answer is final.
    __device__ __forceinline__ bool beaten_by(int k) const {
        return stop != nullptr && key() > race_key_get(stop + k);
    }
    // Block-level rounds: warp 0 tests the slots (a lane each, one relaxed load) and lane 0
    // sets *flag, which the block reads after its next barrier; every second round (thread 0
    // testing all slots every round made block rounds ~0.7 us slower).
    __device__ __forceinline__ void poll(int warp, int lane, int* flag) const {
        if (warp != 0 || stop == nullptr || (rounds & 1) != 0) return;
        if (__any_sync(kFull, lane < kSparseCluster && beaten_by(lane)) && lane == 0) *flag = 1;
    }
    // count for warp 0's loops: kAborted when beaten, tested every fourth round (the vote cost
    // a chain step ~0.07 us when taken every round; the winner is the same either way).
    // Warp-collective: lane l tests slot l mod kSparseCluster, and the vote makes every lane
    // agree.
    __device__ __forceinline__ uint32_t count_warp(unsigned w, int lane) {
        const uint32_t status = count(w);
        if (status != kOptimal || stop == nullptr || (rounds & 3) != 0) return status;
        return __any_sync(kFull, beaten_by(lane % kSparseCluster)) ? kAborted : kOptimal;
    }
};

// With a single bidder a Jacobi round is one bid that always wins, so the chain of
// displacements it starts can run inside one warp without block barriers: the same rounds, the
// same result, a fraction of the latency. Warp 0 runs it; returns via *tail / *tail_status
// (lane 0) the round count and kOptimal, kIterationLimit, kAborted or kOverflow.
__device__ void forward_chain(const Auction& A, int i, long long eps, RoundCount rc, int lane, RoundCount* tail,
                              uint32_t* tail_status) {
    uint32_t status = kOptimal;
    // Rows turn dense only in the final check, never during a forward part: without any dense
    // row a sparse chain skips the per-step dense-row test (a dependent load before the scan).
    const bool all_sparse = A.slots != 0 && *reinterpret_cast<volatile int*>(A.any_dense) == 0;
    // All sparse: lane l holds slot l of the bidder's row. The next bidder's slots are loaded
    // as soon as the best slot is known, while the second-best reductions run (kept sets never
    // change during the auction), and each lane reads its slot object's owner with its price,
    // so the displaced owner comes from the best lane instead of a load after the top-2.
    long long key = 0;
    int obj = 0;
    auto load_row = [&](int p) {
        key = A.sparse_key[p * kSparseStride + lane];
        obj = A.sparse_obj[p * kSparseStride + lane];
    };
    if (all_sparse) load_row(i);
    while (true) {
        status = rc.count_warp(kWorkChainStep, lane);
        if (status != kOptimal) break;
        // Every lane holds the same top-2, so every lane derives the bid; lane 0 writes.
        Top2 t;
        int j, old;
        if (all_sparse) {
            const int slot_owner = A.owner[obj];
            long long k1 = key - A.price[obj] * 512, k2;
            const int best = __ffs(__ballot_sync(kFull, warp_top2_keys(k1, k2))) - 1;
            j = __shfl_sync(kFull, obj, best);
            old = __shfl_sync(kFull, slot_owner, best);
            load_row(old >= 0 ? old : i);
            t = keys_top2(k1, k2);
        } else {
            t = bid_values(A, i, lane);
            j = A.object_at(i, t.k1);
            old = A.owner[j];
        }
        const long long inc = bid_increment(t, eps);
        if (inc >= kMaxIncrement) {
            status = kOverflow;
            break;
        }
        __syncwarp();  // every lane has read owner[j] before lane 0 replaces it
        if (lane == 0) A.take(i, j, A.price[j] + inc, t.v1 - inc, old);
        __syncwarp();
        if (old < 0) break;
        i = old;
    }
    if (lane == 0) {
        *tail = rc;
        *tail_status = status;
    }
}

// Bid of sparse-path person i by its group of G lanes (the aligned run containing this lane;
// `active`: the group has a bidder, else it scans row i unused): the group's top-2. Dense rows
// (turned so by the final check) take the warp's full scan instead, one after another; with
// !any_dense (no row is dense) that test is skipped. Warp-collective.
template <int G>
__device__ __forceinline__ Top2 group_bid(const Auction& A, int i, bool active, int lane, bool any_dense) {
    Top2 t = group_top2<G>(A, i, lane % G);
    if (!any_dense) return t;
    unsigned dense = __ballot_sync(kFull, lane % G == 0 && active && A.dense[i] != 0);
    while (dense != 0) {
        const int leader = __ffs(dense) - 1;
        const Top2 td = scan_person(A, __shfl_sync(kFull, i, leader), lane);
        if (lane == leader) t = td;
        dense &= dense - 1;
    }
    return t;
}

// Bids of sparse-path persons list[0..count) by a warp, G lanes per person (group g = lane / G
// bids for list[g]; count <= 32 / G): returns the group's top-2. Warp-collective.
template <int G>
__device__ __forceinline__ Top2 group_bids(const Auction& A, const int* list, int count, int lane,
                                           bool any_dense = true) {
    const int g = lane / G;
    return group_bid<G>(A, g < count ? list[g] : list[0], g < count, lane, any_dense);
}

// Block-wide forward rounds of the sparse path, G lanes per bidder (32 / G bidders per warp),
// starting from the `next` bidders of A.list(r) (next * G <= nthreads: one pass). Each group
// keeps its bidder across rounds and resolves its own bid: after the barrier that follows the
// bids its leader reads the object's slot (the highest key won, as in resolve_forward) and, if
// it won, takes the object and bids next round for the owner it displaced; a loser bids again.
// So a round is the bids, one barrier, the resolve in registers and a counting barrier, with no
// bidder list and no bid state passed through shared memory (resolve_forward read both back
// after a barrier: ~0.47 us of a ~1.8 us round at 300x300, H100). The rounds and the result are
// resolve_forward's: a round's bids all see the same prices and the highest key wins, whichever
// group places it. Once at most kSmallBidders bidders are left, or few enough for twice the
// lanes (the block-wide loop's choice of G, so each round runs the same G as before), they are
// listed in A.list(r + 1) (r advances; the counts rotate as resolve_forward leaves them) and the
// count is returned; -1 with *status set when the rounds stop (kIterationLimit, kOverflow,
// kAborted). Block-collective; ends with a barrier.
template <int G>
__device__ int group_rounds_block(const Auction& A, unsigned& r, int next, long long eps, bool any_dense,
                                  RoundCount& rc, int* race_stop, uint32_t* status, int lane, int warp,
                                  int nthreads) {
    const int g = warp * (32 / G) + lane / G;
    const bool leader = lane % G == 0;
    int person = g < next ? A.list(r)[g] : -1;
    while (true) {
        if (rc.count(kWorkBlockRound) != kOptimal) {
            *status = kIterationLimit;
            return -1;
        }
        rc.poll(warp, lane, race_stop);  // read after the barrier below
        int j = 0, previous_owner = -1;
        long long price = 0, inc = 0, profit = 0;
        if (__any_sync(kFull, person >= 0)) {  // warp-uniform: warps without bidders only wait
            const Top2 t = group_bid<G>(A, person >= 0 ? person : 0, person >= 0, lane, any_dense);
            if (leader && person >= 0) {
                j = A.object_at(person, t.k1);
                inc = bid_increment(t, eps);
                profit = t.v1 - inc;
                // The winner's reads of j: nothing writes them before the resolve below.
                previous_owner = A.owner[j];
                price = A.price[j];
                if (inc >= kMaxIncrement) {
                    *A.overflow = 1;
                } else {
                    atomicMax(&A.slot[j], (static_cast<unsigned long long>(inc) << 16) | static_cast<unsigned>(person + 1));
                }
            }
        }
        __syncthreads();
        *status = rounds_stopped(A, race_stop);
        if (*status != kOptimal) return -1;
        if (leader && person >= 0) {
            // An atomic read: a loser that reads after its winner cleared the slot sees 0, which
            // also says "lost" (resolve_bid).
            const unsigned long long key = atomicCAS(&A.slot[j], 0ULL, 0ULL);
            if (static_cast<int>(key & 0xFFFF) == person + 1) {
                A.take(person, j, price + inc, profit, previous_owner);
                atomicExch(&A.slot[j], 0ULL);
                person = previous_owner;
            }
        }
        person = __shfl_sync(kFull, person, lane & ~(G - 1));
        // Also orders this round's updates before the next round's scans.
        const int left = __syncthreads_count(leader && person >= 0);
        if (left > kSmallBidders && (G == 8 || 2 * G * left > nthreads)) continue;
        warp_append(A.list(r + 1), &A.counts[(r + 1) % 3], leader && person >= 0, person, lane);
        if (threadIdx.x == 0) A.counts[(r + 2) % 3] = 0;
        ++r;
        __syncthreads();
        return left;
    }
}

// One forward round of warp_forward: the count <= 32 / G bidders of `cur`, G lanes each, bid
// and resolve within the warp, and the next round's bidders (losers and displaced owners) go to
// `nxt`. Returns their count, or -1 when an increment leaves the packed range. The result is
// resolve_forward's, with less work: a bid lives in its group's registers, and only bidders that
// share their object with another settle it through the slot's atomicMax. Warp-collective.
template <int G>
__device__ __forceinline__ int warp_round(const Auction& A, const int* cur, int* nxt, int count, long long eps,
                                          bool any_dense, int lane) {
    const int g = lane / G;
    const bool leader = lane % G == 0 && g < count;
    const int i = g < count ? cur[g] : cur[0];
    const Top2 t = group_bids<G>(A, cur, count, lane, any_dense);
    const int j = A.object_at(i, t.k1);
    // The winner's reads of j, issued now so that they overlap the contest test: nothing writes
    // them before the winner does (two bidders that want j settle it first).
    const int previous_owner = A.owner[j];
    const long long price = A.price[j];
    const long long inc = bid_increment(t, eps);
    if (__any_sync(kFull, leader && inc >= kMaxIncrement)) return -1;
    const unsigned long long key = (static_cast<unsigned long long>(inc) << 16) | static_cast<unsigned>(i + 1);
    // Whether another bidder of the round wants j: compared with the other group leaders' j
    // (an idle group's is -1; __match_any_sync cost ~20% of a round); with 16 leaders every
    // bid goes through the slot.
    bool contested = leader;
    if (G >= 4) {
        const int mine = leader ? j : -1;
        contested = false;
#pragma unroll
        for (int o = 0; o < 32; o += G) {
            const int other = __shfl_sync(kFull, mine, o);
            contested |= o != lane && other == j;
        }
        contested &= leader;
    }
    if (contested) atomicMax(&A.slot[j], key);
    __syncwarp();
    const bool wins = leader && (!contested || load_key(&A.slot[j]) == key);
    __syncwarp();  // every contested bidder read the slot before its winner clears it
    int next = leader ? i : -1;
    if (wins) {
        if (contested) A.slot[j] = 0;
        next = previous_owner;
        A.take(i, j, price + inc, t.v1 - inc, previous_owner);
    }
    const unsigned pushed = __ballot_sync(kFull, next >= 0);
    if (next >= 0) nxt[__popc(pushed & ((1u << lane) - 1))] = next;
    __syncwarp();  // the list is written before the next round reads it
    return __popc(pushed);
}

// Forward rounds r, r + 1, ... of the sparse path once at most kSmallBidders bidders are left
// (list(r) holds `next` bidders whose bids are still to be made), run by warp 0 alone: the
// bidder count never grows within a forward part, so no block barrier is needed until it ends.
// Each bidder is scanned by a group of lanes (8 lanes for up to 4 bidders, then 4, 2: the
// fewer the bidders, the shorter the dependent chain; warp_round); a lone bidder's chain
// (forward_chain) ends the part. With cut > 0 (phases before the last) the forward part ends
// once at most `cut` bidders are left (kPhaseCut, or the race variant's). The same Jacobi rounds
// as the block-wide loop. Lane 0 leaves the round count, the status and the next round index in
// *tail, *tail_status, *tail_r.
__device__ void warp_forward(const Auction& A, unsigned r, int next, long long eps, int cut, RoundCount rc, int lane,
                             RoundCount* tail, uint32_t* tail_status, unsigned* tail_r, unsigned long long* prof) {
    uint32_t status = kOptimal;
    // Rows turn dense only in the final check, never during a forward part.
    const bool any_dense = *reinterpret_cast<volatile int*>(A.any_dense) != 0;
    while (next > cut) {
        if (next == 1) {
            // A lone bidder always wins: its displacement chain ends the forward part.
            prof_mark(prof, kProfSmall);
            forward_chain(A, A.list(r)[0], eps, rc, lane, tail, tail_status);
            prof_mark(prof, kProfChain);
            if (lane == 0) *tail_r = r;
            return;
        }
        status = rc.count_warp(next <= 4 ? kWorkWarpRound4 : next <= 8 ? kWorkWarpRound8 : kWorkWarpRound16, lane);
        if (status != kOptimal) break;
        const int* cur = A.list(r);
        int* nxt = A.list(r + 1);
        static_assert(kSmallBidders <= 16, "warp rounds take up to 16 bidders, 2 lanes each");
        next = next <= 4   ? warp_round<8>(A, cur, nxt, next, eps, any_dense, lane)
               : next <= 8 ? warp_round<4>(A, cur, nxt, next, eps, any_dense, lane)
                           : warp_round<2>(A, cur, nxt, next, eps, any_dense, lane);
        ++r;
        if (next < 0) {
            status = kOverflow;
            break;
        }
    }
    if (lane == 0) {
        *tail = rc;
        *tail_status = status;
        *tail_r = r;
    }
}

// The reverse counterpart: one unassigned object priced above lambda.
__device__ void reverse_chain(const Auction& A, int j, long long lambda, long long eps, RoundCount rc, int lane,
                              RoundCount* tail, uint32_t* tail_status) {
    uint32_t status = kOptimal;
    while (true) {
        status = rc.count_warp(kWorkChainStep, lane);
        if (status != kOptimal) break;
        const Top2 t = scan_object(A, j, lane);
        int next = -1;
        if (lane == 0) {
            if (t.v1 - eps <= lambda) {
                A.set_price(j, lambda);
            } else {
                int i = j % A.n + t.k1;
                if (i >= A.n) i -= A.n;
                const long long offered = t.v2 == kNegInf ? lambda : max(lambda, t.v2 - eps);
                const long long delta = t.v1 - offered;
                if (delta >= kMaxIncrement) {
                    status = kOverflow;
                } else {
                    const int k = A.object[i];
                    A.set_price(j, offered);
                    A.owner[j] = i;
                    A.object[i] = j;
                    A.profit[i] += delta;
                    A.owner[k] = -1;
                    if (A.price[k] > lambda) next = k;
                }
            }
        }
        __syncwarp();
        next = __shfl_sync(kFull, next, 0);
        status = __shfl_sync(kFull, status, 0);
        if (status != kOptimal || next < 0) break;
        j = next;
    }
    if (lane == 0) {
        *tail = rc;
        *tail_status = status;
    }
}

__device__ __forceinline__ AssignProblem load_problem(const AssignProblem* problems, const AssignUniform& u, unsigned b) {
    if (problems != nullptr) return problems[b];
    AssignProblem p;
    p.cost_offset = u.stride * b;
    p.scratch_offset = static_cast<unsigned long long>(u.rows) * u.cols * b;
    p.rows = u.rows;
    p.cols = u.cols;
    p.ld = u.ld;
    p.row_offset = u.rows * b;
    p.col_offset = u.cols * b;
    p.pad = 0;
    return p;
}

// Bytes of the auction state in dynamic shared memory (52 per object, see Auction), rounded up
// to 16; the quantised costs follow when they fit (solve_smem_bytes in src/assign/solver.rs).
__device__ __forceinline__ size_t state_bytes(unsigned capacity) {
    return (static_cast<size_t>(capacity) * 52 + 15) & ~static_cast<size_t>(15);
}

// Calls f(cost, e) for every entry of a rows x cols matrix, e being the entry's index in the
// persons x objects layout (transposed when rows > cols). The walk is row-major (coalesced) with
// kWalkBatch loads per thread in flight before any is used. Each thread visits entries
// nthreads apart and advances its (row, column) incrementally: one division per thread, not one
// per entry (the divisions made the passes instruction-bound: ~700 us at 1000x1000).
// Block-collective, no barrier.
constexpr int kWalkBatch = 8;

template <typename F>
__device__ __forceinline__ void for_each_cost(const float* cost, int rows, int cols, size_t ld, bool transposed, F f) {
    const int total = rows * cols;
    const int nthreads = static_cast<int>(blockDim.x);
    const int step_r = nthreads / cols, step_c = nthreads - step_r * cols;
    int r = static_cast<int>(threadIdx.x) / cols;
    int c = static_cast<int>(threadIdx.x) - r * cols;
    for (int e0 = static_cast<int>(threadIdx.x); e0 < total; e0 += kWalkBatch * nthreads) {
        float v[kWalkBatch];
        int dst[kWalkBatch];
#pragma unroll
        for (int u = 0; u < kWalkBatch; ++u) {
            const int e = e0 + u * nthreads;
            dst[u] = -1;
            v[u] = 0.0f;
            if (e < total) {
                v[u] = cost[static_cast<size_t>(r) * ld + c];
                dst[u] = transposed ? c * rows + r : e;
            }
            r += step_r;
            c += step_c;
            if (c >= cols) {
                c -= cols;
                ++r;
            }
        }
#pragma unroll
        for (int u = 0; u < kWalkBatch; ++u)
            if (dst[u] >= 0) f(v[u], dst[u]);
    }
}



// ------------------------------------------------------------------------------------------
// Shortest augmenting paths (scipy's algorithm: Crouse 2016, a Jonker-Volgenant variant without
// initialisation), one warp, f64, on costs in shared memory. Every operation and tie rule is
// src/assign/oracle.rs's, so the result is bit for bit the oracle's on the same (flushed) costs.

// The solver's arrays in the auction state's shared memory (44 of its 52 bytes per object;
// persons <= objects).
struct ShortestPath {
    const float* c;  // [n][m] persons x objects (flushed costs)
    int n, m;
    double* u;       // [n] row duals
    double* v;       // [m] column duals
    double* spc;     // [m] shortest path length to each column (valid once reached this search)
    int* path;       // [m] row preceding the column on its path
    int* row4col;    // [m] -1 free
    int* col4row;    // [n] -1 free
    int* remaining;  // [m] columns not yet reached in this search, in the oracle's order
    int* reached;    // [m] columns reached in this search, in order; the rows scanned are
                     // cur_row and the owners of all but the last
};

// The oracle's choice among the scanned entries: the lowest spc; among equal values a free
// column wins, the last free one in `remaining` order, else the first one. Smaller rank = the
// sequential scan's winner among entries of equal spc.
__device__ __forceinline__ int sp_rank(bool free_col, int it) { return free_col ? 0xffff - it : 0x10000 + it; }

__device__ __forceinline__ void sp_better(double& best, int& rank, double v, int r) {
    if (v < best || (v == best && r < rank)) {
        best = v;
        rank = r;
    }
}

// Entries per lane whose loads are issued together in a scan (latency: one shared-memory
// round trip per 32 * kSpBatch columns; 4 keeps the 1024-thread block's 64 registers).
constexpr int kSpBatch = 4;

// One scan of row i over remaining[0, count): updates spc/path of the columns it shortens and
// returns (in best/rank, every lane) the oracle's pick. On the search's first scan every
// column is unreached (spc = +inf, so every entry is shortened) and remaining[] is written
// here in the oracle's initial order (m - 1 - it), so nothing is reset per row.
template <bool First>
__device__ __forceinline__ void sp_scan(const ShortestPath& S, int i, int count, double min_val, int lane,
                                        double& best, int& rank) {
    const double ui = S.u[i];
    const float* row = S.c + static_cast<size_t>(i) * S.m;
    best = INFINITY;
    rank = 0x7fffffff;
    for (int it0 = lane; it0 < count; it0 += 32 * kSpBatch) {
        int j[kSpBatch];
        float cost[kSpBatch];
        double vj[kSpBatch], sj[kSpBatch];
        int owner[kSpBatch];
#pragma unroll
        for (int b = 0; b < kSpBatch; ++b) {
            const int it = it0 + 32 * b;
            j[b] = it < count ? (First ? S.m - 1 - it : S.remaining[it]) : 0;
        }
        // Past the end a lane loads column 0's operands and ignores them; spc is the one array
        // this scan writes, so that dummy read is skipped (another lane may be writing it).
#pragma unroll
        for (int b = 0; b < kSpBatch; ++b) {
            cost[b] = row[j[b]];
            vj[b] = S.v[j[b]];
            sj[b] = First || it0 + 32 * b >= count ? static_cast<double>(INFINITY) : S.spc[j[b]];
            owner[b] = S.row4col[j[b]];
        }
#pragma unroll
        for (int b = 0; b < kSpBatch; ++b) {
            const int it = it0 + 32 * b;
            if (it >= count) break;
            const double r = __dsub_rn(__dsub_rn(__dadd_rn(min_val, static_cast<double>(cost[b])), ui), vj[b]);
            if (First) S.remaining[it] = j[b];
            if (r < sj[b]) {
                S.path[j[b]] = i;
                S.spc[j[b]] = r;
                sj[b] = r;
            }
            sp_better(best, rank, sj[b], sp_rank(owner[b] < 0, it));
        }
    }
#pragma unroll
    for (int off = 16; off; off >>= 1) {
        const double ob = __shfl_xor_sync(kFull, best, off);
        const int orank = __shfl_xor_sync(kFull, rank, off);
        sp_better(best, rank, ob, orank);
    }
    __syncwarp();  // the scan's remaining/spc writes before anyone reads them
}

// Solves all n rows; returns the row scans used (the oracle's inner loop count) and sets
// *status to kOptimal, kIterationLimit or kInfeasible. Warp-collective.
__device__ unsigned sp_solve(const ShortestPath& S, unsigned max_scans, int lane, uint32_t* status) {
    const int n = S.n, m = S.m;
    for (int j = lane; j < m; j += 32) {
        S.v[j] = 0.0;
        S.row4col[j] = -1;
    }
    for (int i = lane; i < n; i += 32) {
        S.u[i] = 0.0;
        S.col4row[i] = -1;
    }
    __syncwarp();
    unsigned scans = 0;
    *status = kOptimal;
    for (int cur_row = 0; cur_row < n; ++cur_row) {
        double min_val = 0.0;
        int num_remaining = m;
        int i = cur_row;
        int reached = 0;
        while (true) {
            if (++scans > max_scans) {
                *status = kIterationLimit;
                return scans;
            }
            double best;
            int rank;
            if (reached == 0) {
                sp_scan<true>(S, i, num_remaining, min_val, lane, best, rank);
            } else {
                sp_scan<false>(S, i, num_remaining, min_val, lane, best, rank);
            }
            if (best == INFINITY) {  // only +inf entries left: not reached (such inputs go to the auction)
                *status = kInfeasible;
                return scans;
            }
            min_val = best;
            const int index = rank >= 0x10000 ? rank - 0x10000 : 0xffff - rank;
            const int j = S.remaining[index];
            const int owner = S.row4col[j];
            __syncwarp();  // every lane has read remaining[index]
            if (lane == 0) {
                S.reached[reached] = j;
                S.remaining[index] = S.remaining[num_remaining - 1];
            }
            ++reached;
            --num_remaining;
            __syncwarp();
            if (owner < 0) break;
            i = owner;
        }
        // Dual update (the oracle's, element by element) over the rows scanned and the columns
        // reached in this search, then augment along the path.
        for (int t = lane; t < reached; t += 32) {
            const int c = S.reached[t];
            const double d = __dsub_rn(min_val, S.spc[c]);
            S.v[c] = __dsub_rn(S.v[c], d);
            if (t + 1 < reached) {
                const int r = S.row4col[c];  // scanned after c was reached (not cur_row)
                S.u[r] = __dadd_rn(S.u[r], d);
            }
        }
        __syncwarp();
        if (lane == 0) {
            S.u[cur_row] = __dadd_rn(S.u[cur_row], min_val);
            int j = S.reached[reached - 1];
            while (true) {
                const int r = S.path[j];
                S.row4col[j] = r;
                const int previous = S.col4row[r];
                S.col4row[r] = j;
                if (r == cur_row) break;
                j = previous;
            }
        }
        __syncwarp();
    }
    return scans;
}

constexpr unsigned kFlagBad = 1, kFlagForbidden = 2, kFlagFractional = 4, kFlagFinite = 8;

// The solve of block blockIdx.x's matrix. Sparse: whether the sparse path is compiled in (see
// assign_solve_512).
template <bool Sparse>
__device__ __forceinline__ void solve_matrix(const float* __restrict__ costs, const AssignProblem* __restrict__ problems,
                                             AssignUniform uniform, int* scratch, int* __restrict__ row_to_col,
                                             int* __restrict__ col_to_row, AssignInfo* __restrict__ info,
                                             AssignParams params) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ long long red_ll[32];
    __shared__ float red_lo[32];
    __shared__ float red_hi[32];
    __shared__ unsigned red_flags[32];
    __shared__ double red_d[32];
    __shared__ int counts[3];
    __shared__ int overflow;
    __shared__ int price_high;  // Auction::price_high
    __shared__ int lost;
    __shared__ unsigned tail_rounds;
    __shared__ RoundCount tail_count;
    __shared__ uint32_t tail_status;
    __shared__ unsigned tail_r;
    __shared__ int tied_rows;
    __shared__ int any_dense;
    __shared__ unsigned long long prof[kProfStages + 2];
    __shared__ float part_lo, part_hi;  // this block's pass-1 results (read cluster-wide)
    __shared__ unsigned part_flags;
    // Race: the race key of each finished variant, slot k written by block k into every block
    // of the cluster (~0: not finished), and thread 0's verdict that this block is beaten (read
    // after a barrier).
    __shared__ unsigned long long race_keys[kSparseCluster];
    __shared__ int race_stop;
    if (threadIdx.x == 0) {
        for (int k = 0; k < kProfStages; ++k) prof[k] = 0;
        prof[kProfStages + 1] = global_ns();
        prof[kProfStages] = clock64();
    }

    // assign_solve_512 runs kSparseCluster blocks per matrix (one cluster); `rank` is this
    // block's place in it. Only rank 0 writes results (in a race: the winner).
    constexpr int kBlocks = Sparse ? kSparseCluster : 1;
#ifdef FINESAM_CLUSTERS
    constexpr bool kCluster = Sparse;
#else
    constexpr bool kCluster = false;
#endif
    const unsigned b = blockIdx.x / kBlocks;
    const int rank = static_cast<int>(blockIdx.x % kBlocks);
    const AssignProblem pr = load_problem(problems, uniform, b);
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const int lane = tid & 31, warp = tid >> 5, nwarps = nthreads >> 5;
    const int rows = static_cast<int>(pr.rows), cols = static_cast<int>(pr.cols);
    const size_t ld = pr.ld;
    const float* cost = costs + pr.cost_offset;
    int* r2c = row_to_col + pr.row_offset;
    int* c2r = col_to_row + pr.col_offset;
    AssignInfo* out = info + b;

    const bool transposed = rows > cols;
    const int n = transposed ? cols : rows;  // persons: the smaller side
    const int m = transposed ? rows : cols;  // objects
    uint32_t algorithm = kAuction;
    auto finish = [&](uint32_t status, uint32_t rounds, uint32_t phases, uint32_t unassigned, double total, double quantum) {
        if (tid == 0) {
            out->total = total;
            out->quantum = quantum;
            out->status = status;
            out->rounds = rounds;
            out->phases = phases;
            out->unassigned = unassigned;
            for (int k = 0; k < kProfStages; ++k) out->cycles[k] = static_cast<uint32_t>(min(prof[k], 0xffffffffULL));
            out->ns = static_cast<uint32_t>(min(global_ns() - prof[kProfStages + 1], 0xffffffffULL));
            out->algorithm = algorithm;
            out->variant = static_cast<uint32_t>(rank);  // 0 unless a race's block reports
            out->pad = 0;
        }
    };
    // Writes every person's pair (person i holds object object_of[i]; with `q`, pairs on a
    // forbidden entry are counted in `lost` instead) and returns the block's sum of their
    // original costs. Block-collective.
    auto write_pairs = [&](const int* object_of, const int* q) {
        double sum = 0.0;
        for (int i = tid; i < n; i += nthreads) {
            const int j = object_of[i];
            if (q != nullptr && q[static_cast<size_t>(i) * m + j] < 0) {
                atomicAdd(&lost, 1);
                continue;
            }
            const int row = transposed ? j : i, col = transposed ? i : j;
            r2c[row] = col;
            c2r[col] = row;
            sum += static_cast<double>(cost[row * ld + col]);
        }
        return block_reduce(sum, AddD{}, red_d, 0.0);
    };
    const bool bad_shape = m > static_cast<int>(params.capacity) || m > kMaxSide || (n > 0 && pr.ld < pr.cols);
    // Square matrices above the shortest-path solver's limit keep sparse candidates in the
    // region after the state (when they have no +inf, known after pass 1), so their quantised
    // costs go to the scratch. SPARSE_* and uses_sparse in src/assign/mod.rs state the rule.
    const bool shortest_path_shape = params.shortest_path != 0 && m <= kSpMaxObjects &&
                                     static_cast<long long>(n) * m <= kSpMaxEntries;
    const bool sparse_shape = Sparse && n == m && n >= kSparseMinSide && m <= kSparseMaxSide &&
                              n <= static_cast<int>(params.sparse_persons) && !shortest_path_shape;
    // A sparse matrix prepares on the whole cluster (kSparseCluster); every other matrix leaves
    // its solve to block 0.
    const bool cluster_prep = kCluster && sparse_shape && !bad_shape;
    if (rank != 0 && !cluster_prep) return;
    // Checked before any output is written: a malformed descriptor must not write out of bounds.
    if (bad_shape) {
        finish(kTooLarge, 0, 0, 0, 0.0, 0.0);
        return;
    }
    if (rank == 0) {
        for (int r = tid; r < rows; r += nthreads) r2c[r] = -1;
        for (int c = tid; c < cols; c += nthreads) c2r[c] = -1;
    }
    if (n == 0) {
        finish(kOptimal, 0, 0, 0, 0.0, 0.0);
        return;
    }
    // The quantised matrix lives in shared memory after the state when it fits (bids then scan
    // shared memory), else in the global scratch (written by this block or, sparse selection,
    // its cluster; read by this block only).
    const bool q_shared = !sparse_shape && static_cast<unsigned long long>(n) * m <= params.q_capacity;
    int* q = q_shared ? reinterpret_cast<int*>(smem + state_bytes(params.capacity)) : scratch + pr.scratch_offset;

    Auction A;
    A.q = q;
    A.n = n;
    A.m = m;
    A.price = reinterpret_cast<long long*>(smem);
    A.slot = reinterpret_cast<unsigned long long*>(A.price + params.capacity);
    A.aux = reinterpret_cast<long long*>(A.slot + params.capacity);
    A.profit = A.aux + params.capacity;
    A.owner = reinterpret_cast<int*>(A.profit + params.capacity);
    A.object = A.owner + params.capacity;
    A.target = A.object + params.capacity;
    A.list0 = A.target + params.capacity;
    A.list1 = A.list0 + params.capacity;
    A.counts = counts;
    A.overflow = &overflow;
    A.price_high = &price_high;
    A.cw = 0;
    A.slots = 0;
    auto reset_state = [&]() {
        for (int j = tid; j < m; j += nthreads) {
            A.price[j] = 0;
            A.owner[j] = -1;
            A.slot[j] = 0;
            A.target[j] = 0;  // the sparse selection's coverage marks
        }
        for (int i = tid; i < n; i += nthreads) A.object[i] = -1;
        if (tid == 0) {
            counts[0] = counts[1] = counts[2] = 0;
            price_high = 0;
        }
    };

    // Pass 1: finite range, forbidden entries, integrality, invalid values. With q in shared
    // memory the (flushed) costs are parked there too, so pass 2 reads no global memory. With
    // cluster preparation each block scans its slice of the rows (a sparse matrix is square,
    // never transposed, and does not park its costs).
    float lo = INFINITY, hi = -INFINITY;
    unsigned flags = 0;
    const int slice = cluster_prep ? (rows + kBlocks - 1) / kBlocks : rows;
    const int first_row = min(rows, rank * slice);
    const int slice_rows = min(rows, first_row + slice) - first_row;
    for_each_cost(cost + static_cast<size_t>(first_row) * ld, slice_rows, cols, ld, transposed, [&](float c, int e) {
        c = flush_subnormal(c);
        if (isnan(c) || c == -INFINITY) {
            flags |= kFlagBad;
        } else if (c == INFINITY) {
            flags |= kFlagForbidden;
        } else {
            flags |= kFlagFinite;
            lo = fminf(lo, c);
            hi = fmaxf(hi, c);
            if (truncf(c) != c) flags |= kFlagFractional;
        }
        if (q_shared) q[e] = __float_as_int(c);
    });
    // One barrier for all four results (min and max are exact in any order: no NaN reaches them
    // and flushed zeros are +0).
    for (int off = 16; off; off >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(kFull, lo, off));
        hi = fmaxf(hi, __shfl_xor_sync(kFull, hi, off));
    }
    flags = __reduce_or_sync(kFull, flags);
    if (lane == 0) {
        red_lo[warp] = lo;
        red_hi[warp] = hi;
        red_flags[warp] = flags;
    }
    if (tid == 0) {
        counts[0] = counts[1] = counts[2] = 0;
        overflow = 0;
        price_high = 0;
        lost = 0;
        for (int k = 0; k < kSparseCluster; ++k) race_keys[k] = ~0ULL;  // before the cluster barriers
        race_stop = 0;
    }
    __syncthreads();
    lo = lane < nwarps ? red_lo[lane] : INFINITY;
    hi = lane < nwarps ? red_hi[lane] : -INFINITY;
    flags = __reduce_or_sync(kFull, lane < nwarps ? red_flags[lane] : 0u);
    for (int off = 16; off; off >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(kFull, lo, off));
        hi = fmaxf(hi, __shfl_xor_sync(kFull, hi, off));
    }
    if (cluster_prep) {
        // Every block combines the cluster's partial results (min and max in any order are
        // exact, as above), so all derive the same scaling. Block 0 (every block in a race)
        // resets the state first: the selection marks its coverage there after the barrier.
        if (tid == 0) {
            part_lo = lo;
            part_hi = hi;
            part_flags = flags;
        }
        if (rank == 0 || params.race != 0) {
            if (tid == 0) tied_rows = any_dense = 0;
            reset_state();
        }
        cluster_sync();
        for (int k = 0; k < kBlocks; ++k) {
            lo = fminf(lo, *cluster_block(&part_lo, k));
            hi = fmaxf(hi, *cluster_block(&part_hi, k));
            flags |= *cluster_block(&part_flags, k);
        }
        if ((flags & (kFlagBad | kFlagForbidden)) || !(flags & kFlagFinite)) {
            // Not sparse after all: block 0 goes on alone, once nobody reads the partials.
            cluster_sync();
            if (rank != 0) return;
        }
    }
    if (flags & kFlagBad) {
        finish(kInvalidCost, 0, 0, 0, 0.0, 0.0);
        return;
    }
    if (!(flags & kFlagFinite)) {
        finish(kInfeasible, 0, 0, n, 0.0, 0.0);
        return;
    }
    const bool forbidden = flags & kFlagForbidden;
    if (shortest_path_shape && q_shared && !forbidden) {
        // Exact shortest augmenting paths on the parked costs (warp 0; the barrier above
        // published them). Rounds report the row scans; there are no phases.
        algorithm = kShortestPath;
        ShortestPath S;
        S.c = reinterpret_cast<const float*>(q);
        S.n = n;
        S.m = m;
        S.u = reinterpret_cast<double*>(smem);
        S.v = S.u + params.capacity;
        S.spc = S.v + params.capacity;
        S.path = reinterpret_cast<int*>(S.spc + params.capacity);
        S.row4col = S.path + params.capacity;
        S.col4row = S.row4col + params.capacity;
        S.remaining = S.col4row + params.capacity;
        S.reached = S.remaining + params.capacity;
        prof_mark(prof, kProfScan);
        if (warp == 0) {
            uint32_t status = kOptimal;
            const unsigned scans = sp_solve(S, params.max_rounds, lane, &status);
            if (lane == 0) {
                tail_rounds = scans;
                tail_status = status;
            }
        }
        __syncthreads();
        prof_mark(prof, kProfForward);
        const uint32_t status = tail_status;
        if (status != kOptimal) {
            finish(status, status == kIterationLimit ? params.max_rounds : tail_rounds, 0, 0, 0.0, 0.0);
            return;
        }
        const double sum = write_pairs(S.col4row, nullptr);
        prof_mark(prof, kProfFinish);
        finish(kOptimal, tail_rounds, 0, 0, sum, 0.0);
        return;
    }
    // Every thread derives the same scaling (same arithmetic as Scaling::choose in
    // src/assign/cpu.rs), so no broadcast barrier is needed.
    Scaling s;
    {
        const unsigned long long nn = n;
        const double range = __dsub_rn(static_cast<double>(hi), static_cast<double>(lo));
        const unsigned long long denom = (nn + 1) * (forbidden ? nn + 1 : 1);
        unsigned long long kcap = kScaledRangeLimit / denom;
        if (kcap > params.levels) kcap = params.levels;
        if (kcap < 1) kcap = 1;
        s.cmin = lo;
        s.pad = 0;
        if (range == 0.0) {
            s.scale = 0.0;
            s.levels = 0;
            s.quantum = 0.0;
        } else if (!(flags & kFlagFractional) && range <= static_cast<double>(kcap)) {
            s.scale = 1.0;
            s.levels = static_cast<long long>(range);
            s.quantum = 0.0;
        } else {
            s.scale = __ddiv_rn(static_cast<double>(kcap), range);
            s.levels = static_cast<long long>(kcap);
            s.quantum = __ddiv_rn(range, static_cast<double>(kcap));
        }
        s.mult = static_cast<long long>(nn) + 1;
        const long long big_q = forbidden ? static_cast<long long>(nn) * s.levels + 1 : 0;
        s.big = big_q * s.mult;
        s.range = s.mult * (forbidden ? big_q : s.levels);
    }

    prof_mark(prof, kProfScan);
    // Pass 2: quantised costs, persons x objects (transposed when rows > cols). In shared
    // memory the entries parked in pass 1 are converted in place (the barrier above published
    // them to every thread).
    // (The sparse path quantises each row in its selection instead.)
    const bool sparse_now = sparse_shape && !forbidden;
    if (q_shared) {
        const int qn = n * m;
        for (int e = tid; e < qn; e += nthreads) q[e] = quantize(__int_as_float(q[e]), s);
    } else if (!sparse_now) {
        for_each_cost(cost, rows, cols, ld, transposed, [&](float c, int e) { q[e] = quantize(c, s); });
    }

    A.mult = s.mult;
    A.big = s.big;
    if (sparse_now) {
        A.slots = kSparseSlots;
        algorithm = kSparseAuction;
        A.sparse_key = reinterpret_cast<long long*>(smem + state_bytes(params.capacity));
        A.sparse_floor = reinterpret_cast<int*>(A.sparse_key + static_cast<size_t>(n) * kSparseStride);
        A.dense = A.sparse_floor + n;
        A.sparse_obj = reinterpret_cast<unsigned short*>(A.dense + n);
        A.any_dense = &any_dense;
    } else if (!q_shared && params.cache_width != 0 && n <= static_cast<int>(params.cache_persons)) {
        A.cw = static_cast<int>(params.cache_width);
        A.cand_benefit = reinterpret_cast<long long*>(smem + state_bytes(params.capacity));
        A.cand_bound = A.cand_benefit + static_cast<size_t>(n) * A.cw;
        A.cand_object = reinterpret_cast<int*>(A.cand_bound + n);
    }
    // Sparse path: phases before the last may end with kPhaseCut bidders left, unless an eighth
    // of the rows or more tie at their minimum (SPARSE_PHASE_CUT, Problem::phase_cut).
    bool phase_cut = false;
    // (Cluster preparation: block 0 reset the state before the cluster barrier of pass 1.)
    if (!cluster_prep) {
        if (tid == 0) tied_rows = any_dense = 0;
        reset_state();
    }
    __syncthreads();  // also publishes the scratch writes to the whole block
    prof_mark(prof, kProfQuantise);
    unsigned phases = 0, r = 0;
    // Rounds and their cap (the sparse path's is its budget; then the dense path may still use
    // the rest); in a race also the work and the threshold.
    RoundCount rc{0, params.max_rounds, 0, nullptr, static_cast<unsigned>(rank)};
    // Whether this block races the others of its cluster (kRaceTheta).
    bool racing = false;
    if (Sparse && A.slots != 0) {
        // With cluster preparation every warp of the cluster selects rows and writes them into
        // block 0's shared memory, then the other blocks are done; in a race into its own
        // block's, each block then pulls the others' rows (below), and all solve.
        const bool race = cluster_prep && params.race != 0;
        SelectionWrites writes{false};
        int* tied = &tied_rows;
        int first = warp, stride = nwarps;
        if (cluster_prep) {
            writes.to_block0 = !race;
            tied = cluster_block(&tied_rows, 0);
            // Row i goes to block i mod kBlocks: 37-38 rows each at 300x300, where runs of
            // nwarps rows per block gave three blocks 48 and the others 32.
            first = rank + kBlocks * warp;
            stride = kBlocks * nwarps;
        }
        for (int i = first; i < n; i += stride) {
            if (m <= 256) {
                select_candidates<8>(A, i, lane, cost, ld, s, q, writes, tied);
            } else {
                select_candidates<12>(A, i, lane, cost, ld, s, q, writes, tied);
            }
        }
        if (cluster_prep) {
            cluster_sync();  // every row's keys, marks and scratch row, cluster-wide
            if (rank != 0 && !race) return;
        }
        if (race) {
            // Block i mod kBlocks selected row i: pull the other blocks' kept keys and
            // floors from their shared memory (the loads spread over seven SMs; the selection
            // pushing eight copies of every row cost ~9 us more at 300x300), and collect the
            // union of every block's coverage marks in list0 (unused until the first round).
            // The union goes into target only after a second cluster barrier: until then the
            // others may still read this block's marks, and its bids will write target.
            auto selected_by = [&](int i) { return i % kBlocks; };
            constexpr int kPull = 4;  // remote loads in flight per thread
            const int total = n * kSparseSlots;
            for (int e0 = tid; e0 < total; e0 += kPull * nthreads) {
                long long key[kPull];
                int slot[kPull];
#pragma unroll
                for (int u = 0; u < kPull; ++u) {
                    const int e = e0 + u * nthreads, i = e / kSparseSlots;
                    const int owner = selected_by(i);
                    slot[u] = e < total && owner != rank ? i * kSparseStride + e % kSparseSlots : -1;
                    key[u] = slot[u] >= 0 ? *cluster_block(A.sparse_key + slot[u], owner) : 0;
                }
#pragma unroll
                for (int u = 0; u < kPull; ++u)
                    if (slot[u] >= 0) A.sparse_key[slot[u]] = key[u];
            }
            for (int i = tid; i < n; i += nthreads) {
                const int owner = selected_by(i);
                if (owner != rank) {
                    A.sparse_floor[i] = *cluster_block(A.sparse_floor + i, owner);
                    A.dense[i] = 0;
                }
            }
            for (int j = tid; j < m; j += nthreads) {
                int mark = 0;
                for (int k = 0; k < kBlocks; ++k) mark |= *cluster_block(A.target + j, k);
                A.list0[j] = mark;
            }
            cluster_sync();
            for (int j = tid; j < m; j += nthreads) A.target[j] = A.list0[j];
        }
        // Kept sets that leave an object to the diagonal alone (rows ranking the columns alike:
        // low rank, sums) make the sparse auction a price war that ends in the dense fallback
        // anyway: go dense at once (block 0 alone). Every block of a race has the same marks,
        // so all decide alike.
        __syncthreads();  // every row's keys and marks, before any thread reads them
        // Each block derives the objects of its kept keys itself (cheaper than an eighth array
        // written across the cluster by the selection).
        for (int e = tid; e < n * kSparseSlots; e += nthreads) {
            const int i = e / kSparseSlots, slot = i * kSparseStride + e % kSparseSlots;
            const long long key = A.sparse_key[slot];
            A.sparse_obj[slot] = static_cast<unsigned short>(A.object_at(i, 511 - static_cast<int>(key & 511)));
        }
        bool covered = true;
        for (int j = tid; j < m; j += nthreads) covered &= A.target[j] != 0;
        if (__syncthreads_and(covered)) {
            phase_cut = 8 * *reinterpret_cast<volatile int*>(tied) < n;
            rc.cap = min(params.max_rounds, sparse_round_budget(n, phase_cut));
            racing = race;
            if (racing) rc.stop = race_keys;
        } else {
            A.slots = 0;
            algorithm = kAuction;
            if (rank != 0) return;
        }
    }
    prof_mark(prof, kProfSelect);

    // This block's schedule: epsilon factor, first epsilon (Scaling::first_epsilon in the CPU
    // model), bidders that end a phase before the last (with the phase cut on).
    const int variant = racing ? rank : 0;  // 0: params.theta, no divisor, kPhaseCut
    const unsigned theta = variant != 0 ? kRaceTheta[variant - 1] : params.theta;
    const long long divisor = variant != 0 ? kRaceDivisor[variant - 1] : 1;
    const long long eps0 = max(1LL, s.range / (static_cast<long long>(theta) * divisor));
    const int cut = variant != 0 ? kRaceCut[variant - 1] : kPhaseCut;

    // Resolves the bids placed in list(r) and runs the forward rounds that follow until no
    // bidder is left (block-collective; starts with a barrier). Returns kOptimal,
    // kIterationLimit, kAborted or kOverflow; advances `rc` and `r`.
    auto forward_rounds = [&](long long eps) -> uint32_t {
        __syncthreads();
        if (const uint32_t stop = rounds_stopped(A, &race_stop); stop != kOptimal) return stop;
        int next = resolve_forward(A, r);
        ++r;
        while (true) {
            if (next == 0) return kOptimal;
            if (A.slots != 0 && next <= kSmallBidders) {
                // The rest of the forward part in warp 0 (a phase before the last may end early).
                prof_mark(prof, kProfForward);
                if (warp == 0)
                    warp_forward(A, r, next, eps, phase_cut && eps > 1 ? cut : 0, rc, lane, &tail_count, &tail_status, &tail_r,
                                 prof);
                __syncthreads();
                prof_mark(prof, kProfSmall);
                rc = tail_count;
                r = tail_r;
                // The lists' counts start at 0 again; only after the barrier (every thread read
                // `next` before it), and every later use of a count follows another barrier.
                if (tid == 0) counts[0] = counts[1] = counts[2] = 0;
                return tail_status;
            }
            if (next == 1) {
                // A lone bidder: its displacement chain ends the forward part.
                prof_mark(prof, kProfForward);
                if (warp == 0) forward_chain(A, A.list(r)[0], eps, rc, lane, &tail_count, &tail_status);
                __syncthreads();
                prof_mark(prof, kProfChain);
                rc = tail_count;
                // The next round's list starts empty; only after the barrier, as in the reverse
                // part. Every later use of the count follows another barrier.
                if (tid == 0) A.counts[r % 3] = 0;
                return tail_status;
            }
            if (A.slots != 0 && next <= nthreads) {
                // Sparse path: as many lanes per bidder as the block has (up to 8; 16 lanes for
                // 17-32 bidders measured 3% slower on H100), each group resolving its own bids.
                // Rows turn dense only in the final check, so the flag read here holds for the
                // whole forward part. More bidders than threads (a block configured smaller than
                // the side) take the warp-per-bidder rounds below: the same rounds.
                const bool dense_rows = *reinterpret_cast<volatile int*>(A.any_dense) != 0;
                uint32_t status = kOptimal;
                if (8 * next <= nthreads) {
                    next = group_rounds_block<8>(A, r, next, eps, dense_rows, rc, &race_stop, &status, lane, warp, nthreads);
                } else if (4 * next <= nthreads) {
                    next = group_rounds_block<4>(A, r, next, eps, dense_rows, rc, &race_stop, &status, lane, warp, nthreads);
                } else if (2 * next <= nthreads) {
                    next = group_rounds_block<2>(A, r, next, eps, dense_rows, rc, &race_stop, &status, lane, warp, nthreads);
                } else {
                    next = group_rounds_block<1>(A, r, next, eps, dense_rows, rc, &race_stop, &status, lane, warp, nthreads);
                }
                if (next < 0) return status;
                continue;
            }
            if (rc.count(kWorkBlockRound) != kOptimal) return kIterationLimit;
            rc.poll(warp, lane, &race_stop);  // read after the next barrier
            const int* cur = A.list(r);
            for (int e = warp; e < next; e += nwarps) {
                const int i = cur[e];
                const Top2 t = bid_values(A, i, lane);
                if (lane == 0) {
                    const int j = A.object_at(i, t.k1);
                    place_bid(A, i, j, t, eps);
                }
            }
            __syncthreads();
            if (const uint32_t stop = rounds_stopped(A, &race_stop); stop != kOptimal) return stop;
            next = resolve_forward(A, r);
            ++r;
        }
    };

    long long eps = eps0;
    uint32_t status = kOptimal;
    // The phases; with the sparse path then its check, and when its round budget runs out the
    // whole solve again on the dense path (the rounds so far count; phases go on counting).
    for (;;) {
    while (true) {
        ++phases;
        // Prices are shifted to min 0 only once one reached kPriceShiftAt: a uniform shift
        // changes no value difference, so no bid, test or tie (every decision compares values
        // of one person or increments; the sparse check takes its own minimum), and shifting
        // every phase cost a reduction and three barriers, ~0.6 us a phase at 300x300. The flag
        // is read after the barriers that ended the previous phase.
        if (*reinterpret_cast<volatile int*>(&price_high) != 0) {
            long long pmin = kPosInf;
            for (int j = tid; j < m; j += nthreads) pmin = min(pmin, A.price[j]);
            pmin = block_reduce(pmin, MinLL{}, red_ll, kPosInf);  // every thread read the flag
            for (int j = tid; j < m; j += nthreads) A.price[j] -= pmin;
            if (tid == 0) price_high = 0;
        }
        __syncthreads();
        prof_mark(prof, kProfPhase);

        // Forward part. Full-scan round: persons keep their object while eps-CS holds, the
        // others release it and bid with the same scan.
        const unsigned forward_start = rc.rounds;
        if (rc.count(kWorkFullRound) != kOptimal) {
            status = kIterationLimit;
            break;
        }
        rc.poll(warp, lane, &race_stop);  // forward_rounds reads it after its barrier
        {
            int* cur = A.list(r);
            // Person i keeps its object o while own = a_io - p_o >= v1 - eps; otherwise it
            // releases o and bids with the same scan. Returns whether i bids. own == kNegInf:
            // not known yet (read from q).
            auto keep_or_bid = [&](int i, const Top2& t, long long own) -> bool {
                const int o = A.object[i];
                if (o >= 0) {
                    if (own == kNegInf) own = A.benefit(q[static_cast<size_t>(i) * m + o]) - A.price[o];
                    if (own >= t.v1 - eps) {
                        A.profit[i] = own;
                        return false;
                    }
                    A.owner[o] = -1;
                    A.object[i] = -1;
                }
                const int j = A.object_at(i, t.k1);
                place_bid(A, i, j, t, eps);
                return true;
            };
            if (A.slots != 0) {
                // Sparse path: a thread per person, dense rows by their warp's full scan; the
                // bidders are listed with one atomic per warp.
                for (int i0 = 0; i0 < n; i0 += nthreads) {
                    const int i = i0 + tid;
                    const bool dense_row = i < n && A.dense[i] != 0;
                    bool bid = false;
                    if (i < n && !dense_row) {
                        // The held object's quantised cost is loaded (from the scratch) before
                        // the scan, so its latency hides behind it: testing every slot for the
                        // held object (group_top2's Own) serialised the scan's loads (first
                        // rounds ~4.3 us each at 300x300).
                        const int o = A.object[i];
                        const int qo = o >= 0 ? q[static_cast<size_t>(i) * m + o] : 0;
                        const Top2 t = group_top2<1>(A, i, 0);
                        bid = keep_or_bid(i, t, o >= 0 ? A.benefit(qo) - A.price[o] : kNegInf);
                    }
                    unsigned dense = __ballot_sync(kFull, dense_row);
                    while (dense != 0) {
                        const int leader = __ffs(dense) - 1;
                        const Top2 t = scan_person(A, __shfl_sync(kFull, i, leader), lane);
                        if (lane == leader) bid = keep_or_bid(i, t, kNegInf);
                        dense &= dense - 1;
                    }
                    warp_append(cur, &A.counts[r % 3], bid, i, lane);
                }
            } else {
                for (int i = warp; i < n; i += nwarps) {
                    const Top2 t = scan_person(A, i, lane);
                    if (lane == 0 && keep_or_bid(i, t, kNegInf)) cur[atomicAdd(&A.counts[r % 3], 1)] = i;
                }
            }
        }
        prof_mark(prof, kProfForwardFirst);
        status = forward_rounds(eps);
        prof_mark(prof, kProfForward);
        if (status != kOptimal) break;
        const unsigned forward_rounds = rc.rounds - forward_start;

        // Reverse part (rectangular only): unassigned objects priced above lambda, the lowest
        // assigned price, bid for persons until none is left.
        if (n < m) {
            long long lam = kPosInf;
            for (int j = tid; j < m; j += nthreads)
                if (A.owner[j] >= 0) lam = min(lam, A.price[j]);
            lam = block_reduce(lam, MinLL{}, red_ll, kPosInf);
            prof_mark(prof, kProfPhase);
            if (rc.count(kWorkFullRound) != kOptimal) {
                status = kIterationLimit;
                break;
            }
            {
                // The bidding objects are listed first (one thread per object, one atomic per
                // warp), then spread over all warps: testing 32 objects per warp and bidding
                // for them in turn left most warps idle while a few made ~20 bids each. A bid
                // of object j writes only j's own price, target and aux; an object that only
                // lowers its price gets target -1, which resolve_reverse skips.
                int* cur = A.list(r);
                int* cur_count = &A.counts[r % 3];
                for (int j0 = 0; j0 < m; j0 += nthreads) {
                    const int j = j0 + tid;
                    const bool want = j < m && A.owner[j] < 0 && A.price[j] > lam;
                    warp_append(cur, cur_count, want, j, lane);
                }
                __syncthreads();
                const int bidders = *reinterpret_cast<volatile int*>(cur_count);
                for (int e = warp; e < bidders; e += nwarps) reverse_bid(A, cur[e], lam, eps, lane);
            }
            while (true) {
                __syncthreads();
                if (*reinterpret_cast<volatile int*>(&overflow)) {
                    status = kOverflow;
                    break;
                }
                const int next = resolve_reverse(A, r, lam);
                ++r;
                if (next == 0) break;
                if (next == 1) {
                    if (warp == 0) reverse_chain(A, A.list(r)[0], lam, eps, rc, lane, &tail_count, &tail_status);
                    __syncthreads();
                    rc = tail_count;
                    status = tail_status;
                    // The next round's list starts empty. Only after the barrier: every thread
                    // read this count (`next`) before it (a reset right after the chain raced
                    // with slow warps' reads, and a warp that read 0 left the loop alone).
                    if (tid == 0) A.counts[r % 3] = 0;
                    break;
                }
                if (rc.count(kWorkBlockRound) != kOptimal) {
                    status = kIterationLimit;
                    break;
                }
                const int* cur = A.list(r);
                for (int e = warp; e < next; e += nwarps) reverse_bid(A, cur[e], lam, eps, lane);
            }
            prof_mark(prof, kProfReverse);
            if (status != kOptimal) break;
        }
        if (eps == 1) break;
        eps = next_epsilon(eps, theta, forward_rounds);
    }
    // Sparse path: the result is optimal for the full matrix once no object outside a row's
    // kept ones violates eps-CS at eps = 1 (a_ij - p_j > profit_i + 1; docs/ASSIGN.md). Kept
    // objects cannot: every bid and every kept assignment satisfied eps-CS over them, and prices
    // only rose since. A row whose floor bound (-mult * floor_i - min price <= profit_i + 1)
    // excludes any violation is not scanned. A violating person turns dense, releases its
    // object and bids with a full scan; the forward rounds continue at eps = 1 and the check
    // repeats (at most n times: each repetition turns at least one row dense).
    while (status == kOptimal && A.slots != 0) {
        long long pmin = kPosInf;
        for (int j = tid; j < m; j += nthreads) pmin = min(pmin, A.price[j]);
        pmin = block_reduce(pmin, MinLL{}, red_ll, kPosInf);
        int* cur = A.list(r);
        for (int i = warp; i < n; i += nwarps) {
            if (A.dense[i] != 0) continue;
            const long long limit = A.profit[i] + 1;
            if (-static_cast<long long>(A.sparse_floor[i]) * s.mult - pmin <= limit) continue;
            const int* row = q + static_cast<size_t>(i) * m;
            bool bad = false;
            for (int j0 = 0; j0 < m; j0 += 32 * kScanBatch) {
                int qv[kScanBatch];
#pragma unroll
                for (int u = 0; u < kScanBatch; ++u) {
                    const int j = j0 + lane + 32 * u;
                    qv[u] = j < m ? row[j] : 0;
                }
#pragma unroll
                for (int u = 0; u < kScanBatch; ++u) {
                    const int j = j0 + lane + 32 * u;
                    if (j < m) bad |= A.benefit(qv[u]) - A.price[j] > limit;
                }
            }
            if (!__any_sync(kFull, bad)) continue;
            __syncwarp();  // every lane read dense[i] before lane 0 sets it
            if (lane == 0) {
                const int o = A.object[i];
                A.owner[o] = -1;
                A.object[i] = -1;
                A.dense[i] = 1;
                any_dense = 1;
            }
            __syncwarp();
            // Prices do not change during the check: this is the round's bid at its prices.
            const Top2 t = scan_person(A, i, lane);
            if (lane == 0) {
                const int j = A.object_at(i, t.k1);
                place_bid(A, i, j, t, 1);
                cur[atomicAdd(&A.counts[r % 3], 1)] = i;
            }
        }
        __syncthreads();
        if (*reinterpret_cast<volatile int*>(&A.counts[r % 3]) == 0) break;
        if (rc.count(kWorkFullRound) != kOptimal) {
            status = kIterationLimit;
            break;
        }
        rc.poll(warp, lane, &race_stop);
        status = forward_rounds(1);
    }
    // Past a budget the solve starts again (Problem / auction in the CPU model): the sparse path
    // with the phase cut again with whole phases, then the sparse path on the dense one. The
    // rounds so far count; prices and assignment start over.
    if (status == kIterationLimit && A.slots != 0 && rc.cap < params.max_rounds) {
        if (phase_cut) {
            phase_cut = false;
            const unsigned long long cap = static_cast<unsigned long long>(rc.cap) + sparse_round_budget(n, false);
            rc.rounds = rc.cap;
            rc.cap = static_cast<unsigned>(min(cap, static_cast<unsigned long long>(params.max_rounds)));
        } else {
            A.slots = 0;
            algorithm = kAuction;
            rc.rounds = rc.cap;
            rc.cap = params.max_rounds;
        }
        status = kOptimal;
        eps = eps0;
        __syncthreads();
        reset_state();
        __syncthreads();
        continue;
    }
    break;
    }
    prof_mark(prof, kProfReverse);
    if (racing) {
        // Every finisher writes its key into its slot of every block's race_keys (one writer
        // per slot); after the barrier all blocks hold the same keys, and the block of the
        // lowest (block 0 when none finished: its status) reports.
        if (status == kOptimal && tid < kBlocks) race_key_put(&race_keys[rank], tid, rc.key());
        cluster_sync();
        unsigned long long best = ~0ULL;
        for (int k = 0; k < kBlocks; ++k) best = min(best, race_keys[k]);
        if (rank != (best == ~0ULL ? 0 : static_cast<int>(best % kBlocks))) return;
    }
    if (status != kOptimal) {
        finish(status, status == kIterationLimit ? params.max_rounds : rc.rounds, phases, 0, 0.0, 0.0);
        return;
    }

    const double sum = write_pairs(A.object, q);
    prof_mark(prof, kProfFinish);
    const int unassigned = *reinterpret_cast<volatile int*>(&lost);
    finish(unassigned > 0 ? kInfeasible : kOptimal, rc.rounds, phases, unassigned, sum, s.quantum);
}

}  // namespace

// One block per matrix. Dynamic shared memory: 52 bytes per object of `params.capacity`, then
// the region of the quantised costs, the bid candidates or the sparse candidates (see
// launch_solve in src/assign/solver.rs). 64 registers per thread: blocks of up to 1024 threads.
extern "C" __global__ void __launch_bounds__(1024) assign_solve(
    const float* __restrict__ costs, const AssignProblem* __restrict__ problems, AssignUniform uniform,
    int* scratch, int* __restrict__ row_to_col, int* __restrict__ col_to_row, AssignInfo* __restrict__ info,
    AssignParams params) {
    solve_matrix<false>(costs, problems, uniform, scratch, row_to_col, col_to_row, info, params);
}

// The same for blocks of at most 512 threads, with up to 128 registers per thread, and the
// sparse path compiled in: the launches that may take it (its candidate selection holds a row
// in registers; a 64-register build spills). assign_solve ignores params.sparse_persons.
// Launched with kSparseCluster blocks per matrix, a thread block cluster on sm_90 and newer
// (their pass 1 and selection; see kSparseCluster).
#ifdef FINESAM_CLUSTERS
#define SPARSE_CLUSTER_DIMS __cluster_dims__(kSparseCluster, 1, 1)
#else
#define SPARSE_CLUSTER_DIMS
#endif
extern "C" __global__ void __launch_bounds__(512) SPARSE_CLUSTER_DIMS assign_solve_512(
    const float* __restrict__ costs, const AssignProblem* __restrict__ problems, AssignUniform uniform,
    int* scratch, int* __restrict__ row_to_col, int* __restrict__ col_to_row, AssignInfo* __restrict__ info,
    AssignParams params) {
    solve_matrix<true>(costs, problems, uniform, scratch, row_to_col, col_to_row, info, params);
}


// ------------------------------------------------------------------------------------------
// D-FINE matching cost.

struct MatcherParams {
    float alpha, gamma;
    float w_class, w_bbox, w_giou;
    uint32_t queries, classes;
    uint32_t max_targets;  // per image (the solver's shared-memory capacity)
    uint32_t max_total;    // targets over the batch (the cost buffer holds queries * max_total)
    uint32_t pad;
};

namespace {

// torch.nan_to_num(C, nan=1.0): NaN -> 1, +-inf -> +-FLT_MAX.
__device__ __forceinline__ float nan_to_num(float c) {
    if (isnan(c)) return 1.0f;
    if (c == INFINITY) return 3.40282347e38f;
    if (c == -INFINITY) return -3.40282347e38f;
    return c;
}

// The focal terms follow the official fp32 op order with IEEE-rounded operations: near p = 1
// the term log(1 - p + 1e-8) amplifies a one-ulp difference in p a thousandfold, so p must be
// the correctly rounded 1 / (1 + exp(-x)) that torch computes, not the fast-math one. exp, log
// and pow run in double (untouched by --use_fast_math) and are rounded to f32 once.
__device__ __forceinline__ float focal_pow(float x, float gamma) {
    return gamma == 2.0f ? __fmul_rn(x, x) : static_cast<float>(pow(static_cast<double>(x), static_cast<double>(gamma)));
}

__device__ __forceinline__ float exp_f32(float x) { return static_cast<float>(exp(static_cast<double>(x))); }
__device__ __forceinline__ float log_f32(float x) { return static_cast<float>(log(static_cast<double>(x))); }

// box_cxcywh_to_xyxy with w, h clamped at 0 (box_ops.py).
__device__ __forceinline__ float4 cxcywh_to_xyxy(float4 b) {
    const float hw = 0.5f * fmaxf(b.z, 0.0f), hh = 0.5f * fmaxf(b.w, 0.0f);
    return make_float4(b.x - hw, b.y - hh, b.x + hw, b.y + hh);
}

}  // namespace

// grid (x: element blocks, y: image). Image b's matrix (queries x t_b, t_b = offsets[b+1] -
// offsets[b]) starts at element queries * offsets[b] of `costs`; problems[b] describes it.
extern "C" __global__ void matcher_cost(const float* __restrict__ logits, const float* __restrict__ pred_boxes,
                                        const int* __restrict__ labels, const float* __restrict__ tgt_boxes,
                                        const int* __restrict__ offsets, MatcherParams p,
                                        float* __restrict__ costs, AssignProblem* __restrict__ problems) {
    const unsigned b = blockIdx.y;
    const int t0 = offsets[b], t1 = offsets[b + 1];
    // Offsets outside the buffers: no cost is written and the descriptor's 65535 columns make
    // assign_solve report kTooLarge for this image instead of touching memory.
    const bool valid = 0 <= t0 && t0 <= t1 && t1 <= static_cast<int>(p.max_total) &&
                       t1 - t0 <= static_cast<int>(p.max_targets);
    const int nt = valid ? t1 - t0 : 0;
    const int nq = static_cast<int>(p.queries);
    const size_t base = valid ? static_cast<size_t>(nq) * t0 : 0;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        AssignProblem pr;
        pr.cost_offset = base;
        pr.scratch_offset = base;
        pr.rows = nq;
        pr.cols = valid ? nt : 65535u;
        pr.ld = pr.cols;
        pr.row_offset = b * nq;
        pr.col_offset = valid ? t0 : 0;
        pr.pad = 0;
        problems[b] = pr;
    }
    const int total = nq * nt;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
        const int qi = e / nt, t = e - qi * nt;
        const size_t pq = static_cast<size_t>(b) * nq + qi;
        const int label = labels[t0 + t];
        const float logit = (label >= 0 && label < static_cast<int>(p.classes)) ? logits[pq * p.classes + label] : NAN;
        // Focal class cost: alpha (1-p)^g (-log(p + 1e-8)) - (1-alpha) p^g (-log(1 - p + 1e-8)).
        const float prob = __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_f32(-logit)));
        const float one_minus = __fsub_rn(1.0f, prob);
        const float neg = __fmul_rn(__fmul_rn(__fsub_rn(1.0f, p.alpha), focal_pow(prob, p.gamma)),
                                    -log_f32(__fadd_rn(one_minus, 1e-8f)));
        const float pos = __fmul_rn(__fmul_rn(p.alpha, focal_pow(one_minus, p.gamma)), -log_f32(__fadd_rn(prob, 1e-8f)));
        const float cls = __fsub_rn(pos, neg);
        const float4 a = reinterpret_cast<const float4*>(pred_boxes)[pq];
        const float4 g = reinterpret_cast<const float4*>(tgt_boxes)[t0 + t];
        const float l1 = fabsf(a.x - g.x) + fabsf(a.y - g.y) + fabsf(a.z - g.z) + fabsf(a.w - g.w);
        // Generalised IoU on xyxy boxes (box_ops.generalized_box_iou).
        const float4 x = cxcywh_to_xyxy(a), y = cxcywh_to_xyxy(g);
        const float area1 = (x.z - x.x) * (x.w - x.y), area2 = (y.z - y.x) * (y.w - y.y);
        const float iw = fmaxf(fminf(x.z, y.z) - fmaxf(x.x, y.x), 0.0f);
        const float ih = fmaxf(fminf(x.w, y.w) - fmaxf(x.y, y.y), 0.0f);
        const float inter = iw * ih;
        const float uni = area1 + area2 - inter;
        const float iou = __fdiv_rn(inter, uni);
        const float ew = fmaxf(fmaxf(x.z, y.z) - fminf(x.x, y.x), 0.0f);
        const float eh = fmaxf(fmaxf(x.w, y.w) - fminf(x.y, y.y), 0.0f);
        const float area = ew * eh;
        const float giou = __fsub_rn(iou, __fdiv_rn(__fsub_rn(area, uni), area));
        const float c = __fadd_rn(__fadd_rn(__fmul_rn(p.w_bbox, l1), __fmul_rn(p.w_class, cls)), __fmul_rn(p.w_giou, -giou));
        costs[base + e] = nan_to_num(c);
    }
}

// Top-k matching: forbids (+inf) every query row matched in the previous round, in each
// image's matrix. grid (x: element blocks, y: image).
extern "C" __global__ void matcher_mask_rows(float* __restrict__ costs, const AssignProblem* __restrict__ problems,
                                             const int* __restrict__ row_to_col, uint32_t max_targets) {
    const AssignProblem pr = problems[blockIdx.y];
    if (pr.cols > max_targets) return;  // an image matcher_cost rejected
    const int total = static_cast<int>(pr.rows * pr.cols);
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
        const int qi = e / static_cast<int>(pr.cols);
        if (row_to_col[pr.row_offset + qi] >= 0) costs[pr.cost_offset + e] = INFINITY;
    }
}

// ------------------------------------------------------------------------------------------
// Tracker.

struct TrackSlot {
    float box[4];  // x0, y0, x1, y1
    uint32_t id;   // persistent id, >= 1
    uint32_t age;  // consecutive frames without a match
    int32_t label;
    uint32_t active;
};

struct TrackerHeader {
    uint32_t next_id;
    uint32_t live;
    uint32_t frame;
    uint32_t rows;  // live tracks compacted into this frame's cost matrix
};

struct TrackerParams {
    uint32_t capacity;        // track slots
    uint32_t max_detections;  // detection buffer length
    uint32_t max_age;         // a track unmatched for more frames than this is dropped
    uint32_t match_class;     // 1: only same-label pairs may match
    float iou_gate;           // pairs with IoU below this are forbidden
    uint32_t pad;
};

namespace {

// IoU of two xyxy boxes with IEEE-rounded, never-contracted operations (the CPU model in
// src/assign/tracker.rs does the same f32 arithmetic).
__device__ __forceinline__ float iou_exact(const float* a, const float* b) {
    const float iw = fmaxf(__fsub_rn(fminf(a[2], b[2]), fmaxf(a[0], b[0])), 0.0f);
    const float ih = fmaxf(__fsub_rn(fminf(a[3], b[3]), fmaxf(a[1], b[1])), 0.0f);
    const float inter = __fmul_rn(iw, ih);
    const float area_a = __fmul_rn(fmaxf(__fsub_rn(a[2], a[0]), 0.0f), fmaxf(__fsub_rn(a[3], a[1]), 0.0f));
    const float area_b = __fmul_rn(fmaxf(__fsub_rn(b[2], b[0]), 0.0f), fmaxf(__fsub_rn(b[3], b[1]), 0.0f));
    const float uni = __fsub_rn(__fadd_rn(area_a, area_b), inter);
    return uni > 0.0f ? __fdiv_rn(inter, uni) : 0.0f;
}

// Order-preserving block compaction of `flag` over one chunk of blockDim.x items: returns the
// item's position among the flagged ones, adds the chunk's count to *base. Block-collective.
__device__ int compact_position(bool flag, int* warp_counts, int* base) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const unsigned ballot = __ballot_sync(kFull, flag);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = *base;
    int total = 0;
    for (int w = 0; w < nwarps; ++w) {
        if (w < warp) before += warp_counts[w];
        total += warp_counts[w];
    }
    const int pos = before + __popc(ballot & ((1u << lane) - 1u));
    __syncthreads();
    if (threadIdx.x == 0) *base += total;
    __syncthreads();
    return pos;
}

}  // namespace

// One block. Compacts the live tracks (slot order), writes the live x detections cost matrix
// (1 - IoU, +inf when gated out) and the problem descriptor for assign_solve.
extern "C" __global__ void tracker_cost(TrackSlot* __restrict__ slots, TrackerHeader* __restrict__ header,
                                        const float* __restrict__ det_boxes, const int* __restrict__ det_labels,
                                        const uint32_t* __restrict__ det_count, TrackerParams p,
                                        int* __restrict__ live, float* __restrict__ costs,
                                        AssignProblem* __restrict__ problem) {
    __shared__ int warp_counts[32];
    __shared__ int base;
    if (threadIdx.x == 0) base = 0;
    __syncthreads();
    for (uint32_t chunk = 0; chunk < p.capacity; chunk += blockDim.x) {
        const uint32_t s = chunk + threadIdx.x;
        const bool active = s < p.capacity && slots[s].active != 0;
        const int pos = compact_position(active, warp_counts, &base);
        if (active) live[pos] = static_cast<int>(s);
    }
    __syncthreads();  // live[] complete before any thread reads it
    const int rows = base;
    const int dets = static_cast<int>(min(*det_count, p.max_detections));
    for (int e = threadIdx.x; e < rows * dets; e += blockDim.x) {
        const int r = e / dets, c = e - r * dets;
        const TrackSlot& t = slots[live[r]];
        const float* d = det_boxes + 4 * c;
        const float iou = iou_exact(t.box, d);
        const bool same = !p.match_class || det_labels == nullptr || det_labels[c] == t.label;
        // !(iou >= gate) also forbids NaN boxes.
        costs[e] = (same && iou >= p.iou_gate) ? __fsub_rn(1.0f, iou) : INFINITY;
    }
    if (threadIdx.x == 0) {
        AssignProblem pr;
        pr.cost_offset = 0;
        pr.scratch_offset = 0;
        pr.rows = rows;
        pr.cols = dets;
        pr.ld = dets;
        pr.row_offset = 0;
        pr.col_offset = 0;
        pr.pad = 0;
        *problem = pr;
        header->rows = rows;
    }
}

// One block. Applies the solved assignment: writes each detection's track id (0 = none).
extern "C" __global__ void tracker_update(TrackSlot* __restrict__ slots, TrackerHeader* __restrict__ header,
                                          const float* __restrict__ det_boxes, const int* __restrict__ det_labels,
                                          const uint32_t* __restrict__ det_count, TrackerParams p,
                                          int* __restrict__ live, const int* __restrict__ row_to_col,
                                          const int* __restrict__ col_to_row, uint32_t* __restrict__ det_ids) {
    __shared__ int warp_counts[32];
    __shared__ int unmatched;
    __shared__ int free_slots;
    const int rows = static_cast<int>(header->rows);
    const int dets = static_cast<int>(min(*det_count, p.max_detections));
    for (int c = threadIdx.x; c < static_cast<int>(p.max_detections); c += blockDim.x) det_ids[c] = 0;
    __syncthreads();
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        TrackSlot& t = slots[live[r]];
        const int c = row_to_col[r];
        if (c >= 0) {
            for (int k = 0; k < 4; ++k) t.box[k] = det_boxes[4 * c + k];
            t.age = 0;
            if (det_labels != nullptr) t.label = det_labels[c];
            det_ids[c] = t.id;
        } else if (++t.age > p.max_age) {
            t.active = 0;
        }
    }
    if (threadIdx.x == 0) {
        unmatched = 0;
        free_slots = 0;
    }
    __syncthreads();
    // The k-th unmatched detection (detection order) takes the k-th free slot (slot order).
    int* pending = live;  // live[] is no longer needed: reuse it for the free slots
    for (uint32_t chunk = 0; chunk < p.capacity; chunk += blockDim.x) {
        const uint32_t s = chunk + threadIdx.x;
        const bool is_free = s < p.capacity && slots[s].active == 0;
        const int pos = compact_position(is_free, warp_counts, &free_slots);
        if (is_free) pending[pos] = static_cast<int>(s);
    }
    __syncthreads();  // pending[] complete before any thread reads it
    const uint32_t next_id = header->next_id;
    const int nfree = free_slots;
    for (int chunk = 0; chunk < dets; chunk += blockDim.x) {
        const int c = chunk + threadIdx.x;
        const bool open = c < dets && col_to_row[c] < 0;
        const int k = compact_position(open, warp_counts, &unmatched);
        if (open && k < nfree) {
            TrackSlot& t = slots[pending[k]];
            for (int e = 0; e < 4; ++e) t.box[e] = det_boxes[4 * c + e];
            t.id = next_id + k;
            t.age = 0;
            t.label = det_labels != nullptr ? det_labels[c] : -1;
            t.active = 1;
            det_ids[c] = t.id;
        }
    }
    __syncthreads();
    int alive = 0;
    for (uint32_t chunk = 0; chunk < p.capacity; chunk += blockDim.x) {
        const uint32_t s = chunk + threadIdx.x;
        alive += __syncthreads_count(s < p.capacity && slots[s].active != 0);
    }
    if (threadIdx.x == 0) {
        header->next_id = next_id + min(unmatched, nfree);
        header->live = alive;
        header->frame += 1;
    }
}

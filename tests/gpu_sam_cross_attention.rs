//! GPU tests of the decoder's token -> image attention (kernels/sam_cross_attention.cu,
//! `launch_cross_attention`) against an f64 CPU softmax attention on seeded random fp16 q/k/v
//! (the same fp16 values), outputs poisoned (fp16 NaN) first so an unwritten element fails, and
//! the rows past the output checked to still hold the poison. Cases: T in {1, 7, 11, 69}
//! (every query-tile variant but 3 and 4, which are the same code), prompts in {1, 8, 32}, keys
//! shared over the prompts (batch stride 0, block 0) or per prompt, k/v read as the decoder
//! does (row stride 384 with k at column 128 and v at 256; row stride 512 with k at 0 and v at
//! 128), q packed (stride 128) or strided (stride 384 at column 256, as the final attention's
//! q); plus one chunk (no workspace, and 64 keys), and 192 keys (3 chunks of one stage).
//! Skipped with a printed reason where there is no GPU.
//!
//! Tolerance, per element: |gpu - ref| <= 2^-11 (|ref| + a) + 1e-4 a + 1e-6, where
//! a = sum_j p_j |v_j| (p the exact softmax weights). The kernel rounds each unnormalised
//! weight exp2(s - m) <= 1 to fp16 before P V (as attention.cu does): at most 2^-11 relative,
//! so at most 2^-11 a on the output; the output's own fp16 rounding is 2^-11 |ref|; fp32
//! accumulation over 4096 keys and ex2.approx (~2^-22 relative) stay far below 1e-4 a. Also
//! rel L2 <= 1e-3. Determinism: every case is launched twice (bitwise equal), and a 32-prompt
//! launch is repeated after launches with 1 and 8 prompts on the same workspace (bitwise equal,
//! counters back at zero). The launcher's argument checks run without a GPU in
//! tests/cpu_ops.rs; here one bad workspace is rejected by the launch itself.

mod common;
#[path = "common/dense.rs"]
mod dense;

use common::{gpu_available, Rng};
use dense::{
    check_elements, counters_zero, download_f16, expect_launch_error, poisoned, random_f16, region,
    upload, zeroed_workspace,
};
use finesam::gpu::DeviceBuffer;
use finesam::ops::sam_cross_attention::{
    cross_attention_workspace, launch_cross_attention, CrossAttentionArgs, CrossAttentionWorkspace,
    CrossRows, CROSS_HEADS as HEADS, CROSS_HEAD_DIM as HD, CROSS_WIDTH as W,
};
use finesam::ops::DeviceRegion;
use finesam::Gpu;
use half::f16;

const KEYS: usize = 4096;
const SCALE: f64 = 0.25; // 1 / sqrt(16)
const ROUNDING: f64 = 1.0 / 2048.0;
const REL_L2: f64 = 1e-3;
const POISON: u16 = 0xffff;
/// Poisoned rows past every output.
const TAIL_ROWS: usize = 16;

/// How q and k/v are laid out.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Row stride of q and the column of its 128 halves.
    q_stride: usize,
    q_col: usize,
    /// Row stride of the keys projection and the column of k (v follows at + 128).
    kv_stride: usize,
    k_col: usize,
    /// One set of keys for every prompt (batch stride 0).
    shared: bool,
}

const LAYOUTS: [Layout; 4] = [
    // Block 0, no mask input: shared [q_i2t | k | v] keys projection, q from the token GEMM.
    Layout {
        q_stride: 128,
        q_col: 0,
        kv_stride: 384,
        k_col: 128,
        shared: true,
    },
    // Block 1.
    Layout {
        q_stride: 128,
        q_col: 0,
        kv_stride: 384,
        k_col: 128,
        shared: false,
    },
    // Final attention: [k | v | convT] and q in the post-MLP GEMM output.
    Layout {
        q_stride: 384,
        q_col: 256,
        kv_stride: 512,
        k_col: 0,
        shared: false,
    },
    // The final layout with shared keys.
    Layout {
        q_stride: 384,
        q_col: 256,
        kv_stride: 512,
        k_col: 0,
        shared: true,
    },
];

/// Host copies of one problem: fp16 buffers as uploaded and the same values as f64.
struct Problem {
    prompts: usize,
    tokens: usize,
    keys: usize,
    layout: Layout,
    q: Vec<f16>,
    kv: Vec<f16>,
    qf: Vec<f64>,
    kvf: Vec<f64>,
}

impl Problem {
    fn new(rng: &mut Rng, prompts: usize, tokens: usize, keys: usize, layout: Layout) -> Problem {
        // Scores q.k / 4 with q, k in U(-2, 2): std ~1.3, so the softmax has real peaks.
        let (q, qf) = random_f16(rng, prompts * tokens * layout.q_stride, -2.0, 2.0);
        let kv_sets = if layout.shared { 1 } else { prompts };
        let n = kv_sets * keys * layout.kv_stride;
        let (mut kv, mut kvf) = random_f16(rng, n, -2.0, 2.0);
        // v in U(-1, 1).
        let (v, vf) = random_f16(rng, n, -1.0, 1.0);
        for row in 0..kv_sets * keys {
            let at = row * layout.kv_stride + layout.k_col + W;
            kv[at..at + W].copy_from_slice(&v[at..at + W]);
            kvf[at..at + W].copy_from_slice(&vf[at..at + W]);
        }
        Problem {
            prompts,
            tokens,
            keys,
            layout,
            q,
            kv,
            qf,
            kvf,
        }
    }

    /// f64 softmax attention `[prompts, tokens, 128]` and the per-element scale `a`.
    fn reference(&self) -> (Vec<f64>, Vec<f64>) {
        let l = self.layout;
        let mut out = Vec::with_capacity(self.prompts * self.tokens * W);
        let mut mag = Vec::with_capacity(out.capacity());
        let mut s = vec![0f64; self.keys];
        for b in 0..self.prompts {
            let kv0 = if l.shared { 0 } else { b * self.keys };
            for i in 0..self.tokens {
                let q = &self.qf[(b * self.tokens + i) * l.q_stride + l.q_col..][..W];
                let mut row = vec![0f64; W];
                let mut row_mag = vec![0f64; W];
                for h in 0..HEADS {
                    let qh = &q[h * HD..][..HD];
                    let mut max = f64::NEG_INFINITY;
                    for (j, sj) in s.iter_mut().enumerate() {
                        let k = &self.kvf[(kv0 + j) * l.kv_stride + l.k_col + h * HD..][..HD];
                        *sj = SCALE * qh.iter().zip(k).map(|(x, y)| x * y).sum::<f64>();
                        max = max.max(*sj);
                    }
                    let mut total = 0f64;
                    for sj in s.iter_mut() {
                        *sj = (*sj - max).exp();
                        total += *sj;
                    }
                    for (j, &p) in s.iter().enumerate() {
                        let v = &self.kvf[(kv0 + j) * l.kv_stride + l.k_col + W + h * HD..][..HD];
                        for d in 0..HD {
                            row[h * HD + d] += p * v[d];
                            row_mag[h * HD + d] += p * v[d].abs();
                        }
                    }
                    for d in 0..HD {
                        row[h * HD + d] /= total;
                        row_mag[h * HD + d] /= total;
                    }
                }
                out.extend(row);
                mag.extend(row_mag);
            }
        }
        (out, mag)
    }
}

/// Device copies of a problem and its (poisoned) output.
struct Device {
    q: DeviceBuffer,
    kv: DeviceBuffer,
    o: DeviceBuffer,
}

impl Device {
    fn new(gpu: &Gpu, p: &Problem) -> Device {
        Device {
            q: upload(gpu, &p.q),
            kv: upload(gpu, &p.kv),
            o: poisoned(gpu, (p.prompts * p.tokens + TAIL_ROWS) * W),
        }
    }

    fn args(
        &self,
        p: &Problem,
        prompts: usize,
        workspace: Option<CrossAttentionWorkspace>,
    ) -> CrossAttentionArgs {
        let l = p.layout;
        let col = |buffer: &DeviceBuffer, c: usize| {
            DeviceRegion::new(buffer.ptr() + 2 * c as u64, buffer.len() - 2 * c)
        };
        CrossAttentionArgs {
            prompts,
            tokens: p.tokens,
            keys: p.keys,
            scale: SCALE as f32,
            q: CrossRows {
                region: col(&self.q, l.q_col),
                token_stride: l.q_stride,
                batch_stride: p.tokens * l.q_stride,
            },
            k: col(&self.kv, l.k_col),
            v: col(&self.kv, l.k_col + W),
            kv_token_stride: l.kv_stride,
            kv_batch_stride: if l.shared { 0 } else { p.keys * l.kv_stride },
            o: CrossRows {
                region: region(&self.o),
                token_stride: W,
                batch_stride: p.tokens * W,
            },
            workspace,
        }
    }

    /// The output rows of `prompts` prompts; the rows past them (and the tail) must still
    /// hold the poison.
    fn read(&self, gpu: &Gpu, p: &Problem, prompts: usize, what: &str) -> Vec<f16> {
        let all = download_f16(gpu, &self.o);
        let n = prompts * p.tokens * W;
        let stray = all[n..].iter().filter(|v| v.to_bits() != POISON).count();
        assert_eq!(stray, 0, "{what}: {stray} values written past the output");
        all[..n].to_vec()
    }
}

/// A zeroed workspace for up to `max_prompts` prompts.
fn workspace(
    gpu: &Gpu,
    max_prompts: usize,
    tokens: usize,
    keys: usize,
) -> Option<(DeviceBuffer, CrossAttentionWorkspace)> {
    let sm = gpu.kernels().sm_count() as usize;
    zeroed_workspace(
        gpu,
        cross_attention_workspace(max_prompts, tokens, keys, sm).unwrap(),
    )
}

fn check(what: &str, out: &[f16], reference: &[f64], mag: &[f64]) {
    let values: Vec<f64> = out.iter().map(|v| v.to_f64()).collect();
    check_elements(
        what,
        &values,
        reference,
        |i, r| ROUNDING * (r.abs() + mag[i]) + 1e-4 * mag[i] + 1e-6,
        |i| format!("element {i} (row {}, column {})", i / W, i % W),
        REL_L2,
    );
}

fn bits(v: &[f16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Runs `p` (all its prompts) twice with `ws` and checks it against the reference.
fn run_case(gpu: &Gpu, p: &Problem, ws: Option<CrossAttentionWorkspace>, what: &str) {
    let dev = Device::new(gpu, p);
    let plan = launch_cross_attention(gpu, &dev.args(p, p.prompts, ws)).unwrap();
    let first = dev.read(gpu, p, p.prompts, what);
    let (reference, mag) = p.reference();
    check(
        &format!("{what} ({} chunks)", plan.chunks),
        &first,
        &reference,
        &mag,
    );
    launch_cross_attention(gpu, &dev.args(p, p.prompts, ws)).unwrap();
    let second = dev.read(gpu, p, p.prompts, what);
    assert_eq!(bits(&first), bits(&second), "{what}: repeat launch differs");
    if let Some(ws) = &ws {
        counters_zero(gpu, ws, what);
    }
}

#[test]
fn matches_the_f64_reference() {
    if !gpu_available("sam_cross_attention::matches_the_f64_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x5a3c_0001);
    for tokens in [1usize, 7, 11, 69] {
        let ws = workspace(&gpu, 32, tokens, KEYS);
        for prompts in [1usize, 8, 32] {
            for (li, layout) in LAYOUTS.iter().enumerate() {
                // The shared final-layout variant once per T is enough.
                if li == 3 && prompts != 8 {
                    continue;
                }
                let p = Problem::new(&mut rng, prompts, tokens, KEYS, *layout);
                let what = format!(
                    "T {tokens}, {prompts} prompts, kv stride {} at {}{}, q stride {}",
                    layout.kv_stride,
                    layout.k_col,
                    if layout.shared { " shared" } else { "" },
                    layout.q_stride
                );
                run_case(&gpu, &p, ws.as_ref().map(|w| w.1), &what);
            }
        }
    }
}

#[test]
fn one_chunk_and_short_keys() {
    if !gpu_available("sam_cross_attention::one_chunk_and_short_keys") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x5a3c_0002);
    // No workspace: one chunk per prompt (direct store).
    for tokens in [7usize, 69] {
        let p = Problem::new(&mut rng, 8, tokens, KEYS, LAYOUTS[1]);
        run_case(
            &gpu,
            &p,
            None,
            &format!("T {tokens}, 8 prompts, no workspace"),
        );
    }
    // 64 keys (one stage: one chunk even with a workspace) and 192 (3 chunks of one stage).
    for keys in [64usize, 192] {
        for (tokens, prompts) in [(7usize, 1usize), (11, 8)] {
            let ws = workspace(&gpu, prompts, tokens, keys);
            let p = Problem::new(&mut rng, prompts, tokens, keys, LAYOUTS[2]);
            run_case(
                &gpu,
                &p,
                ws.as_ref().map(|w| w.1),
                &format!("T {tokens}, {prompts} prompts, {keys} keys"),
            );
        }
    }
}

#[test]
fn deterministic_across_batch_sizes_and_rejects_a_small_workspace() {
    if !gpu_available("sam_cross_attention::deterministic_across_batch_sizes") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x5a3c_0003);
    for tokens in [7usize, 69] {
        let (_buffer, ws) = workspace(&gpu, 32, tokens, KEYS).expect("32 prompts split keys");
        let p = Problem::new(&mut rng, 32, tokens, KEYS, LAYOUTS[1]);
        let dev = Device::new(&gpu, &p);
        let what = format!("T {tokens}");
        let plan = launch_cross_attention(&gpu, &dev.args(&p, 32, Some(ws))).unwrap();
        let full = bits(&dev.read(&gpu, &p, 32, &what));
        // Fewer prompts in between (other chunk counts, the same workspace and counters).
        for prompts in [1usize, 8] {
            let plan = launch_cross_attention(&gpu, &dev.args(&p, prompts, Some(ws))).unwrap();
            println!("{what}: {prompts} prompts -> {} chunks", plan.chunks);
            gpu.synchronize().unwrap();
            counters_zero(&gpu, &ws, &what);
        }
        launch_cross_attention(&gpu, &dev.args(&p, 32, Some(ws))).unwrap();
        let again = bits(&dev.read(&gpu, &p, 32, &what));
        assert_eq!(full, again, "{what}: 32 prompts after 1 and 8 differ");
        counters_zero(&gpu, &ws, &what);

        // A workspace one byte short of the 32-prompt plan, and one with too few counters.
        let short = CrossAttentionWorkspace {
            bytes: plan.workspace_bytes() - 1,
            ..ws
        };
        expect_launch_error(
            "short workspace",
            launch_cross_attention(&gpu, &dev.args(&p, 32, Some(short))).map(|_| ()),
        );
        let few = CrossAttentionWorkspace {
            counter_slots: 8,
            ..ws
        };
        expect_launch_error(
            "too few counters",
            launch_cross_attention(&gpu, &dev.args(&p, 32, Some(few))).map(|_| ()),
        );
    }
}

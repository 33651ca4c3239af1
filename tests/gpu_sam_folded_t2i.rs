//! GPU tests of the folded token -> image attention (kernels/sam_folded_t2i.cu,
//! `launch_folded_token_to_image`) against an f64 CPU reference of its formulas on seeded random
//! fp16 inputs with the decoder's magnitudes (x, pe ~ N(0, 1); Qf ~ N(0, 0.5^2), so the scores
//! scale * Qf . (x + pe) have std ~2.8; Wv ~ U(-1/16, 1/16); bv ~ U(-0.1, 0.1)), the key rows
//! formed as the kernel states, k = fp16(x + pe) (one rounding of the exact sum):
//!     s[r, j] = scale Qf[b, r] . k_j,  A[r] = sum_j softmax(s[r])_j x_j,
//!     O[b, t, 16h + d] = Wv[16h + d] . A[t*8 + h] + bv[16h + d].
//! Outputs are poisoned (fp16 NaN) first; every element of the output buffer that is not an
//! output (row gaps of a strided output, rows past the last prompt) must still hold the poison.
//! Cases: T in {1, 7, 8}, prompts in {1, 8, 32}, X per prompt and shared (batch stride 0),
//! 4096 keys split into chunks by the plan; no workspace (one chunk per prompt) with a padded
//! Qf batch stride and a strided output; 64 keys (one chunk) and 192 (3 chunks of one stage).
//! Skipped with a printed reason where there is no GPU.
//!
//! Tolerance, per element: |gpu - ref| <= 2^-11 |ref| + (2^-10 + 2e-4) m + 1e-5, where
//! m = sum_c |Wv[16h + d, c]| sum_j p_j |x_jc| (p the exact softmax weights). The kernel rounds
//! each unnormalised weight exp2(s - max) <= 1 to fp16 before P V (as attention.cu does): at
//! most 2^-11 relative, so at most 2^-11 sum_j p_j |x_jc| on A_c and 2^-11 m on the output; it
//! rounds A / l (a convex combination of x rows) to fp16 before applying Wv: another 2^-11 m;
//! the output's own fp16 rounding is 2^-11 |ref|. fp32 accumulation (256-term scores of
//! magnitude <= ~30, so score errors ~1e-5; 4096-term A sums), ex2.approx (~2^-22 relative) and
//! the chunk merge stay below 2e-4 m. Also rel L2 <= 2e-3. Determinism: every case is launched
//! twice (bitwise equal), and a 32-prompt launch is repeated after launches with 1 and 8
//! prompts on the same workspace (bitwise equal, counters back at zero). The launcher's
//! argument checks run without a GPU in tests/cpu_ops.rs; here one short workspace and one with
//! too few counters are rejected by the launch itself.

mod common;
#[path = "common/dense.rs"]
mod dense;

use common::{gpu_available, Rng};
use dense::{
    assert_runs_identical, check_elements, counters_zero, download_f16, expect_launch_error,
    poisoned, random_f16, random_f32, region, upload, zeroed_workspace,
};
use finesam::gpu::DeviceBuffer;
use finesam::ops::sam_cross_attention::{CrossAttentionWorkspace, CrossRows};
use finesam::ops::sam_folded_t2i::{
    folded_token_to_image_workspace, launch_folded_token_to_image, plan_folded_token_to_image,
    FoldedTokenToImageArgs, FOLDED_DIM as D, FOLDED_HEADS as HEADS, FOLDED_HEAD_DIM as HD,
    FOLDED_OUT as W,
};
use finesam::Gpu;
use half::f16;

const KEYS: usize = 4096;
const SCALE: f64 = 0.25; // 1 / sqrt(16)
const ROUNDING: f64 = 1.0 / 2048.0;
const REL_L2: f64 = 2e-3;
const POISON: u16 = 0xffff;
/// Poisoned halves past every output.
const TAIL: usize = 1024;

/// Strides of Qf (per prompt) and O (per token, per prompt), in halves.
#[derive(Debug, Clone, Copy)]
struct Strides {
    qf_batch: usize,
    o_token: usize,
    o_batch: usize,
}

impl Strides {
    fn packed(tokens: usize) -> Strides {
        Strides {
            qf_batch: tokens * HEADS * D,
            o_token: W,
            o_batch: tokens * W,
        }
    }

    /// Qf prompts 64 halves apart beyond their rows; O rows of 136 with 8 halves between
    /// prompts.
    fn padded(tokens: usize) -> Strides {
        Strides {
            qf_batch: tokens * HEADS * D + 64,
            o_token: W + 8,
            o_batch: tokens * (W + 8) + 8,
        }
    }
}

/// `n` fp16 values ~ N(0, sigma^2) and the same values as f64.
fn normal_f16(rng: &mut Rng, n: usize, sigma: f64) -> (Vec<f16>, Vec<f64>) {
    let h: Vec<f16> = (0..n)
        .map(|_| f16::from_f64(sigma * rng.normal()))
        .collect();
    let f = h.iter().map(|v| v.to_f64()).collect();
    (h, f)
}

/// Host copies of one problem: fp16 buffers as uploaded and the same values as f64.
struct Problem {
    prompts: usize,
    tokens: usize,
    keys: usize,
    shared: bool,
    strides: Strides,
    qf: Vec<f16>,
    x: Vec<f16>,
    pe: Vec<f16>,
    wv: Vec<f16>,
    bv: Vec<f32>,
    qff: Vec<f64>,
    xf: Vec<f64>,
    pef: Vec<f64>,
    wvf: Vec<f64>,
    bvf: Vec<f64>,
}

impl Problem {
    fn new(
        rng: &mut Rng,
        prompts: usize,
        tokens: usize,
        keys: usize,
        shared: bool,
        strides: Strides,
    ) -> Problem {
        let (qf, qff) = normal_f16(rng, prompts * strides.qf_batch, 0.5);
        let sets = if shared { 1 } else { prompts };
        let (x, xf) = normal_f16(rng, sets * keys * D, 1.0);
        let (pe, pef) = normal_f16(rng, keys * D, 1.0);
        let (wv, wvf) = random_f16(rng, W * D, -1.0 / 16.0, 1.0 / 16.0);
        let (bv, bvf) = random_f32(rng, W, -0.1, 0.1);
        Problem {
            prompts,
            tokens,
            keys,
            shared,
            strides,
            qf,
            x,
            pe,
            wv,
            bv,
            qff,
            xf,
            pef,
            wvf,
            bvf,
        }
    }

    /// f64 reference `[prompts, tokens, 128]` and the per-element scale `m`.
    fn reference(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.prompts * self.tokens * W;
        let (mut out, mut mag) = (vec![0f64; n], vec![0f64; n]);
        let mut k = vec![0f64; self.keys * D];
        let mut s = vec![0f64; self.keys];
        for b in 0..self.prompts {
            let x = &self.xf[if self.shared { 0 } else { b * self.keys * D }..][..self.keys * D];
            if b == 0 || !self.shared {
                for (i, kv) in k.iter_mut().enumerate() {
                    *kv = f16::from_f64(x[i] + self.pef[i]).to_f64();
                }
            }
            for t in 0..self.tokens {
                for h in 0..HEADS {
                    let q = &self.qff[b * self.strides.qf_batch + (t * HEADS + h) * D..][..D];
                    let mut max = f64::NEG_INFINITY;
                    for (j, sj) in s.iter_mut().enumerate() {
                        let kj = &k[j * D..][..D];
                        *sj = SCALE * q.iter().zip(kj).map(|(a, c)| a * c).sum::<f64>();
                        max = max.max(*sj);
                    }
                    let mut total = 0f64;
                    for sj in s.iter_mut() {
                        *sj = (*sj - max).exp();
                        total += *sj;
                    }
                    let (mut a, mut a_abs) = (vec![0f64; D], vec![0f64; D]);
                    for (j, &p) in s.iter().enumerate() {
                        let p = p / total;
                        for (c, &xv) in x[j * D..][..D].iter().enumerate() {
                            a[c] += p * xv;
                            a_abs[c] += p * xv.abs();
                        }
                    }
                    for d in 0..HD {
                        let col = h * HD + d;
                        let w = &self.wvf[col * D..][..D];
                        let at = (b * self.tokens + t) * W + col;
                        out[at] = self.bvf[col] + w.iter().zip(&a).map(|(u, v)| u * v).sum::<f64>();
                        mag[at] = w.iter().zip(&a_abs).map(|(u, v)| u.abs() * v).sum::<f64>();
                    }
                }
            }
        }
        (out, mag)
    }
}

/// Device copies of a problem and its (poisoned) output.
struct Device {
    qf: DeviceBuffer,
    x: DeviceBuffer,
    pe: DeviceBuffer,
    wv: DeviceBuffer,
    bv: DeviceBuffer,
    o: DeviceBuffer,
}

impl Device {
    fn new(gpu: &Gpu, p: &Problem) -> Device {
        Device {
            qf: upload(gpu, &p.qf),
            x: upload(gpu, &p.x),
            pe: upload(gpu, &p.pe),
            wv: upload(gpu, &p.wv),
            bv: upload(gpu, &p.bv),
            o: poisoned(gpu, p.prompts * p.strides.o_batch + TAIL),
        }
    }

    fn args(
        &self,
        p: &Problem,
        prompts: usize,
        workspace: Option<CrossAttentionWorkspace>,
    ) -> FoldedTokenToImageArgs {
        FoldedTokenToImageArgs {
            prompts,
            tokens: p.tokens,
            keys: p.keys,
            scale: SCALE as f32,
            qf: region(&self.qf),
            qf_batch_stride: p.strides.qf_batch,
            x: region(&self.x),
            x_batch_stride: if p.shared { 0 } else { p.keys * D },
            pe: region(&self.pe),
            wv: region(&self.wv),
            bv: region(&self.bv),
            o: CrossRows {
                region: region(&self.o),
                token_stride: p.strides.o_token,
                batch_stride: p.strides.o_batch,
            },
            workspace,
        }
    }

    /// The outputs of `prompts` prompts, `[prompts, tokens, 128]`; every other half of the
    /// output buffer must still hold the poison.
    fn read(&self, gpu: &Gpu, p: &Problem, prompts: usize, what: &str) -> Vec<f16> {
        let all = download_f16(gpu, &self.o);
        let st = p.strides;
        let mut written = vec![false; all.len()];
        let mut out = Vec::with_capacity(prompts * p.tokens * W);
        for b in 0..prompts {
            for t in 0..p.tokens {
                let at = b * st.o_batch + t * st.o_token;
                out.extend_from_slice(&all[at..at + W]);
                written[at..at + W].iter_mut().for_each(|w| *w = true);
            }
        }
        let stray = all
            .iter()
            .zip(&written)
            .filter(|(v, w)| !**w && v.to_bits() != POISON)
            .count();
        assert_eq!(
            stray, 0,
            "{what}: {stray} values written outside the output"
        );
        out
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
        folded_token_to_image_workspace(max_prompts, tokens, keys, sm).unwrap(),
    )
}

fn check(what: &str, out: &[f16], reference: &[f64], mag: &[f64]) {
    let values: Vec<f64> = out.iter().map(|v| v.to_f64()).collect();
    check_elements(
        what,
        &values,
        reference,
        |i, r| ROUNDING * r.abs() + (2.0 * ROUNDING + 2e-4) * mag[i] + 1e-5,
        |i| format!("element {i} (row {}, column {})", i / W, i % W),
        REL_L2,
    );
}

/// Runs `p` (all its prompts) twice with `ws` and checks it against the reference.
fn run_case(gpu: &Gpu, p: &Problem, ws: Option<CrossAttentionWorkspace>, what: &str) {
    let dev = Device::new(gpu, p);
    let sm = gpu.kernels().sm_count() as usize;
    let chunks = match ws {
        Some(_) => {
            plan_folded_token_to_image(p.prompts, p.tokens, p.keys, sm)
                .unwrap()
                .chunks
        }
        None => 1,
    };
    let what = format!("{what} ({chunks} chunks)");
    launch_folded_token_to_image(gpu, &dev.args(p, p.prompts, ws)).unwrap();
    let first = dev.read(gpu, p, p.prompts, &what);
    let (reference, mag) = p.reference();
    check(&what, &first, &reference, &mag);
    launch_folded_token_to_image(gpu, &dev.args(p, p.prompts, ws)).unwrap();
    let second = dev.read(gpu, p, p.prompts, &what);
    assert_runs_identical(&what, &[first, second]);
    if let Some(ws) = &ws {
        counters_zero(gpu, ws, &what);
    }
}

#[test]
fn matches_the_f64_reference() {
    if !gpu_available("sam_folded_t2i::matches_the_f64_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0xf01d_0001);
    for tokens in [1usize, 7, 8] {
        let ws = workspace(&gpu, 32, tokens, KEYS);
        for prompts in [1usize, 8, 32] {
            for shared in [false, true] {
                // Shared X at 8 prompts only: the same code, one address per prompt.
                if shared && prompts != 8 {
                    continue;
                }
                let p = Problem::new(
                    &mut rng,
                    prompts,
                    tokens,
                    KEYS,
                    shared,
                    Strides::packed(tokens),
                );
                let what = format!(
                    "T {tokens}, {prompts} prompts, {} X",
                    if shared { "shared" } else { "per-prompt" }
                );
                run_case(&gpu, &p, ws.as_ref().map(|w| w.1), &what);
            }
        }
    }
}

#[test]
fn one_chunk_strided_and_short_keys() {
    if !gpu_available("sam_folded_t2i::one_chunk_strided_and_short_keys") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0xf01d_0002);
    // No workspace: one chunk per prompt (direct store), padded Qf and a strided output.
    for tokens in [1usize, 7] {
        let p = Problem::new(&mut rng, 8, tokens, KEYS, false, Strides::padded(tokens));
        let what = format!("T {tokens}, 8 prompts, no workspace, strided");
        run_case(&gpu, &p, None, &what);
    }
    // 64 keys (one stage: one chunk even with a workspace) and 192 (3 chunks of one stage).
    for keys in [64usize, 192] {
        for (tokens, prompts, shared) in [(1usize, 1usize, false), (8, 8, true), (7, 8, false)] {
            let ws = workspace(&gpu, prompts, tokens, keys);
            let p = Problem::new(
                &mut rng,
                prompts,
                tokens,
                keys,
                shared,
                Strides::padded(tokens),
            );
            let what = format!("T {tokens}, {prompts} prompts, {keys} keys, shared {shared}");
            run_case(&gpu, &p, ws.as_ref().map(|w| w.1), &what);
        }
    }
}

#[test]
fn deterministic_across_batch_sizes_and_rejects_a_small_workspace() {
    if !gpu_available("sam_folded_t2i::deterministic_across_batch_sizes") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let sm = gpu.kernels().sm_count() as usize;
    let mut rng = Rng::new(0xf01d_0003);
    let tokens = 7;
    let (_buffer, ws) = workspace(&gpu, 32, tokens, KEYS).expect("32 prompts split keys");
    let p = Problem::new(&mut rng, 32, tokens, KEYS, false, Strides::packed(tokens));
    let dev = Device::new(&gpu, &p);
    let what = format!("T {tokens}");
    launch_folded_token_to_image(&gpu, &dev.args(&p, 32, Some(ws))).unwrap();
    let full = dev.read(&gpu, &p, 32, &what);
    // Fewer prompts in between (other chunk counts, the same workspace and counters).
    for prompts in [1usize, 8] {
        launch_folded_token_to_image(&gpu, &dev.args(&p, prompts, Some(ws))).unwrap();
        let chunks = plan_folded_token_to_image(prompts, tokens, KEYS, sm)
            .unwrap()
            .chunks;
        println!("{what}: {prompts} prompts -> {chunks} chunks");
        gpu.synchronize().unwrap();
        counters_zero(&gpu, &ws, &what);
    }
    launch_folded_token_to_image(&gpu, &dev.args(&p, 32, Some(ws))).unwrap();
    let again = dev.read(&gpu, &p, 32, &what);
    assert_runs_identical(&format!("{what}: 32 prompts after 1 and 8"), &[full, again]);
    counters_zero(&gpu, &ws, &what);

    // A workspace one byte short of the 32-prompt plan, and one with too few counters.
    let plan = plan_folded_token_to_image(32, tokens, KEYS, sm).unwrap();
    let short = CrossAttentionWorkspace {
        bytes: plan.workspace_bytes() - 1,
        ..ws
    };
    expect_launch_error(
        "short workspace",
        launch_folded_token_to_image(&gpu, &dev.args(&p, 32, Some(short))),
    );
    let few = CrossAttentionWorkspace {
        counter_slots: 8,
        ..ws
    };
    expect_launch_error(
        "too few counters",
        launch_folded_token_to_image(&gpu, &dev.args(&p, 32, Some(few))),
    );
}

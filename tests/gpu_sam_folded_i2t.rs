//! GPU tests of `sam_folded_image_to_token` (kernels/sam_folded_i2t.cu): the decoder's image ->
//! token cross attention with q folded into the tokens, out_proj, residual and norm4, against an
//! f64 CPU reference of the formulas (for every prompt b, pixel j, r = t * 8 + h):
//!   s[r] = fp16(X[b,j] + PE[j]) . Kf[b,r] + kb[b,r];  p = softmax over t of s[t*8+h] per head;
//!   Y[b,j] = LayerNorm(X[b,j] + sum_r p[r] Vf[b,r] + bo) * gamma + beta
//! on seeded random inputs: x, pe ~ N(0, 1) fp16; Kf ~ N(0, 0.133) fp16 (scores of std ~3);
//! kb ~ N(0, 1); Vf ~ N(0, 0.5) fp16; bo ~ N(0, 0.1); gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1).
//! Cases: T in {1, 7, 8} x prompts {1, 8, 32} x {shared X (x_batch 0, separate Y poisoned with
//! fp16 NaN first), per-prompt X in place (Y = X)} at N = 64, and the same at N = 4096 for T = 7
//! plus T in {1, 8} at 8 prompts; a determinism check (two launches, then grids of all but 4
//! SMs and of 1 SM: bitwise equal). Skipped with a printed reason where there is no GPU.
//!
//! Tolerance, per element: |gpu - ref| <= 2^-11 |ref| + 2 gamma_c rstd_j (E_p + E_s) + 1e-4.
//! - x + pe: the kernel adds in fp16 (one rounding); the reference rounds the exact sum the same
//!   way (round to nearest even), so it contributes nothing.
//! - E_p = (2^-11 + 2^-18) sum_r p_r |Vf[r,c]|: P is rounded to fp16 (half an ulp, relative;
//!   2^-18 covers the fp32 accumulation of O and the fp32 softmax sums).
//! - E_s = 2 ds sum_r p_r |Vf[r,c]| with ds = 2^-16 max_r sum_i |y_i Kf[r,i]| + 2^-22 max_r
//!   |s_r| + 2^-21: the scores' fp32 accumulation (256 terms x 2^-24), the fp32 scaling into
//!   log2 units and ex2.approx; an error ds in the scores moves p_r by <= 2 p_r ds.
//! - the LayerNorm multiplies an error in its input by gamma_c rstd_j (rstd = 1 / std of the
//!   pre-norm row); the factor 2 covers the same errors reaching the mean.
//! - 2^-11 |ref|: the one fp16 rounding of the output; 1e-4: fp32 LayerNorm arithmetic on O(1)
//!   outputs (~1e-6 relative).
//!
//! Also rel L2 <= 2e-3. The launcher's argument checks run without a GPU in tests/cpu_ops.rs.

mod common;
#[path = "common/dense.rs"]
mod dense;

use common::{gpu_available, Rng};
use dense::{
    assert_runs_identical, check_elements, download_f16, expect_launch_error, layer_norm_row,
    poisoned, region, upload,
};
use finesam::gpu::DeviceBuffer;
use finesam::ops::sam_folded_i2t::{
    launch_folded_image_to_token, FoldedImageToTokenArgs, FOLDED_DIM as D, FOLDED_HEADS as H,
};
use finesam::Gpu;
use half::f16;

const EPS: f32 = 1e-5;
const REL_L2: f64 = 2e-3;
const HALF_ULP: f64 = 1.0 / 2048.0;

/// `n` fp16 values ~ N(0, std) and the same values as f64.
fn normal_f16(rng: &mut Rng, n: usize, std: f64) -> (Vec<f16>, Vec<f64>) {
    let h: Vec<f16> = (0..n).map(|_| f16::from_f64(rng.normal() * std)).collect();
    let f = h.iter().map(|v| v.to_f64()).collect();
    (h, f)
}

/// `n` f32 values ~ N(0, std) and the same values as f64.
fn normal_f32(rng: &mut Rng, n: usize, std: f64) -> (Vec<f32>, Vec<f64>) {
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    let f = v.iter().map(|&x| x as f64).collect();
    (v, f)
}

#[derive(Debug, Clone, Copy)]
struct Case {
    prompts: usize,
    tokens: usize,
    pixels: usize,
    in_place: bool,
}

/// Host operands of one case (f64 copies of the fp16 / f32 values).
struct Inputs {
    x: (Vec<f16>, Vec<f64>),
    pe: (Vec<f16>, Vec<f64>),
    kf: (Vec<f16>, Vec<f64>),
    kb: (Vec<f32>, Vec<f64>),
    vf: (Vec<f16>, Vec<f64>),
    bo: (Vec<f32>, Vec<f64>),
    gamma: (Vec<f32>, Vec<f64>),
    beta: (Vec<f32>, Vec<f64>),
}

fn inputs(rng: &mut Rng, c: &Case) -> Inputs {
    let x_sets = if c.in_place { c.prompts } else { 1 };
    let rows = c.prompts * H * c.tokens;
    let gamma: Vec<f32> = (0..D)
        .map(|_| (0.5 + (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) as f32)
        .collect();
    let gamma_f = gamma.iter().map(|&v| v as f64).collect();
    Inputs {
        x: normal_f16(rng, x_sets * c.pixels * D, 1.0),
        pe: normal_f16(rng, c.pixels * D, 1.0),
        kf: normal_f16(rng, rows * D, 3.0 / (2.0 * D as f64).sqrt()),
        kb: normal_f32(rng, rows, 1.0),
        vf: normal_f16(rng, rows * D, 0.5),
        bo: normal_f32(rng, D, 0.1),
        gamma: (gamma, gamma_f),
        beta: normal_f32(rng, D, 0.1),
    }
}

/// The f64 reference output `[prompts, pixels, 256]` and each element's error bound.
fn reference(c: &Case, i: &Inputs) -> (Vec<f64>, Vec<f64>) {
    let (n, r_count) = (c.pixels, H * c.tokens);
    let plane = n * D;
    let mut out = vec![0f64; c.prompts * plane];
    let mut bound = vec![0f64; c.prompts * plane];
    let threads = std::thread::available_parallelism().map_or(1, |v| v.get());
    let per = c.prompts.div_ceil(threads);
    std::thread::scope(|scope| {
        for ((prompts_out, prompts_bound), first) in out
            .chunks_mut(per * plane)
            .zip(bound.chunks_mut(per * plane))
            .zip((0..).step_by(per))
        {
            scope.spawn(move || {
                for (k, (out_b, bound_b)) in prompts_out
                    .chunks_mut(plane)
                    .zip(prompts_bound.chunks_mut(plane))
                    .enumerate()
                {
                    let b = first + k;
                    let x_b = &i.x.1[if c.in_place { b * plane } else { 0 }..][..plane];
                    let kf = &i.kf.1[b * r_count * D..][..r_count * D];
                    let vf = &i.vf.1[b * r_count * D..][..r_count * D];
                    let kb = &i.kb.1[b * r_count..][..r_count];
                    for j in 0..n {
                        let x = &x_b[j * D..][..D];
                        let y: Vec<f64> = x
                            .iter()
                            .zip(&i.pe.1[j * D..][..D])
                            .map(|(a, p)| f16::from_f64(a + p).to_f64())
                            .collect();
                        let mut s = vec![0f64; r_count];
                        let (mut abs_max, mut s_max) = (0f64, 0f64);
                        for r in 0..r_count {
                            let row = &kf[r * D..][..D];
                            let dot: f64 = y.iter().zip(row).map(|(a, w)| a * w).sum();
                            let abs: f64 = y.iter().zip(row).map(|(a, w)| (a * w).abs()).sum();
                            s[r] = dot + kb[r];
                            abs_max = abs_max.max(abs);
                            s_max = s_max.max(s[r].abs());
                        }
                        let ds = abs_max * 2f64.powi(-16) + s_max * 2f64.powi(-22) + 2f64.powi(-21);
                        let mut p = vec![0f64; r_count];
                        for h in 0..H {
                            let m = (0..c.tokens).map(|t| s[t * H + h]).fold(f64::MIN, f64::max);
                            let sum: f64 = (0..c.tokens).map(|t| (s[t * H + h] - m).exp()).sum();
                            for t in 0..c.tokens {
                                p[t * H + h] = (s[t * H + h] - m).exp() / sum;
                            }
                        }
                        let mut v = vec![0f64; D];
                        let mut err = vec![0f64; D];
                        for (col, (vc, ec)) in v.iter_mut().zip(err.iter_mut()).enumerate() {
                            let (mut o, mut pv) = (0f64, 0f64);
                            for r in 0..r_count {
                                o += p[r] * vf[r * D + col];
                                pv += p[r] * vf[r * D + col].abs();
                            }
                            *vc = x[col] + o + i.bo.1[col];
                            *ec = (HALF_ULP + 2f64.powi(-18)) * pv + 2.0 * ds * pv;
                        }
                        let mean = v.iter().sum::<f64>() / D as f64;
                        let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / D as f64;
                        let rstd = 1.0 / (var + EPS as f64).sqrt();
                        let normed = layer_norm_row(&v, &i.gamma.1, &i.beta.1, EPS as f64);
                        for col in 0..D {
                            out_b[j * D + col] = normed[col];
                            bound_b[j * D + col] = HALF_ULP * normed[col].abs()
                                + 2.0 * i.gamma.1[col] * rstd * err[col]
                                + 1e-4;
                        }
                    }
                }
            });
        }
    });
    (out, bound)
}

/// Device buffers of a case.
struct Device {
    x: DeviceBuffer,
    pe: DeviceBuffer,
    kf: DeviceBuffer,
    kb: DeviceBuffer,
    vf: DeviceBuffer,
    bo: DeviceBuffer,
    gamma: DeviceBuffer,
    beta: DeviceBuffer,
}

fn device(gpu: &Gpu, i: &Inputs) -> Device {
    Device {
        x: upload(gpu, &i.x.0),
        pe: upload(gpu, &i.pe.0),
        kf: upload(gpu, &i.kf.0),
        kb: upload(gpu, &i.kb.0),
        vf: upload(gpu, &i.vf.0),
        bo: upload(gpu, &i.bo.0),
        gamma: upload(gpu, &i.gamma.0),
        beta: upload(gpu, &i.beta.0),
    }
}

fn args(c: &Case, d: &Device, y: &DeviceBuffer) -> FoldedImageToTokenArgs {
    FoldedImageToTokenArgs {
        prompts: c.prompts,
        tokens: c.tokens,
        pixels: c.pixels,
        x: region(&d.x),
        x_batch: if c.in_place { c.pixels * D } else { 0 },
        pe: region(&d.pe),
        kf: region(&d.kf),
        kb: region(&d.kb),
        kb_batch: H * c.tokens,
        vf: region(&d.vf),
        f_batch: H * c.tokens * D,
        out_bias: region(&d.bo),
        norm: (region(&d.gamma), region(&d.beta)),
        eps: EPS,
        y: region(y),
        spare_sms: 0,
    }
}

fn run_case(gpu: &Gpu, rng: &mut Rng, c: Case) {
    let what = format!(
        "T {} prompts {} N {} {}",
        c.tokens,
        c.prompts,
        c.pixels,
        if c.in_place {
            "per-prompt X in place"
        } else {
            "shared X"
        }
    );
    let host = inputs(rng, &c);
    let d = device(gpu, &host);
    let separate = (!c.in_place).then(|| poisoned(gpu, c.prompts * c.pixels * D));
    let y = separate.as_ref().unwrap_or(&d.x);
    launch_folded_image_to_token(gpu, &args(&c, &d, y)).unwrap();
    let out: Vec<f64> = download_f16(gpu, y).iter().map(|v| v.to_f64()).collect();
    let (reference, bound) = reference(&c, &host);
    check_elements(
        &what,
        &out,
        &reference,
        |i, _| bound[i],
        |i| {
            let plane = c.pixels * D;
            format!(
                "prompt {} pixel {} column {}",
                i / plane,
                i % plane / D,
                i % D
            )
        },
        REL_L2,
    );
}

#[test]
fn folded_image_to_token_matches_reference() {
    if !gpu_available("folded_image_to_token_matches_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0xf012_0001);
    let mut cases = Vec::new();
    for tokens in [1usize, 7, 8] {
        for prompts in [1usize, 8, 32] {
            for in_place in [false, true] {
                cases.push(Case {
                    prompts,
                    tokens,
                    pixels: 64,
                    in_place,
                });
                if tokens == 7 || prompts == 8 {
                    cases.push(Case {
                        prompts,
                        tokens,
                        pixels: 4096,
                        in_place,
                    });
                }
            }
        }
    }
    for c in cases {
        run_case(&gpu, &mut rng, c);
    }
}

#[test]
fn folded_image_to_token_is_deterministic() {
    if !gpu_available("folded_image_to_token_is_deterministic") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0xf012_0002);
    let c = Case {
        prompts: 8,
        tokens: 7,
        pixels: 4096,
        in_place: false,
    };
    let d = device(&gpu, &inputs(&mut rng, &c));
    // Twice on every SM, then with all but 4 SMs and on 1 SM (spare_sms, as the decoder leaves
    // SMs to a concurrent stream): every pixel's result is the same whatever CTA computes it.
    let runs: Vec<Vec<f16>> = [0usize, 0, 4, 100_000]
        .iter()
        .map(|&spare_sms| {
            let y = poisoned(&gpu, c.prompts * c.pixels * D);
            let a = FoldedImageToTokenArgs {
                spare_sms,
                ..args(&c, &d, &y)
            };
            launch_folded_image_to_token(&gpu, &a).unwrap();
            download_f16(&gpu, &y)
        })
        .collect();
    assert_runs_identical("folded image->token, 8 prompts, T 7, any grid", &runs);
}

#[test]
fn folded_image_to_token_rejects_bad_arguments() {
    if !gpu_available("folded_image_to_token_rejects_bad_arguments") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0xf012_0003);
    let c = Case {
        prompts: 2,
        tokens: 7,
        pixels: 64,
        in_place: false,
    };
    let d = device(&gpu, &inputs(&mut rng, &c));
    let y = poisoned(&gpu, c.prompts * c.pixels * D);
    let good = args(&c, &d, &y);
    expect_launch_error(
        "9 tokens",
        launch_folded_image_to_token(&gpu, &FoldedImageToTokenArgs { tokens: 9, ..good }),
    );
    expect_launch_error(
        "Y = shared X",
        launch_folded_image_to_token(
            &gpu,
            &FoldedImageToTokenArgs {
                y: region(&d.x),
                prompts: 1,
                ..good
            },
        ),
    );
}

//! GPU tests of the mask decoder's fused token ops (kernels/sam_tokens.cu: `sam_token_linear_ln`,
//! `sam_token_mlp_*` + `sam_token_mlp_norm`) against f64 CPU references on seeded random fp16
//! inputs, outputs poisoned (fp16 NaN) first so an unwritten element fails, and the rows past
//! the output checked to still hold the poison. Rows 1, 7, 56, 224, 483 and 2208 (1 to 32
//! prompts of 7 or 69 tokens) cover every MLP row tile on a 132-SM card; the inputs of a smaller
//! case are a prefix of the largest, so each case's output must also equal the first rows of the
//! 2208-row output bit for bit (the tiles and grids compute the same bits). Skipped with a
//! printed reason where there is no GPU.
//!
//! Tolerances, per element, |gpu - reference| <= 2^-11 |reference| + slack: 2^-11 is the one
//! fp16 rounding of the output (half an ulp, relative); the LayerNorm outputs are O(1).
//! - token linear: slack 1e-4. The kernel rounds nothing before the output; fp32 accumulation
//!   and statistics are ~1e-6 off.
//! - MLP: slack 5e-4. The reference rounds the hidden activations to fp16 as the kernel does
//!   (from f64 instead of the kernel's fp32 sums, ~1e-6 apart), so about 2 of a row's ~1000
//!   non-zero hidden values round to the neighbouring fp16 (one ulp, up to 2^-8 at h ~ 4); each
//!   such flip moves the row's outputs by <= ulp(h) |w2| (~1e-4 here) times rstd x gamma (~2).
//!   Also rel L2 <= 1e-3 for both.
//!
//! - head fold (`sam_head_fold`): slack 1e-5 (one fp32 chain of 16 products, then the fp16
//!   rounding); rows 1, 7, 56 and 61 (a partial CTA), two folds per launch (one with the bias
//!   dots, f32, checked to 1e-5 relative + 1e-6) and x read with a row stride (384, as the
//!   decoder's post-MLP buffers).
//!
//! The launcher's argument checks run without a GPU in tests/cpu_ops.rs; here the launchers
//! themselves reject bad arguments with `Error::Launch` before launching anything.

mod common;
#[path = "common/dense.rs"]
mod dense;

use common::{gpu_available, Rng};
use dense::{
    assert_runs_identical, check_elements, differing_bits, download_f16, expect_launch_error,
    layer_norm_row, poisoned, random_f16, random_f32, region, upload,
};
use finesam::gpu::DeviceBuffer;
use finesam::ops::sam_tokens::{
    launch_head_fold, launch_token_linear, launch_token_mlp, select_token_mlp_tile,
    token_mlp_scratch_bytes, token_mlp_tile_rows, HeadFold, TokenLinearArgs, TokenMlpArgs,
    TOKEN_DIM as D, TOKEN_MLP_HIDDEN as HID,
};
use finesam::ops::DeviceRegion;
use finesam::Gpu;
use half::f16;

const ROWS: [usize; 6] = [1, 7, 56, 224, 483, 2208];
const MAX_ROWS: usize = 2208;
/// Poisoned rows past every output (a write there is a failure).
const TAIL_ROWS: usize = 16;
const EPS: f32 = 1e-5;
const ROUNDING: f64 = 1.0 / 2048.0;
const LINEAR_SLACK: f64 = 1e-4;
const MLP_SLACK: f64 = 5e-4;
const REL_L2: f64 = 1e-3;
const POISON: u16 = 0xffff;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `x [rows, k] @ w[n, k]^T + bias` in f64.
fn linear(x: &[f64], w: &[f64], bias: &[f64], k: usize) -> Vec<f64> {
    let n = bias.len();
    let mut y = Vec::with_capacity(x.len() / k * n);
    for row in x.chunks_exact(k) {
        for (j, wr) in w.chunks_exact(k).enumerate() {
            y.push(dot(row, wr) + bias[j]);
        }
    }
    y
}

/// LayerNorm of every 256-wide row.
fn norm_rows(s: &[f64], gamma: &[f64], beta: &[f64]) -> Vec<f64> {
    s.chunks_exact(D)
        .flat_map(|row| layer_norm_row(row, gamma, beta, EPS as f64))
        .collect()
}

/// Downloads `rows` rows of 256 fp16 from a buffer of `rows + TAIL_ROWS` rows, checks the tail
/// still holds the poison, and returns the output bits.
fn read_rows(gpu: &Gpu, y: &DeviceBuffer, rows: usize, what: &str) -> Vec<f16> {
    let all = download_f16(gpu, y);
    assert_eq!(all.len(), (rows + TAIL_ROWS) * D);
    let stray = all[rows * D..]
        .iter()
        .filter(|v| v.to_bits() != POISON)
        .count();
    assert_eq!(stray, 0, "{what}: {stray} values written past the output");
    all[..rows * D].to_vec()
}

/// A buffer of `rows + TAIL_ROWS` rows of 256 fp16: `values` (rows x 256) then poison.
fn rows_then_poison(gpu: &Gpu, values: &[f16]) -> DeviceBuffer {
    let buffer = poisoned(gpu, values.len() + TAIL_ROWS * D);
    gpu.upload(buffer.ptr(), bytemuck::cast_slice(values))
        .unwrap();
    buffer
}

/// Checks `out` against `reference` (per element: 2^-11 |ref| + slack; rel L2) and that its
/// bits equal the first rows of the largest case's output.
fn check(what: &str, out: &[f16], reference: &[f64], slack: f64, largest: Option<&[f16]>) {
    let values: Vec<f64> = out.iter().map(|v| v.to_f64()).collect();
    check_elements(
        what,
        &values,
        reference,
        |_, r| ROUNDING * r.abs() + slack,
        |i| format!("element {i} (row {}, column {})", i / D, i % D),
        REL_L2,
    );
    if let Some(largest) = largest {
        let differing = differing_bits(out, largest);
        assert_eq!(
            differing, 0,
            "{what}: {differing} values differ from the same rows of the {MAX_ROWS}-row launch"
        );
    }
}

/// How the residual is passed in a token-linear case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Residual {
    None,
    Separate,
    InPlace,
}

#[test]
fn token_linear_matches_reference() {
    if !gpu_available("token_linear_matches_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x7031_0001);
    for k in [128usize, 256] {
        let (xh, xf) = random_f16(&mut rng, MAX_ROWS * k, -1.0, 1.0);
        let scale = 1.0 / (k as f64).sqrt();
        let (wh, wf) = random_f16(&mut rng, D * k, -scale, scale);
        let (bh, bf) = random_f32(&mut rng, D, -0.5, 0.5);
        // The residual stream sits around 3: the variance must come from centred values.
        let (rh, rf) = random_f16(&mut rng, MAX_ROWS * D, 2.0, 4.0);
        let (gh, gf) = random_f32(&mut rng, D, 0.5, 1.5);
        let (betah, betaf) = random_f32(&mut rng, D, -0.5, 0.5);
        let pre = linear(&xf, &wf, &bf, k);
        let (x, w, b, g, beta) = (
            upload(&gpu, &xh),
            upload(&gpu, &wh),
            upload(&gpu, &bh),
            upload(&gpu, &gh),
            upload(&gpu, &betah),
        );
        let residual = upload(&gpu, &rh);
        for mode in [Residual::None, Residual::Separate, Residual::InPlace] {
            let sum: Vec<f64> = match mode {
                Residual::None => pre.clone(),
                _ => pre.iter().zip(&rf).map(|(p, r)| p + r).collect(),
            };
            let reference = norm_rows(&sum, &gf, &betaf);
            let mut largest: Option<Vec<f16>> = None;
            for rows in ROWS.iter().rev().copied() {
                let y = if mode == Residual::InPlace {
                    rows_then_poison(&gpu, &rh[..rows * D])
                } else {
                    poisoned(&gpu, (rows + TAIL_ROWS) * D)
                };
                let args = TokenLinearArgs {
                    rows,
                    k,
                    x: region(&x),
                    weight: region(&w),
                    bias: region(&b),
                    residual: match mode {
                        Residual::None => None,
                        Residual::Separate => Some(region(&residual)),
                        Residual::InPlace => Some(region(&y)),
                    },
                    norm: (region(&g), region(&beta)),
                    eps: EPS,
                    y: region(&y),
                };
                launch_token_linear(&gpu, &args).unwrap();
                let what = format!("token linear k={k} rows={rows} residual={mode:?}");
                let out = read_rows(&gpu, &y, rows, &what);
                check(
                    &what,
                    &out,
                    &reference[..rows * D],
                    LINEAR_SLACK,
                    largest.as_deref().map(|l| &l[..rows * D]),
                );
                if largest.is_none() {
                    largest = Some(out);
                }
            }
        }
    }
}

/// Seeded MLP operands for `MAX_ROWS` rows (fp16 / f32 on the device, f64 copies for the
/// reference).
struct MlpCase {
    x: Vec<f16>,
    buffers: [DeviceBuffer; 6],
    /// x, W1, b1, W2, b2, gamma, beta as f64.
    f64s: [Vec<f64>; 7],
}

impl MlpCase {
    fn new(gpu: &Gpu, seed: u64) -> MlpCase {
        let mut rng = Rng::new(seed);
        // x is the LayerNorm'd residual stream; offset so the norm's centring matters.
        let (xh, xf) = random_f16(&mut rng, MAX_ROWS * D, 1.0, 3.0);
        let s1 = 1.0 / (D as f64).sqrt();
        let s2 = 1.0 / (HID as f64).sqrt();
        let (w1h, w1f) = random_f16(&mut rng, HID * D, -s1, s1);
        let (b1h, b1f) = random_f32(&mut rng, HID, -0.5, 0.5);
        let (w2h, w2f) = random_f16(&mut rng, D * HID, -s2, s2);
        let (b2h, b2f) = random_f32(&mut rng, D, -0.5, 0.5);
        let (gh, gf) = random_f32(&mut rng, D, 0.5, 1.5);
        let (betah, betaf) = random_f32(&mut rng, D, -0.5, 0.5);
        let buffers = [
            upload(gpu, &w1h),
            upload(gpu, &b1h),
            upload(gpu, &w2h),
            upload(gpu, &b2h),
            upload(gpu, &gh),
            upload(gpu, &betah),
        ];
        MlpCase {
            x: xh,
            buffers,
            f64s: [xf, w1f, b1f, w2f, b2f, gf, betaf],
        }
    }

    /// `LayerNorm(x + lin2(h))` of every row in f64, h = fp16(relu(lin1(x))) rounded as the
    /// kernel (and the unfused lin1 GEMM) stores it.
    fn reference(&self) -> Vec<f64> {
        let [xf, w1f, b1f, w2f, b2f, gf, betaf] = &self.f64s;
        let h: Vec<f64> = linear(xf, w1f, b1f, D)
            .into_iter()
            .map(|v| f16::from_f64(v.max(0.0)).to_f64())
            .collect();
        let sum: Vec<f64> = linear(&h, w2f, b2f, HID)
            .into_iter()
            .zip(xf)
            .map(|(m, x)| m + x)
            .collect();
        norm_rows(&sum, gf, betaf)
    }

    fn args(
        &self,
        rows: usize,
        x: &DeviceBuffer,
        scratch: &DeviceBuffer,
        y: &DeviceBuffer,
    ) -> TokenMlpArgs {
        let [w1, b1, w2, b2, g, beta] = &self.buffers;
        TokenMlpArgs {
            rows,
            x: region(x),
            lin1: (region(w1), region(b1)),
            lin2: (region(w2), region(b2)),
            norm: (region(g), region(beta)),
            eps: EPS,
            scratch: region(scratch),
            y: region(y),
        }
    }
}

/// A scratch buffer for `rows` with 4 KB of poison past what the launch may touch, and a check
/// that the poison is intact.
fn scratch_for(gpu: &Gpu, rows: usize) -> DeviceBuffer {
    let buffer = gpu.alloc(token_mlp_scratch_bytes(rows) + 4096).unwrap();
    gpu.memset(buffer.ptr(), 0xff, buffer.len()).unwrap();
    buffer
}

fn scratch_tail_intact(gpu: &Gpu, scratch: &DeviceBuffer, rows: usize) -> bool {
    let mut bytes = vec![0u8; scratch.len()];
    gpu.download(&mut bytes, scratch.ptr()).unwrap();
    gpu.synchronize().unwrap();
    bytes[token_mlp_scratch_bytes(rows)..]
        .iter()
        .all(|&b| b == 0xff)
}

#[test]
fn token_mlp_matches_reference() {
    if !gpu_available("token_mlp_matches_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let case = MlpCase::new(&gpu, 0x7031_0002);
    let reference = case.reference();
    let kernels = gpu.kernels();
    for in_place in [false, true] {
        let mut largest: Option<Vec<f16>> = None;
        for rows in ROWS.iter().rev().copied() {
            let scratch = scratch_for(&gpu, rows);
            let y = if in_place {
                let y = rows_then_poison(&gpu, &case.x[..rows * D]);
                launch_token_mlp(&gpu, &case.args(rows, &y, &scratch, &y)).unwrap();
                y
            } else {
                let x = upload(&gpu, &case.x[..rows * D]);
                let y = poisoned(&gpu, (rows + TAIL_ROWS) * D);
                launch_token_mlp(&gpu, &case.args(rows, &x, &scratch, &y)).unwrap();
                y
            };
            let tile = select_token_mlp_tile(
                rows,
                kernels.sm_count() as usize,
                kernels.smem_per_block_optin(),
            )
            .map(token_mlp_tile_rows);
            let what = format!("token mlp rows={rows} in_place={in_place} (row tile {tile:?})");
            let out = read_rows(&gpu, &y, rows, &what);
            assert!(
                scratch_tail_intact(&gpu, &scratch, rows),
                "{what}: wrote past the scratch"
            );
            check(
                &what,
                &out,
                &reference[..rows * D],
                MLP_SLACK,
                largest.as_deref().map(|l| &l[..rows * D]),
            );
            if largest.is_none() {
                largest = Some(out);
            }
        }
    }
}

#[test]
fn head_fold_matches_reference() {
    if !gpu_available("head_fold_matches_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    const W: usize = 128;
    const STRIDE: usize = 384;
    let mut rng = Rng::new(0xf01d);
    for rows in [1usize, 7, 56, 61] {
        // Fold 0: x packed (stride 128) with a bias; fold 1: x at column 128 of 384-wide rows.
        let (x0h, x0) = random_f16(&mut rng, rows * W, -4.0, 4.0);
        let (x1h, x1) = random_f16(&mut rng, rows * STRIDE, -4.0, 4.0);
        let (m0h, m0) = random_f16(&mut rng, W * D, -0.25, 0.25);
        let (m1h, m1) = random_f16(&mut rng, W * D, -0.25, 0.25);
        let (b0f, b0) = random_f32(&mut rng, W, -1.0, 1.0);
        let scales = [0.25f64, 1.0];
        let (x0d, x1d) = (upload(&gpu, &x0h), upload(&gpu, &x1h));
        let (m0d, m1d, b0d) = (upload(&gpu, &m0h), upload(&gpu, &m1h), upload(&gpu, &b0f));
        let y0 = poisoned(&gpu, (rows * 8 + TAIL_ROWS) * D);
        let y1 = poisoned(&gpu, (rows * 8 + TAIL_ROWS) * D);
        let yb = upload(&gpu, &vec![f32::NAN; rows * 8 + 4]);
        let x1_region = DeviceRegion::new(x1d.ptr() + 2 * W as u64, (rows * STRIDE - W) * 2);
        let folds = [
            HeadFold {
                x: region(&x0d),
                x_stride: W,
                weight: region(&m0d),
                bias: Some((region(&b0d), region(&yb))),
                scale: scales[0] as f32,
                y: region(&y0),
            },
            HeadFold {
                x: x1_region,
                x_stride: STRIDE,
                weight: region(&m1d),
                bias: None,
                scale: scales[1] as f32,
                y: region(&y1),
            },
        ];
        launch_head_fold(&gpu, rows, &folds).unwrap();
        let reference = |x: &[f64], stride: usize, col: usize, m: &[f64], scale: f64| {
            let mut out = vec![0f64; rows * 8 * D];
            for r in 0..rows {
                for h in 0..8 {
                    for c in 0..D {
                        let mut acc = 0f64;
                        for d in 0..16 {
                            acc += x[r * stride + col + 16 * h + d] * m[(16 * h + d) * D + c];
                        }
                        out[(r * 8 + h) * D + c] = scale * acc;
                    }
                }
            }
            out
        };
        let what0 = format!("head fold {rows} rows, packed x");
        let what1 = format!("head fold {rows} rows, strided x");
        let out0 = read_rows(&gpu, &y0, rows * 8, &what0);
        let out1 = read_rows(&gpu, &y1, rows * 8, &what1);
        for (what, out, reference) in [
            (&what0, &out0, reference(&x0, W, 0, &m0, scales[0])),
            (&what1, &out1, reference(&x1, STRIDE, W, &m1, scales[1])),
        ] {
            let values: Vec<f64> = out.iter().map(|v| v.to_f64()).collect();
            check_elements(
                what,
                &values,
                &reference,
                |_, r| ROUNDING * r.abs() + 1e-5,
                |i| format!("row {} head {} column {}", i / D / 8, i / D % 8, i % D),
                REL_L2,
            );
        }
        let mut bias_out = vec![0f32; rows * 8 + 4];
        gpu.download(bytemuck::cast_slice_mut(&mut bias_out), yb.ptr())
            .unwrap();
        gpu.synchronize().unwrap();
        assert!(
            bias_out[rows * 8..].iter().all(|v| v.is_nan()),
            "bias dots written past the end"
        );
        let bias_ref: Vec<f64> = (0..rows * 8)
            .map(|i| {
                let (r, h) = (i / 8, i % 8);
                scales[0]
                    * (0..16)
                        .map(|d| x0[r * W + 16 * h + d] * b0[16 * h + d])
                        .sum::<f64>()
            })
            .collect();
        let bias_gpu: Vec<f64> = bias_out[..rows * 8].iter().map(|&v| v as f64).collect();
        check_elements(
            &format!("head fold {rows} rows, bias dots"),
            &bias_gpu,
            &bias_ref,
            |_, r| 1e-5 * r.abs() + 1e-6,
            |i| format!("row {} head {}", i / 8, i % 8),
            REL_L2,
        );
    }
    // Bad arguments are rejected before launching.
    let x = poisoned(&gpu, 7 * 128);
    let m = poisoned(&gpu, 128 * D);
    let y = poisoned(&gpu, 56 * D);
    let fold = HeadFold {
        x: region(&x),
        x_stride: 128,
        weight: region(&m),
        bias: None,
        scale: 1.0,
        y: region(&y),
    };
    expect_launch_error("short y", launch_head_fold(&gpu, 8, &[fold]));
    expect_launch_error("no folds", launch_head_fold(&gpu, 7, &[]));
    expect_launch_error(
        "narrow stride",
        launch_head_fold(
            &gpu,
            7,
            &[HeadFold {
                x_stride: 64,
                ..fold
            }],
        ),
    );
    launch_head_fold(&gpu, 7, &[fold]).unwrap();
}

#[test]
fn token_ops_are_deterministic() {
    if !gpu_available("token_ops_are_deterministic") {
        return;
    }
    // No float atomics: the same launch gives the same bits, whatever the scratch held before
    // (poisoned between the runs) and whatever ran in between.
    let gpu = Gpu::new(0).unwrap();
    let case = MlpCase::new(&gpu, 0x7031_0003);
    let rows = 483;
    let x = upload(&gpu, &case.x[..rows * D]);
    let y = poisoned(&gpu, (rows + TAIL_ROWS) * D);
    let scratch = scratch_for(&gpu, rows);
    let args = case.args(rows, &x, &scratch, &y);
    let mut runs = Vec::new();
    for _ in 0..3 {
        gpu.memset(scratch.ptr(), 0xff, scratch.len()).unwrap();
        launch_token_mlp(&gpu, &args).unwrap();
        runs.push(read_rows(&gpu, &y, rows, "token mlp repeat"));
    }
    // The linear op on the same rows (K 256), three times.
    let mut rng = Rng::new(0x7031_0004);
    let (wh, _) = random_f16(&mut rng, D * D, -0.0625, 0.0625);
    let (bh, _) = random_f32(&mut rng, D, -0.5, 0.5);
    let w = upload(&gpu, &wh);
    let b = upload(&gpu, &bh);
    let [_, _, _, _, g, beta] = &case.buffers;
    let residual = upload(&gpu, &case.x[..rows * D]);
    let out = poisoned(&gpu, (rows + TAIL_ROWS) * D);
    let linear_args = TokenLinearArgs {
        rows,
        k: D,
        x: region(&x),
        weight: region(&w),
        bias: region(&b),
        residual: Some(region(&residual)),
        norm: (region(g), region(beta)),
        eps: EPS,
        y: region(&out),
    };
    let mut linear_runs = Vec::new();
    for _ in 0..3 {
        launch_token_linear(&gpu, &linear_args).unwrap();
        launch_token_mlp(&gpu, &args).unwrap(); // other work in between
        linear_runs.push(read_rows(&gpu, &out, rows, "token linear repeat"));
    }
    runs.push(read_rows(&gpu, &y, rows, "token mlp after"));
    assert_runs_identical("token mlp", &runs);
    assert_runs_identical("token linear", &linear_runs);
}

#[test]
fn token_launchers_reject_bad_arguments() {
    if !gpu_available("token_launchers_reject_bad_arguments") {
        return;
    }
    // Real buffers, bad shapes / alignment / aliasing: the launchers return Error::Launch
    // before launching anything (the same checks run without a GPU in tests/cpu_ops.rs).
    let gpu = Gpu::new(0).unwrap();
    let case = MlpCase::new(&gpu, 0x7031_0005);
    let rows = 7;
    // Room past the rows, so shifted regions fail on overlap rather than on size.
    let x = upload(&gpu, &case.x[..(rows + TAIL_ROWS) * D]);
    let y = poisoned(&gpu, (rows + TAIL_ROWS) * D);
    let scratch = scratch_for(&gpu, rows);
    let good = case.args(rows, &x, &scratch, &y);
    let shifted =
        |r: DeviceRegion, bytes: u64| DeviceRegion::new(r.ptr + bytes, r.bytes - bytes as usize);
    let short = |r: DeviceRegion| DeviceRegion::new(r.ptr, r.bytes - 16);
    for (what, bad) in [
        ("no rows", TokenMlpArgs { rows: 0, ..good }),
        (
            "more rows than x holds",
            TokenMlpArgs {
                rows: rows + TAIL_ROWS + 1,
                ..good
            },
        ),
        (
            "NaN eps",
            TokenMlpArgs {
                eps: f32::NAN,
                ..good
            },
        ),
        (
            "misaligned x",
            TokenMlpArgs {
                x: shifted(good.x, 2),
                ..good
            },
        ),
        (
            "short scratch",
            TokenMlpArgs {
                scratch: DeviceRegion::new(scratch.ptr(), token_mlp_scratch_bytes(rows) - 4),
                ..good
            },
        ),
        (
            "short lin2 weight",
            TokenMlpArgs {
                lin2: (short(good.lin2.0), good.lin2.1),
                ..good
            },
        ),
        (
            "y partly over x",
            TokenMlpArgs {
                y: shifted(good.x, 512),
                ..good
            },
        ),
        (
            "scratch over x",
            TokenMlpArgs {
                scratch: DeviceRegion::new(good.x.ptr, token_mlp_scratch_bytes(rows)),
                ..good
            },
        ),
        (
            "null norm bias",
            TokenMlpArgs {
                norm: (good.norm.0, DeviceRegion::new(0, 1024)),
                ..good
            },
        ),
    ] {
        expect_launch_error(what, launch_token_mlp(&gpu, &bad));
    }
    let [w1, b1, ..] = &case.buffers;
    let linear = TokenLinearArgs {
        rows,
        k: D,
        x: region(&x),
        weight: DeviceRegion::new(w1.ptr(), D * D * 2),
        bias: DeviceRegion::new(b1.ptr(), D * 4),
        residual: None,
        norm: good.norm,
        eps: EPS,
        y: region(&y),
    };
    for (what, bad) in [
        ("k 192", TokenLinearArgs { k: 192, ..linear }),
        ("k 512", TokenLinearArgs { k: 512, ..linear }),
        (
            "too many rows",
            TokenLinearArgs {
                rows: 1 << 20,
                ..linear
            },
        ),
        (
            "misaligned weight",
            TokenLinearArgs {
                weight: shifted(linear.weight, 8),
                ..linear
            },
        ),
        (
            "short bias",
            TokenLinearArgs {
                bias: short(linear.bias),
                ..linear
            },
        ),
        (
            "short residual",
            TokenLinearArgs {
                residual: Some(DeviceRegion::new(linear.y.ptr, rows * D * 2 - 16)),
                ..linear
            },
        ),
        (
            "residual partly over y",
            TokenLinearArgs {
                residual: Some(shifted(linear.y, 512)),
                ..linear
            },
        ),
        (
            "y over x",
            TokenLinearArgs {
                y: linear.x,
                ..linear
            },
        ),
        (
            "negative eps",
            TokenLinearArgs {
                eps: -1.0,
                ..linear
            },
        ),
    ] {
        expect_launch_error(what, launch_token_linear(&gpu, &bad));
    }
    // The good arguments launch, and nothing above wrote y.
    let untouched = download_f16(&gpu, &y);
    assert!(
        untouched.iter().all(|v| v.to_bits() == POISON),
        "a rejected launch wrote y"
    );
    launch_token_mlp(&gpu, &good).unwrap();
    launch_token_linear(&gpu, &linear).unwrap();
    gpu.synchronize().unwrap();
}

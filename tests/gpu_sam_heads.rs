//! GPU tests of the mask decoder's head MLPs (kernels/sam_heads.cu, `sam_heads`: the IoU head +
//! 4 hypernetwork MLPs in one launch) against an f64 CPU reference on seeded random fp16 queries
//! and weights (f32 biases), prompts 1, 8 and 32 (one and two 16-prompt tiles) and 7 or 69
//! tokens per prompt. The output `[5][stride][32]` uses stride = prompts + 3 and is poisoned (fp16
//! NaN) first, with poisoned rows past it: every row of a prompt in use must be written, no other
//! row may be. The IoU head's last layer is padded 4 -> 32 with zero rows and biases, as the
//! decoder loads it, so its columns 4..32 must be exactly 0. The queries of a smaller case are a
//! prefix of the 32-prompt case's, so its output must equal the same rows of that launch bit for
//! bit (a prompt's result does not depend on its tile's other rows). Skipped with a printed
//! reason where there is no GPU.
//!
//! Tolerance, per output, |gpu - reference| <= 2^-11 |reference| + 1e-3, and rel L2 <= 1e-3 per
//! case. 2^-11 is the one fp16 rounding of the output (half an ulp, relative). The reference
//! rounds both hidden activations to fp16 as the kernel does, but from f64 sums instead of the
//! kernel's fp32 mma sums (~1e-6 relative apart), so now and then a hidden value rounds to the
//! neighbouring fp16: one ulp (<= 2^-10 at |h| < 2, the activations here are O(1)) times a
//! weight (<= 0.16) moves the next layer by <= 1.6e-4; a few such flips per row stay well inside
//! the 1e-3 slack.
//!
//! The launcher's argument checks run without a GPU in tests/cpu_ops.rs; here the launcher
//! itself rejects bad arguments with `Error::Launch` before launching anything.

mod common;
#[path = "common/dense.rs"]
mod dense;

use common::{gpu_available, Rng};
use dense::{
    assert_runs_identical, check_elements, differing_bits, download_f16, expect_launch_error,
    poisoned, random_f16, random_f32, region,
};
use finesam::gpu::DeviceBuffer;
use finesam::ops::sam_heads::{
    heads_output_bytes, launch_heads, HeadsArgs, HEAD_HIDDEN as D, HEAD_MLPS as MLPS,
    HEAD_OUT as OUT, IOU_OUTPUTS,
};
use finesam::ops::DeviceRegion;
use finesam::Gpu;
use half::f16;

const PROMPTS: [usize; 3] = [1, 8, 32];
const MAX_PROMPTS: usize = 32;
const TOKENS: [usize; 2] = [7, 69];
/// Output rows per MLP block beyond the prompts (stride = prompts + STRIDE_PAD).
const STRIDE_PAD: usize = 3;
/// Poisoned rows of 32 past the output (a write there is a failure).
const TAIL_ROWS: usize = 16;
const ROUNDING: f64 = 1.0 / 2048.0;
const SLACK: f64 = 1e-3;
const REL_L2: f64 = 1e-3;
const POISON: u16 = 0xffff;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Seeded head weights, stacked as the decoder stores them (fp16 weights, f32 biases; the IoU
/// head's last layer padded with zeros), on the device and as f64.
struct Weights {
    buffers: [(DeviceBuffer, DeviceBuffer); 3],
    /// Per layer: weight `[5][n][256]`, bias `[5][n]`.
    f64s: [(Vec<f64>, Vec<f64>); 3],
}

impl Weights {
    fn new(gpu: &Gpu, rng: &mut Rng) -> Weights {
        // He-like scale (U(-s, s), s = sqrt(6 / 256)): activations stay O(1) through the ReLUs.
        let s = (6.0 / D as f64).sqrt();
        let mut layer = |n: usize, pad_iou: bool| {
            let (mut wh, mut wf) = random_f16(rng, MLPS * n * D, -s, s);
            let (mut bh, mut bf) = random_f32(rng, MLPS * n, -0.5, 0.5);
            if pad_iou {
                // MLP 0 keeps only its first 4 output rows.
                for v in &mut wh[IOU_OUTPUTS * D..n * D] {
                    *v = f16::ZERO;
                }
                for v in &mut wf[IOU_OUTPUTS * D..n * D] {
                    *v = 0.0;
                }
                for v in &mut bh[IOU_OUTPUTS..n] {
                    *v = 0.0;
                }
                for v in &mut bf[IOU_OUTPUTS..n] {
                    *v = 0.0;
                }
            }
            let buffers = (dense::upload(gpu, &wh), dense::upload(gpu, &bh));
            (buffers, (wf, bf))
        };
        let (l1, f1) = layer(D, false);
        let (l2, f2) = layer(D, false);
        let (l3, f3) = layer(OUT, true);
        Weights {
            buffers: [l1, l2, l3],
            f64s: [f1, f2, f3],
        }
    }

    fn regions(&self) -> [(DeviceRegion, DeviceRegion); 3] {
        [0, 1, 2].map(|l| (region(&self.buffers[l].0), region(&self.buffers[l].1)))
    }

    /// MLP `mlp` of one 256-wide row in f64, the hidden activations rounded to fp16 as stored.
    fn mlp(&self, mlp: usize, x: &[f64]) -> Vec<f64> {
        let mut h = x.to_vec();
        for (l, (w, b)) in self.f64s.iter().enumerate() {
            let n = b.len() / MLPS;
            h = (0..n)
                .map(|j| {
                    let row = &w[(mlp * n + j) * D..(mlp * n + j + 1) * D];
                    let v = dot(&h, row) + b[mlp * n + j];
                    if l < 2 {
                        f16::from_f64(v.max(0.0)).to_f64()
                    } else {
                        v
                    }
                })
                .collect();
        }
        h
    }
}

/// Reference rows `[5][prompts]` (each 32 values) for `prompts` prompts of `tokens` tokens.
fn reference(w: &Weights, xf: &[f64], prompts: usize, tokens: usize) -> Vec<Vec<f64>> {
    let mut out = Vec::with_capacity(MLPS * prompts);
    for mlp in 0..MLPS {
        for p in 0..prompts {
            let at = (p * tokens + mlp) * D;
            out.push(w.mlp(mlp, &xf[at..at + D]));
        }
    }
    out
}

/// Launches one case into a fresh poisoned output and returns its `[5][prompts][32]` values
/// (checking the poison of every row that must not be written).
fn run_case(
    gpu: &Gpu,
    w: &Weights,
    x: &DeviceBuffer,
    prompts: usize,
    tokens: usize,
    what: &str,
) -> Vec<f16> {
    let stride = prompts + STRIDE_PAD;
    let y = poisoned(gpu, heads_output_bytes(stride) / 2 + TAIL_ROWS * OUT);
    let args = HeadsArgs {
        prompts,
        tokens,
        queries: DeviceRegion::new(x.ptr(), prompts * tokens * D * 2),
        layers: w.regions(),
        stride,
        y: region(&y),
    };
    launch_heads(gpu, &args).unwrap();
    let all = download_f16(gpu, &y);
    let mut used = Vec::with_capacity(MLPS * prompts * OUT);
    let mut stray = 0;
    for (row, values) in all.chunks_exact(OUT).enumerate() {
        let (mlp, p) = (row / stride, row % stride);
        if mlp < MLPS && p < prompts {
            used.extend_from_slice(values);
        } else {
            stray += values.iter().filter(|v| v.to_bits() != POISON).count();
        }
    }
    assert_eq!(
        stray, 0,
        "{what}: {stray} values written outside the output rows"
    );
    used
}

fn check(what: &str, out: &[f16], reference: &[Vec<f64>], prompts: usize) {
    let (mut values, mut refs, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for (r, (row, want)) in out.chunks_exact(OUT).zip(reference).enumerate() {
        let (mlp, p) = (r / prompts, r % prompts);
        for (c, (&g, &want)) in row.iter().zip(want).enumerate() {
            let g = g.to_f64();
            if mlp == 0 && c >= IOU_OUTPUTS {
                assert!(
                    g == 0.0,
                    "{what}: IoU head prompt {p} padded column {c} = {g}, expected 0"
                );
                continue;
            }
            values.push(g);
            refs.push(want);
            names.push((mlp, p, c));
        }
    }
    check_elements(
        what,
        &values,
        &refs,
        |_, r| ROUNDING * r.abs() + SLACK,
        |i| {
            let (mlp, p, c) = names[i];
            format!("mlp {mlp} prompt {p} column {c}")
        },
        REL_L2,
    );
}

/// `[MAX_PROMPTS, tokens, 256]` seeded queries (LayerNorm outputs: O(1), either sign).
fn queries(gpu: &Gpu, rng: &mut Rng, tokens: usize) -> (DeviceBuffer, Vec<f64>) {
    let (xh, xf) = random_f16(rng, MAX_PROMPTS * tokens * D, -2.0, 2.0);
    (dense::upload(gpu, &xh), xf)
}

#[test]
fn heads_match_reference() {
    if !gpu_available("heads_match_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x7031_0101);
    let w = Weights::new(&gpu, &mut rng);
    for tokens in TOKENS {
        let (x, xf) = queries(&gpu, &mut rng, tokens);
        let full = reference(&w, &xf, MAX_PROMPTS, tokens);
        let mut largest: Option<Vec<f16>> = None;
        for prompts in PROMPTS.iter().rev().copied() {
            let what = format!("heads prompts={prompts} tokens={tokens}");
            let out = run_case(&gpu, &w, &x, prompts, tokens, &what);
            // The reference rows of these prompts (full is [5][32] rows).
            let want: Vec<Vec<f64>> = (0..MLPS)
                .flat_map(|mlp| full[mlp * MAX_PROMPTS..mlp * MAX_PROMPTS + prompts].to_vec())
                .collect();
            check(&what, &out, &want, prompts);
            match &largest {
                None => largest = Some(out),
                Some(l) => {
                    let differing: usize = (0..MLPS)
                        .map(|mlp| {
                            differing_bits(
                                &out[mlp * prompts * OUT..(mlp + 1) * prompts * OUT],
                                &l[mlp * MAX_PROMPTS * OUT..][..prompts * OUT],
                            )
                        })
                        .sum();
                    assert_eq!(
                        differing, 0,
                        "{what}: {differing} values differ from the {MAX_PROMPTS}-prompt launch"
                    );
                }
            }
        }
    }
}

#[test]
fn heads_are_deterministic() {
    if !gpu_available("heads_are_deterministic") {
        return;
    }
    // The same launch gives the same bits, whatever ran in between (another shape here).
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x7031_0102);
    let w = Weights::new(&gpu, &mut rng);
    let (x, _) = queries(&gpu, &mut rng, 69);
    let (x7, _) = queries(&gpu, &mut rng, 7);
    let mut runs = Vec::new();
    for i in 0..3 {
        runs.push(run_case(&gpu, &w, &x, 32, 69, "heads repeat"));
        run_case(&gpu, &w, &x7, 8 + i, 7, "heads in between");
    }
    assert_runs_identical("heads", &runs);
}

#[test]
fn heads_launcher_rejects_bad_arguments() {
    if !gpu_available("heads_launcher_rejects_bad_arguments") {
        return;
    }
    // Real buffers, bad shapes / alignment / aliasing: Error::Launch before launching anything
    // (the same checks run without a GPU in tests/cpu_ops.rs).
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x7031_0103);
    let w = Weights::new(&gpu, &mut rng);
    let (prompts, tokens) = (8, 7);
    let (x, _) = queries(&gpu, &mut rng, tokens);
    // Room for 4 more prompts, so "more prompts" fails on the queries, not on y.
    let y = poisoned(&gpu, heads_output_bytes(prompts + 4) / 2);
    let good = HeadsArgs {
        prompts,
        tokens,
        queries: DeviceRegion::new(x.ptr(), prompts * tokens * D * 2),
        layers: w.regions(),
        stride: prompts,
        y: region(&y),
    };
    let shifted =
        |r: DeviceRegion, bytes: u64| DeviceRegion::new(r.ptr + bytes, r.bytes - bytes as usize);
    let short = |r: DeviceRegion| DeviceRegion::new(r.ptr, r.bytes - 16);
    let with_layer = |l: usize, layer: (DeviceRegion, DeviceRegion)| {
        let mut layers = good.layers;
        layers[l] = layer;
        HeadsArgs { layers, ..good }
    };
    for (what, bad) in [
        ("no prompts", HeadsArgs { prompts: 0, ..good }),
        ("4 tokens", HeadsArgs { tokens: 4, ..good }),
        (
            "stride below prompts",
            HeadsArgs {
                stride: prompts - 1,
                ..good
            },
        ),
        (
            "more prompts than the queries hold",
            HeadsArgs {
                prompts: prompts + 1,
                stride: prompts + 1,
                ..good
            },
        ),
        (
            // y's buffer has room for 4 more prompts: one 16 bytes short of `stride` rows.
            "short y",
            HeadsArgs {
                y: DeviceRegion::new(good.y.ptr, heads_output_bytes(prompts) - 16),
                ..good
            },
        ),
        (
            "misaligned queries",
            HeadsArgs {
                queries: shifted(good.queries, 2),
                ..good
            },
        ),
        (
            "short layer 2 weight",
            with_layer(1, (short(good.layers[1].0), good.layers[1].1)),
        ),
        (
            "short layer 3 bias",
            with_layer(2, (good.layers[2].0, short(good.layers[2].1))),
        ),
        (
            "null layer 1 bias",
            with_layer(0, (good.layers[0].0, DeviceRegion::new(0, 1 << 20))),
        ),
        (
            "y over the queries",
            HeadsArgs {
                y: shifted(good.queries, 512),
                ..good
            },
        ),
        (
            "y over the layer 2 weight",
            HeadsArgs {
                y: good.layers[1].0,
                ..good
            },
        ),
    ] {
        expect_launch_error(what, launch_heads(&gpu, &bad));
    }
    // Nothing above wrote y; the good arguments launch.
    let untouched = download_f16(&gpu, &y);
    assert!(
        untouched.iter().all(|v| v.to_bits() == POISON),
        "a rejected launch wrote y"
    );
    launch_heads(&gpu, &good).unwrap();
    gpu.synchronize().unwrap();
}

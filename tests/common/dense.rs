//! Helpers of the GPU kernel tests (tests/gpu_ops.rs, tests/gpu_tinyvit_ops.rs): seeded random
//! fp16/f32 operands, poisoned outputs, downloads, error measures and f64 references of the
//! activations and the depthwise convolution. Included with `#[path]` where needed.
#![allow(dead_code)]

use crate::common::Rng;
use finesam::gpu::DeviceBuffer;
use finesam::ops::conv::DepthwiseShape;
use finesam::ops::gemm::Activation;
use finesam::ops::DeviceRegion;
use finesam::{Error, Gpu};
use half::f16;

pub fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `n` fp16 values uniform in [lo, hi) and the same values as f64.
pub fn random_f16(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> (Vec<f16>, Vec<f64>) {
    let h: Vec<f16> = (0..n)
        .map(|_| f16::from_f64(uniform(rng, lo, hi)))
        .collect();
    let f = h.iter().map(|v| v.to_f64()).collect();
    (h, f)
}

/// `n` fp32 values uniform in [lo, hi) and the same values as f64.
pub fn random_f32(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> (Vec<f32>, Vec<f64>) {
    let v: Vec<f32> = (0..n).map(|_| uniform(rng, lo, hi) as f32).collect();
    let f = v.iter().map(|&x| x as f64).collect();
    (v, f)
}

pub fn upload<T: bytemuck::Pod>(gpu: &Gpu, values: &[T]) -> DeviceBuffer {
    let bytes: &[u8] = bytemuck::cast_slice(values);
    let buffer = gpu.alloc(bytes.len()).unwrap();
    gpu.upload(buffer.ptr(), bytes).unwrap();
    buffer
}

/// A device buffer of `n` fp16 elements filled with NaN (0xFFFF).
pub fn poisoned(gpu: &Gpu, n: usize) -> DeviceBuffer {
    let buffer = gpu.alloc(n * 2).unwrap();
    gpu.memset(buffer.ptr(), 0xff, n * 2).unwrap();
    buffer
}

pub fn download_f16(gpu: &Gpu, buffer: &DeviceBuffer) -> Vec<f16> {
    let mut bytes = vec![0u8; buffer.len()];
    gpu.download(&mut bytes, buffer.ptr()).unwrap();
    gpu.synchronize().unwrap();
    bytes
        .chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

pub fn region(buffer: &DeviceBuffer) -> DeviceRegion {
    DeviceRegion::of(buffer)
}

/// (relative L2 error, max abs error); a non-finite GPU value makes both infinite.
pub fn errors(gpu: &[f64], reference: &[f64]) -> (f64, f64) {
    assert_eq!(gpu.len(), reference.len());
    let (mut diff2, mut ref2, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (&g, &r) in gpu.iter().zip(reference) {
        if !g.is_finite() {
            return (f64::INFINITY, f64::INFINITY);
        }
        diff2 += (g - r) * (g - r);
        ref2 += r * r;
        max_abs = max_abs.max((g - r).abs());
    }
    ((diff2 / ref2.max(1e-30)).sqrt(), max_abs)
}

/// erf to ~1e-9 absolute: Maclaurin series for |x| <= 4 (f64 cancellation stays below 1e-9),
/// +-1 beyond (erfc(4) = 1.5e-8).
pub fn erf(x: f64) -> f64 {
    if x.abs() > 4.0 {
        return x.signum();
    }
    let (x2, mut term, mut sum) = (x * x, x, x);
    for n in 1..200 {
        term *= -x2 / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

pub fn activate(v: f64, act: Activation) -> f64 {
    match act {
        Activation::None => v,
        Activation::Gelu => 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2)),
        Activation::Relu => v.max(0.0),
    }
}

/// NHWC depthwise reference with tap-major weights [k*k, C].
pub fn depthwise_reference(
    s: &DepthwiseShape,
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    act: Activation,
) -> Vec<f64> {
    let (ho, wo) = s.output_size().unwrap();
    let c = s.channels;
    let mut y = vec![0.0; s.batch * ho * wo * c];
    for b in 0..s.batch {
        for oy in 0..ho {
            for ox in 0..wo {
                for ch in 0..c {
                    let mut acc = bias.map_or(0.0, |v| v[ch]);
                    for ky in 0..s.kernel {
                        let iy = (oy * s.stride + ky) as isize - s.padding as isize;
                        for kx in 0..s.kernel {
                            let ix = (ox * s.stride + kx) as isize - s.padding as isize;
                            if iy < 0 || ix < 0 || iy >= s.height as isize || ix >= s.width as isize
                            {
                                continue;
                            }
                            let xi =
                                ((b * s.height + iy as usize) * s.width + ix as usize) * c + ch;
                            acc += x[xi] * w[(ky * s.kernel + kx) * c + ch];
                        }
                    }
                    y[((b * ho + oy) * wo + ox) * c + ch] = activate(acc, act);
                }
            }
        }
    }
    y
}

pub fn expect_launch_error(what: &str, result: finesam::Result<()>) {
    match result {
        Err(Error::Launch { kernel, message }) => {
            println!("{what}: rejected by {kernel}: {message}")
        }
        other => panic!("{what}: expected Error::Launch, got {other:?}"),
    }
}

/// `(row - mean) / sqrt(var + eps) * gamma + beta` (biased variance), in f64.
pub fn layer_norm_row(row: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    row.iter()
        .zip(gamma.iter().zip(beta))
        .map(|(v, (g, b))| (v - mean) * rstd * g + b)
        .collect()
}

/// `PromptEncoder._embed_masks` (`mask_downscaling`) of one `[256, 256]` mask in f64, as NHWC
/// `[64 * 64, 256]`: Conv2d(1, 4, k2, s2) -> LayerNorm2d(4) -> GELU -> Conv2d(4, 16, k2, s2) ->
/// LayerNorm2d(16) -> GELU -> Conv2d(16, 256, k1), straight from the official definitions
/// (each conv output reads its own 2x2 input window). `params` is the packed f32 layout of
/// `finesam::ops::sam_decoder::mask_params` (the official tensors concatenated).
pub fn mask_downscaling_reference(params: &[f32], mask: &[f32]) -> Vec<f64> {
    use finesam::ops::sam_decoder::mask_params as mp;
    assert_eq!((params.len(), mask.len()), (mp::LEN, 256 * 256));
    let p = |at: usize, n: usize| -> Vec<f64> {
        params[at..at + n].iter().map(|&v| v as f64).collect()
    };
    let (w1, b1, g1, be1) = (p(mp::W1, 16), p(mp::B1, 4), p(mp::G1, 4), p(mp::BE1, 4));
    let (w2, b2, g2, be2) = (p(mp::W2, 256), p(mp::B2, 16), p(mp::G2, 16), p(mp::BE2, 16));
    let (w3, b3) = (p(mp::W3, 4096), p(mp::B3, 256));
    let eps = mp::EPS as f64;
    let gelu = |v: f64| activate(v, Activation::Gelu);
    // Conv2d(cin -> cout, k2, s2) over an NHWC map of side `side`, weights [cout, cin, 2, 2].
    let conv = |x: &[f64], side: usize, cin: usize, w: &[f64], b: &[f64]| -> Vec<f64> {
        let (out_side, cout) = (side / 2, b.len());
        let mut y = vec![0f64; out_side * out_side * cout];
        for oy in 0..out_side {
            for ox in 0..out_side {
                for o in 0..cout {
                    let mut s = b[o];
                    for i in 0..cin {
                        for dy in 0..2 {
                            for dx in 0..2 {
                                let px = (2 * oy + dy) * side + 2 * ox + dx;
                                s += w[((o * cin + i) * 2 + dy) * 2 + dx] * x[px * cin + i];
                            }
                        }
                    }
                    y[(oy * out_side + ox) * cout + o] = s;
                }
            }
        }
        y
    };
    let norm_gelu = |x: &mut [f64], c: usize, g: &[f64], b: &[f64]| {
        for px in x.chunks_exact_mut(c) {
            let normed = layer_norm_row(px, g, b, eps);
            for (v, n) in px.iter_mut().zip(normed) {
                *v = gelu(n);
            }
        }
    };
    let m: Vec<f64> = mask.iter().map(|&v| v as f64).collect();
    let mut h1 = conv(&m, 256, 1, &w1, &b1);
    norm_gelu(&mut h1, 4, &g1, &be1);
    let mut h2 = conv(&h1, 128, 4, &w2, &b2);
    norm_gelu(&mut h2, 16, &g2, &be2);
    let mut out = vec![0f64; 4096 * 256];
    for (px, h) in h2.chunks_exact(16).enumerate() {
        for o in 0..256 {
            out[px * 256 + o] = b3[o] + (0..16).map(|i| w3[o * 16 + i] * h[i]).sum::<f64>();
        }
    }
    out
}

/// Asserts every GPU value lies within `bound(i, reference)` of its reference (a non-finite GPU
/// value never does; `label(i)` names element i in the failure message) and the relative L2
/// error is at most `rel_l2`; prints max abs error, rel L2 and the worst error / bound.
pub fn check_elements(
    what: &str,
    gpu: &[f64],
    reference: &[f64],
    bound: impl Fn(usize, f64) -> f64,
    label: impl Fn(usize) -> String,
    rel_l2: f64,
) {
    let (rel, max_abs) = errors(gpu, reference);
    let mut worst = 0f64;
    for (i, (&g, &r)) in gpu.iter().zip(reference).enumerate() {
        let b = bound(i, r);
        let ratio = if g.is_finite() {
            (g - r).abs() / b
        } else {
            f64::INFINITY
        };
        assert!(
            ratio <= 1.0,
            "{what}: {} = {g}, reference {r}, bound {b:.2e}",
            label(i)
        );
        worst = worst.max(ratio);
    }
    println!("{what}: max abs {max_abs:.2e}, rel L2 {rel:.2e}, worst error / bound {worst:.2}");
    assert!(rel <= rel_l2, "{what}: rel L2 {rel:.3e} > {rel_l2:e}");
}

/// How many values differ bitwise between `a` and `b`.
pub fn differing_bits(a: &[f16], b: &[f16]) -> usize {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count()
}

/// Asserts (and prints) that every run is bitwise equal to the first.
pub fn assert_runs_identical(what: &str, runs: &[Vec<f16>]) {
    for (i, run) in runs.iter().enumerate().skip(1) {
        let differing = differing_bits(run, &runs[0]);
        println!("{what}: run {i}: {differing} values differ from run 0");
        assert_eq!(differing, 0, "{what}: run {i} differs");
    }
}

/// A zeroed key-split workspace of `(counter_slots, bytes)` as the token->image attentions'
/// workspace functions return it; None when nothing splits (0 bytes).
pub fn zeroed_workspace(
    gpu: &Gpu,
    (counter_slots, bytes): (usize, usize),
) -> Option<(
    DeviceBuffer,
    finesam::ops::sam_cross_attention::CrossAttentionWorkspace,
)> {
    if bytes == 0 {
        return None;
    }
    let buffer = gpu.alloc(bytes).unwrap();
    gpu.memset(buffer.ptr(), 0, bytes).unwrap();
    let ws = finesam::ops::sam_cross_attention::CrossAttentionWorkspace {
        ptr: buffer.ptr(),
        bytes,
        counter_slots,
    };
    Some((buffer, ws))
}

/// Asserts a key-split workspace's arrival counters are back at zero after a launch.
pub fn counters_zero(
    gpu: &Gpu,
    ws: &finesam::ops::sam_cross_attention::CrossAttentionWorkspace,
    what: &str,
) {
    let mut bytes = vec![0u8; ws.counter_slots * 4];
    gpu.download(&mut bytes, ws.ptr).unwrap();
    gpu.synchronize().unwrap();
    assert!(
        bytes.iter().all(|&b| b == 0),
        "{what}: arrival counters not reset"
    );
}

//! GPU tests of the dense kernels (GEMM, convolutions, LayerNorm) against f64 CPU references on
//! fresh seeded random inputs. Outputs are poisoned with 0xFF bytes (fp16 NaN) first, so an
//! element the kernel fails to write fails the test; elements it must not write (outside a
//! strided output) are checked to still hold the poison. Skipped with a printed reason where
//! there is no GPU.
//!
//! Tolerances (fp16 output, fp32 accumulation): GEMM and convolutions rel L2 <= 2e-3 (fp16
//! rounding of the output alone is ~3e-4 rms); LayerNorm max abs <= 1e-2 on unit-scale inputs.

mod common;
#[path = "common/dense.rs"]
mod dense;

use common::{gpu_available, Rng};
use dense::{
    activate, depthwise_reference, download_f16, errors, expect_launch_error, layer_norm_row,
    poisoned, random_f16, random_f32, region, upload,
};
use finesam::gpu::DeviceBuffer;
use finesam::gpu::Graph;
use finesam::ops::conv::{
    launch_conv2d, launch_conv2d_tile, launch_conv3x3_stem, launch_depthwise_conv2d, Conv2dShape,
    ConvArgs, DepthwiseArgs, DepthwiseShape, StemArgs,
};
use finesam::ops::gemm::{
    gemm_key, launch_gemm, launch_gemm_split, launch_gemm_tile, split_k_family, split_k_segments,
    Activation, Epilogue, GemmArgs, GemmProblem, GemmTile, Matrix, Residual, ResidualOrder,
};
use finesam::ops::norm::{launch_layer_norm, LayerNormArgs};
use finesam::ops::DeviceRegion;
use finesam::Gpu;
use half::f16;

const GEMM_REL_L2: f64 = 2e-3;
const CONV_REL_L2: f64 = 2e-3;
const LAYER_NORM_MAX_ABS: f64 = 1e-2;
const POISON: u16 = 0xffff;

// ---------------------------------------------------------------------------------------------
// Host helpers

/// Region starting `elements` fp16 values into `buffer`.
fn region_at(buffer: &DeviceBuffer, elements: usize) -> DeviceRegion {
    DeviceRegion::new(
        buffer.ptr() + (elements * 2) as u64,
        buffer.len() - elements * 2,
    )
}

/// Gathers `rows x cols` (times `batch`) from a strided fp16 buffer; returns the values and
/// how many elements outside them were written (no longer poison).
fn gather(
    out: &[f16],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    batch: usize,
    batch_stride: usize,
) -> (Vec<f64>, usize) {
    let mut inside = vec![false; out.len()];
    let mut values = Vec::with_capacity(rows * cols * batch);
    for b in 0..batch {
        for r in 0..rows {
            for c in 0..cols {
                let i = offset + b * batch_stride + r * row_stride + c;
                inside[i] = true;
                values.push(out[i].to_f64());
            }
        }
    }
    let stray = out
        .iter()
        .zip(&inside)
        .filter(|(v, &inside)| !inside && v.to_bits() != POISON)
        .count();
    (values, stray)
}

/// The epilogue on one accumulator value.
fn finish(
    acc: f64,
    alpha: f64,
    bias: f64,
    residual: Option<(f64, ResidualOrder)>,
    act: Activation,
) -> f64 {
    let v = alpha * acc + bias;
    match residual {
        None => activate(v, act),
        Some((r, ResidualOrder::AfterActivation)) => activate(v, act) + r,
        Some((r, ResidualOrder::BeforeActivation)) => activate(v + r, act),
    }
}

struct EpilogueRef<'a> {
    alpha: f64,
    bias: Option<&'a [f64]>,
    act: Activation,
    residual: Option<(&'a [f64], ResidualOrder)>,
}

/// Y[m, n] = epilogue(sum_k X[m, k] W[n, k]) for dense row-major operands.
fn gemm_reference(
    m: usize,
    n: usize,
    k: usize,
    x: &[f64],
    w: &[f64],
    e: &EpilogueRef<'_>,
) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let acc: f64 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
            let bias = e.bias.map_or(0.0, |b| b[j]);
            let res = e.residual.map(|(r, order)| (r[i * n + j], order));
            y[i * n + j] = finish(acc, e.alpha, bias, res, e.act);
        }
    }
    y
}

/// A GEMM on `tile`, or on the launcher's choice.
fn run_gemm(
    gpu: &Gpu,
    tile: Option<GemmTile>,
    problem: &GemmProblem,
    args: &GemmArgs,
) -> finesam::Result<()> {
    match tile {
        Some(t) => launch_gemm_tile(gpu, t, problem, args),
        None => launch_gemm(gpu, problem, args),
    }
}

/// A convolution on `tile`, or on the launcher's choice.
fn run_conv(
    gpu: &Gpu,
    tile: Option<GemmTile>,
    shape: &Conv2dShape,
    args: &ConvArgs,
) -> finesam::Result<()> {
    match tile {
        Some(t) => launch_conv2d_tile(gpu, t, shape, args),
        None => launch_conv2d(gpu, shape, args),
    }
}

fn report(what: &str, rel: f64, max_abs: f64, tol: f64) {
    println!("{what}: rel L2 {rel:.2e}, max abs {max_abs:.2e}");
    assert!(rel <= tol, "{what}: rel L2 error {rel:.3e} > {tol:.1e}");
}

// ---------------------------------------------------------------------------------------------
// GEMM

struct GemmCase {
    m: usize,
    n: usize,
    k: usize,
    act: Activation,
    bias: bool,
    residual: Option<ResidualOrder>,
    alpha: f32,
}

/// Runs one dense GEMM case on `tiles` (None: the launcher's choice) against the reference.
fn run_gemm_case(gpu: &Gpu, rng: &mut Rng, case: &GemmCase, tiles: &[Option<GemmTile>]) {
    let GemmCase { m, n, k, .. } = *case;
    let (xh, xf) = random_f16(rng, m * k, -1.0, 1.0);
    let scale = 1.0 / (k as f64).sqrt();
    let (wh, wf) = random_f16(rng, n * k, -2.0 * scale, 2.0 * scale);
    let (bh, bf) = random_f32(rng, n, -0.5, 0.5);
    let (rh, rf) = random_f16(rng, m * n, -1.0, 1.0);
    let reference = gemm_reference(
        m,
        n,
        k,
        &xf,
        &wf,
        &EpilogueRef {
            alpha: case.alpha as f64,
            bias: case.bias.then_some(&bf[..]),
            act: case.act,
            residual: case.residual.map(|o| (&rf[..], o)),
        },
    );
    let (x, w, b, r) = (
        upload(gpu, &xh),
        upload(gpu, &wh),
        upload(gpu, &bh),
        upload(gpu, &rh),
    );
    for &tile in tiles {
        let y = poisoned(gpu, m * n);
        let epilogue = Epilogue {
            alpha: case.alpha,
            bias: case.bias.then(|| region(&b)),
            activation: case.act,
            residual: case.residual.map(|order| Residual {
                matrix: Matrix::packed(region(&r), n),
                order,
            }),
        };
        let args = GemmArgs {
            x: Matrix::packed(region(&x), k),
            w: Matrix::packed(region(&w), k),
            y: Matrix::packed(region(&y), n),
            epilogue,
        };
        run_gemm(gpu, tile, &GemmProblem::new(m, n, k), &args).unwrap();
        let out: Vec<f64> = download_f16(gpu, &y).iter().map(|v| v.to_f64()).collect();
        let (rel, max_abs) = errors(&out, &reference);
        report(
            &format!(
                "gemm {tile:?} M={m} N={n} K={k} alpha={} act={:?} bias={} residual={:?}",
                case.alpha, case.act, case.bias, case.residual
            ),
            rel,
            max_abs,
            GEMM_REL_L2,
        );
    }
}

const ALL_TILES: [Option<GemmTile>; 4] = [
    Some(GemmTile::T128x128),
    Some(GemmTile::T128x64),
    Some(GemmTile::T64x64),
    None,
];

#[test]
fn gemm_every_epilogue_on_every_tile() {
    if !gpu_available("gemm_every_epilogue_on_every_tile") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0001);
    let mut i = 0;
    for act in [Activation::None, Activation::Gelu, Activation::Relu] {
        for bias in [false, true] {
            for residual in [
                None,
                Some(ResidualOrder::AfterActivation),
                Some(ResidualOrder::BeforeActivation),
            ] {
                // Alternate a ragged N with an odd row stride (element-wise epilogue) and an
                // aligned N with a partial last tile (16-byte epilogue).
                let n = if i % 2 == 0 { 75 } else { 136 };
                let alpha = if i % 3 == 0 { 0.5 } else { 1.0 };
                i += 1;
                let case = GemmCase {
                    m: 133,
                    n,
                    k: 40,
                    act,
                    bias,
                    residual,
                    alpha,
                };
                run_gemm_case(&gpu, &mut rng, &case, &ALL_TILES[..3]);
            }
        }
    }
}

#[test]
fn gemm_shapes_match_reference() {
    if !gpu_available("gemm_shapes_match_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0002);
    // Tiny, exact tiles, ragged everything, K with a partial 32-chunk, TinyViT-like shapes.
    let shapes = [
        (1, 8, 8),
        (64, 64, 64),
        (257, 320, 160),
        (1000, 512, 128),
        (4096, 64, 64),
        (77, 1280, 320),
        (130, 200, 1288),
        (3, 1000, 24),
    ];
    for (m, n, k) in shapes {
        let case = GemmCase {
            m,
            n,
            k,
            act: Activation::Gelu,
            bias: true,
            residual: Some(ResidualOrder::AfterActivation),
            alpha: 1.0,
        };
        run_gemm_case(&gpu, &mut rng, &case, &ALL_TILES);
    }
}

#[test]
fn gemm_batched_strided_operands() {
    if !gpu_available("gemm_batched_strided_operands") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0003);
    // Attention-like: per batch item its own X and W (e.g. Q and K of one head), X rows with
    // padding, output written into a column slice of a wider tensor, residual strided too.
    let (batch, m, n, k) = (5, 49, 49, 32);
    let (ldx, bsx) = (k + 16, 64 * (k + 16));
    let (ldw, bsw) = (k, n * k + 8);
    let (y_off, ldy, bsy) = (8, n + 31, m * (n + 31) + 40);
    let (ldr, bsr) = (n + 3, m * (n + 3));
    let alpha = 1.0 / (k as f32).sqrt();
    let (xh, xf) = random_f16(&mut rng, batch * bsx, -1.0, 1.0);
    let (wh, wf) = random_f16(&mut rng, batch * bsw, -1.0, 1.0);
    let (rh, rf) = random_f16(&mut rng, batch * bsr, -1.0, 1.0);
    let (bh, bf) = random_f32(&mut rng, n, -0.5, 0.5);
    let mut reference = Vec::new();
    for bi in 0..batch {
        let xs: Vec<f64> = (0..m * k)
            .map(|e| xf[bi * bsx + (e / k) * ldx + e % k])
            .collect();
        let ws: Vec<f64> = (0..n * k)
            .map(|e| wf[bi * bsw + (e / k) * ldw + e % k])
            .collect();
        let rs: Vec<f64> = (0..m * n)
            .map(|e| rf[bi * bsr + (e / n) * ldr + e % n])
            .collect();
        reference.extend(gemm_reference(
            m,
            n,
            k,
            &xs,
            &ws,
            &EpilogueRef {
                alpha: alpha as f64,
                bias: Some(&bf),
                act: Activation::Relu,
                residual: Some((&rs, ResidualOrder::AfterActivation)),
            },
        ));
    }
    let (x, w, r, b) = (
        upload(&gpu, &xh),
        upload(&gpu, &wh),
        upload(&gpu, &rh),
        upload(&gpu, &bh),
    );
    for tile in ALL_TILES {
        let total = y_off + (batch - 1) * bsy + (m - 1) * ldy + n + 5;
        let y = poisoned(&gpu, total);
        let problem = GemmProblem { m, n, k, batch };
        let strided = |r, cols, row_stride, batch_stride| {
            Matrix::packed(r, cols)
                .with_row_stride(row_stride)
                .with_batch_stride(batch_stride)
        };
        let epilogue = Epilogue {
            alpha,
            bias: Some(region(&b)),
            activation: Activation::Relu,
            residual: Some(Residual {
                matrix: strided(region(&r), n, ldr, bsr),
                order: ResidualOrder::AfterActivation,
            }),
        };
        let args = GemmArgs {
            x: strided(region(&x), k, ldx, bsx),
            w: strided(region(&w), k, ldw, bsw),
            y: strided(region_at(&y, y_off), n, ldy, bsy),
            epilogue,
        };
        run_gemm(&gpu, tile, &problem, &args).unwrap();
        let out = download_f16(&gpu, &y);
        let (values, stray) = gather(&out, y_off, m, n, ldy, batch, bsy);
        let (rel, max_abs) = errors(&values, &reference);
        report(
            &format!("batched gemm {tile:?} batch={batch} M={m} N={n} K={k}"),
            rel,
            max_abs,
            GEMM_REL_L2,
        );
        assert_eq!(
            stray, 0,
            "{tile:?}: {stray} elements outside the output were written"
        );
    }
}

/// `y += X · W^T` with y the residual buffer itself (x += mlp(x)): the operands, the launch
/// arguments and the f64 reference.
struct InPlaceCase {
    _x: DeviceBuffer,
    _w: DeviceBuffer,
    y: DeviceBuffer,
    residual: Vec<f16>,
    problem: GemmProblem,
    args: GemmArgs,
    reference: Vec<f64>,
}

fn in_place_residual_case(
    gpu: &Gpu,
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    w_scale: f64,
) -> InPlaceCase {
    let (xh, xf) = random_f16(rng, m * k, -1.0, 1.0);
    let (wh, wf) = random_f16(rng, n * k, -w_scale, w_scale);
    let (rh, rf) = random_f16(rng, m * n, -1.0, 1.0);
    let reference = gemm_reference(
        m,
        n,
        k,
        &xf,
        &wf,
        &EpilogueRef {
            alpha: 1.0,
            bias: None,
            act: Activation::None,
            residual: Some((&rf, ResidualOrder::AfterActivation)),
        },
    );
    let (x, w, y) = (upload(gpu, &xh), upload(gpu, &wh), upload(gpu, &rh));
    let ym = Matrix::packed(region(&y), n);
    let args = GemmArgs {
        x: Matrix::packed(region(&x), k),
        w: Matrix::packed(region(&w), k),
        y: ym,
        epilogue: Epilogue {
            residual: Some(Residual {
                matrix: ym,
                order: ResidualOrder::AfterActivation,
            }),
            ..Epilogue::default()
        },
    };
    InPlaceCase {
        _x: x,
        _w: w,
        y,
        residual: rh,
        problem: GemmProblem::new(m, n, k),
        args,
        reference,
    }
}

/// Compares the case's output buffer with its reference.
fn check_in_place(gpu: &Gpu, case: &InPlaceCase, what: &str) {
    let out: Vec<f64> = download_f16(gpu, &case.y)
        .iter()
        .map(|v| v.to_f64())
        .collect();
    let (rel, max_abs) = errors(&out, &case.reference);
    report(what, rel, max_abs, GEMM_REL_L2);
}

#[test]
fn gemm_in_place_residual() {
    if !gpu_available("gemm_in_place_residual") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let case = in_place_residual_case(&gpu, &mut Rng::new(0x6e33_0004), (300, 128, 512), 0.1);
    launch_gemm(&gpu, &case.problem, &case.args).unwrap();
    check_in_place(&gpu, &case, "in-place residual gemm");
}

// ---------------------------------------------------------------------------------------------
// Split-K, bitwise identity of the kernel choices, the tuner

/// How a GEMM is launched in the split-K and identity tests.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    /// `launch_gemm` (the tuner's or the model's choice).
    Auto,
    /// The single-pass kernel on a tile.
    Tile(GemmTile),
    /// The split-K kernel on a tile with a split count.
    Split(GemmTile, usize),
}

fn run_kernel(
    gpu: &Gpu,
    kernel: Kernel,
    problem: &GemmProblem,
    args: &GemmArgs,
) -> finesam::Result<()> {
    match kernel {
        Kernel::Auto => launch_gemm(gpu, problem, args),
        Kernel::Tile(t) => launch_gemm_tile(gpu, t, problem, args),
        Kernel::Split(t, s) => launch_gemm_split(gpu, t, s, problem, args),
    }
}

/// Operands of a (batched, packed) GEMM case on the device and its f64 reference.
struct Operands {
    problem: GemmProblem,
    case: GemmCase,
    x: DeviceBuffer,
    w: DeviceBuffer,
    b: DeviceBuffer,
    r: DeviceBuffer,
    reference: Vec<f64>,
}

fn operands(gpu: &Gpu, rng: &mut Rng, case: GemmCase, batch: usize) -> Operands {
    let GemmCase { m, n, k, .. } = case;
    let (xh, xf) = random_f16(rng, batch * m * k, -1.0, 1.0);
    let scale = 1.0 / (k as f64).sqrt();
    let (wh, wf) = random_f16(rng, batch * n * k, -2.0 * scale, 2.0 * scale);
    let (bh, bf) = random_f32(rng, n, -0.5, 0.5);
    let (rh, rf) = random_f16(rng, batch * m * n, -1.0, 1.0);
    let mut reference = Vec::with_capacity(batch * m * n);
    for bi in 0..batch {
        reference.extend(gemm_reference(
            m,
            n,
            k,
            &xf[bi * m * k..(bi + 1) * m * k],
            &wf[bi * n * k..(bi + 1) * n * k],
            &EpilogueRef {
                alpha: case.alpha as f64,
                bias: case.bias.then_some(&bf[..]),
                act: case.act,
                residual: case
                    .residual
                    .map(|o| (&rf[bi * m * n..(bi + 1) * m * n], o)),
            },
        ));
    }
    Operands {
        problem: GemmProblem { m, n, k, batch },
        case,
        x: upload(gpu, &xh),
        w: upload(gpu, &wh),
        b: upload(gpu, &bh),
        r: upload(gpu, &rh),
        reference,
    }
}

impl Operands {
    fn args(&self, y: &DeviceBuffer) -> GemmArgs {
        let GemmProblem { m, n, k, .. } = self.problem;
        GemmArgs {
            x: Matrix::packed(region(&self.x), k).with_batch_stride(m * k),
            w: Matrix::packed(region(&self.w), k).with_batch_stride(n * k),
            y: Matrix::packed(region(y), n).with_batch_stride(m * n),
            epilogue: Epilogue {
                alpha: self.case.alpha,
                bias: self.case.bias.then(|| region(&self.b)),
                activation: self.case.act,
                residual: self.case.residual.map(|order| Residual {
                    matrix: Matrix::packed(region(&self.r), n).with_batch_stride(m * n),
                    order,
                }),
            },
        }
    }

    /// Runs `kernel` into a poisoned output, checks it against the reference and returns the
    /// output bits.
    fn run(&self, gpu: &Gpu, kernel: Kernel) -> Vec<u16> {
        let GemmProblem { m, n, k, batch } = self.problem;
        let y = poisoned(gpu, batch * m * n);
        run_kernel(gpu, kernel, &self.problem, &self.args(&y)).unwrap();
        let out = download_f16(gpu, &y);
        let values: Vec<f64> = out.iter().map(|v| v.to_f64()).collect();
        let (rel, max_abs) = errors(&values, &self.reference);
        let c = &self.case;
        report(
            &format!(
                "{kernel:?} batch={batch} M={m} N={n} K={k} act={:?} bias={} residual={:?}",
                c.act, c.bias, c.residual
            ),
            rel,
            max_abs,
            GEMM_REL_L2,
        );
        out.iter().map(|v| v.to_bits()).collect()
    }
}

/// Asserts that every output in `outputs` has the same bits as the first.
fn assert_identical(what: &str, outputs: &[(Kernel, Vec<u16>)]) {
    let (first_kernel, first) = &outputs[0];
    for (kernel, out) in &outputs[1..] {
        let differing = out.iter().zip(first).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing, 0,
            "{what}: {kernel:?} differs from {first_kernel:?} in {differing} elements"
        );
    }
}

#[test]
fn gemm_split_k_matches_reference_and_is_bitwise_identical() {
    if !gpu_available("gemm_split_k_matches_reference_and_is_bitwise_identical") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0005);
    // (M, N, K, batch): the decoder MLP's second GEMM (7 tokens x 1 and 8 prompts), ragged M
    // and odd N (element epilogue, odd partial row stride), K with a partial segment and a
    // partial k-step (1288), a single segment (K 8, 136), batched.
    let shapes = [
        (7, 256, 2048, 1),
        (56, 256, 2048, 1),
        (33, 77, 1288, 1),
        (100, 130, 1032, 1),
        (5, 24, 8, 1),
        (65, 64, 136, 1),
        (21, 96, 1024, 3),
    ];
    let mut i = 0;
    for (m, n, k, batch) in shapes {
        for act in [Activation::None, Activation::Gelu, Activation::Relu] {
            let residual = [
                None,
                Some(ResidualOrder::AfterActivation),
                Some(ResidualOrder::BeforeActivation),
            ][i % 3];
            i += 1;
            let case = GemmCase {
                m,
                n,
                k,
                act,
                bias: i % 2 == 0,
                residual,
                alpha: if i % 4 == 0 { 0.5 } else { 1.0 },
            };
            let ops = operands(&gpu, &mut rng, case, batch);
            let segments = split_k_segments(k);
            let mut splits: Vec<usize> = vec![1, 2, 3, segments];
            splits.retain(|&s| s <= segments);
            splits.dedup();
            let mut outputs = Vec::new();
            for tile in GemmTile::ALL {
                for &s in &splits {
                    let kernel = Kernel::Split(tile, s);
                    outputs.push((kernel, ops.run(&gpu, kernel)));
                }
            }
            // Twice more on the same kernel: the counters were reset, the sums are ordered.
            let again = Kernel::Split(GemmTile::T64x64, *splits.last().unwrap());
            outputs.push((again, ops.run(&gpu, again)));
            outputs.push((again, ops.run(&gpu, again)));
            if split_k_family(m, n, k, batch) {
                // launch_gemm takes the split-K kernels for this shape: same bits.
                outputs.push((Kernel::Auto, ops.run(&gpu, Kernel::Auto)));
            }
            assert_identical(
                &format!("split-K M={m} N={n} K={k} batch={batch}"),
                &outputs,
            );
        }
    }
}

#[test]
fn gemm_tiles_are_bitwise_identical() {
    if !gpu_available("gemm_tiles_are_bitwise_identical") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0006);
    // Ragged and aligned N (element and vector epilogues), partial k-steps, every epilogue.
    let shapes = [
        (133, 75, 40, 1),
        (257, 320, 160, 1),
        (130, 200, 1288, 1),
        (300, 136, 512, 2),
        (4096, 320, 1280, 1),
    ];
    let mut i = 0;
    for (m, n, k, batch) in shapes {
        for act in [Activation::None, Activation::Gelu, Activation::Relu] {
            let residual = [
                Some(ResidualOrder::BeforeActivation),
                None,
                Some(ResidualOrder::AfterActivation),
            ][i % 3];
            i += 1;
            let case = GemmCase {
                m,
                n,
                k,
                act,
                bias: i % 2 == 1,
                residual,
                alpha: if i % 3 == 0 { 0.125 } else { 1.0 },
            };
            let ops = operands(&gpu, &mut rng, case, batch);
            let mut outputs: Vec<(Kernel, Vec<u16>)> = GemmTile::ALL
                .iter()
                .map(|&t| (Kernel::Tile(t), ops.run(&gpu, Kernel::Tile(t))))
                .collect();
            if !split_k_family(m, n, k, batch) {
                // launch_gemm takes one of these kernels (split-K shapes sum K in segments).
                outputs.push((Kernel::Auto, ops.run(&gpu, Kernel::Auto)));
            }
            assert_identical(&format!("tiles M={m} N={n} K={k} batch={batch}"), &outputs);
        }
    }
}

#[test]
fn gemm_tuner_caches_and_graph_replay_matches_eager() {
    if !gpu_available("gemm_tuner_caches_and_graph_replay_matches_eager") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0007);
    let tuner = gpu.gemm_tuner();
    // Graphs with split-K GEMMs need the workspace before capture (plans reserve it).
    tuner.reserve_split_k(&gpu).unwrap();
    // The decoder MLP's second GEMM (split-K) and an encoder-like fc1 (single pass).
    let cases = [
        (56, 256, 2048, Activation::None),
        (1000, 1280, 320, Activation::Gelu),
    ];
    for (m, n, k, act) in cases {
        let case = GemmCase {
            m,
            n,
            k,
            act,
            bias: true,
            residual: Some(ResidualOrder::AfterActivation),
            alpha: 1.0,
        };
        let ops = operands(&gpu, &mut rng, case, 1);
        let y = poisoned(&gpu, m * n);
        let args = ops.args(&y);
        let key = gemm_key(&ops.problem, &args).unwrap();
        // A graph captured before tuning uses the model's choice; nothing is timed then.
        let before = tuner.len();
        let untuned = Graph::capture(&gpu, || launch_gemm(&gpu, &ops.problem, &args)).unwrap();
        assert_eq!(tuner.len(), before, "captured launches must not tune");
        untuned.replay().unwrap();
        let model_bits = download_f16(&gpu, &y);
        // Tuning (results discarded) caches a choice for the key.
        tuner
            .tune(&gpu, || launch_gemm(&gpu, &ops.problem, &args))
            .unwrap();
        if tuner.enabled() {
            let choice = tuner.cached(&key).expect("tuning cached a choice");
            println!("M={m} N={n} K={k}: tuned {choice:?}");
            if !key.split_k() {
                assert_eq!(choice.splits, 1, "single-pass shapes have no splits");
            }
        }
        // Eager after tuning, then a graph captured after tuning, replayed three times.
        let eager = ops.run(&gpu, Kernel::Auto);
        let y2 = poisoned(&gpu, m * n);
        let args2 = ops.args(&y2);
        let graph = Graph::capture(&gpu, || launch_gemm(&gpu, &ops.problem, &args2)).unwrap();
        for _ in 0..3 {
            gpu.memset(y2.ptr(), 0xff, y2.len()).unwrap();
            graph.replay().unwrap();
            let replayed: Vec<u16> = download_f16(&gpu, &y2)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(
                replayed, eager,
                "M={m} N={n} K={k}: replay differs from eager"
            );
        }
        // The model's choice and the tuned one compute the same bits.
        let model: Vec<u16> = model_bits.iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            model, eager,
            "M={m} N={n} K={k}: tuned choice changed the result"
        );
    }
}

#[test]
fn gemm_tuning_an_in_place_residual_then_a_clean_run() {
    if !gpu_available("gemm_tuning_an_in_place_residual_then_a_clean_run") {
        return;
    }
    // Tuning repeats launches: y += f(x) accumulates; a clean launch afterwards is exact.
    let gpu = Gpu::new(0).unwrap();
    let case = in_place_residual_case(&gpu, &mut Rng::new(0x6e33_0008), (56, 256, 2048), 0.03);
    gpu.gemm_tuner()
        .tune(&gpu, || launch_gemm(&gpu, &case.problem, &case.args))
        .unwrap();
    gpu.upload(case.y.ptr(), bytemuck::cast_slice(&case.residual))
        .unwrap();
    launch_gemm(&gpu, &case.problem, &case.args).unwrap();
    check_in_place(&gpu, &case, "in-place residual gemm after tuning");
}

// ---------------------------------------------------------------------------------------------
// Convolutions

/// NHWC conv reference with weights [Cout, kh, kw, Cin].
fn conv_reference(s: &Conv2dShape, x: &[f64], w: &[f64], e: &EpilogueRef<'_>) -> Vec<f64> {
    let (ho, wo) = s.output_size().unwrap();
    let (cin, cout) = (s.in_channels, s.out_channels);
    let mut y = vec![0.0; s.batch * ho * wo * cout];
    for b in 0..s.batch {
        for oy in 0..ho {
            for ox in 0..wo {
                let p = (b * ho + oy) * wo + ox;
                for co in 0..cout {
                    let mut acc = 0.0;
                    for ky in 0..s.kernel_h {
                        let iy = (oy * s.stride + ky) as isize - s.padding as isize;
                        if iy < 0 || iy >= s.height as isize {
                            continue;
                        }
                        for kx in 0..s.kernel_w {
                            let ix = (ox * s.stride + kx) as isize - s.padding as isize;
                            if ix < 0 || ix >= s.width as isize {
                                continue;
                            }
                            let xi = ((b * s.height + iy as usize) * s.width + ix as usize) * cin;
                            let wi = ((co * s.kernel_h + ky) * s.kernel_w + kx) * cin;
                            for ci in 0..cin {
                                acc += x[xi + ci] * w[wi + ci];
                            }
                        }
                    }
                    let bias = e.bias.map_or(0.0, |v| v[co]);
                    let res = e.residual.map(|(r, o)| (r[p * cout + co], o));
                    y[p * cout + co] = finish(acc, e.alpha, bias, res, e.act);
                }
            }
        }
    }
    y
}

#[test]
fn conv2d_implicit_gemm_matches_reference() {
    if !gpu_available("conv2d_implicit_gemm_matches_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0010);
    let shape = |batch, height, width, cin, cout, k, stride, padding| Conv2dShape {
        batch,
        height,
        width,
        in_channels: cin,
        out_channels: cout,
        kernel_h: k,
        kernel_w: k,
        stride,
        padding,
    };
    let cases = [
        (
            shape(2, 17, 13, 32, 40, 3, 1, 1),
            Activation::Gelu,
            Some(ResidualOrder::BeforeActivation),
        ),
        // TinyViT's second stem conv (32 -> 64, stride 2), smaller image.
        (shape(1, 31, 29, 32, 64, 3, 2, 1), Activation::None, None),
        (
            shape(1, 20, 20, 24, 72, 5, 1, 2),
            Activation::Relu,
            Some(ResidualOrder::AfterActivation),
        ),
        (shape(1, 9, 11, 8, 8, 1, 1, 0), Activation::Gelu, None),
        (
            shape(3, 7, 7, 16, 24, 3, 2, 0),
            Activation::None,
            Some(ResidualOrder::AfterActivation),
        ),
        // The neck conv (256 -> 256, 3x3), 16x16 instead of 64x64 to bound the CPU work.
        (shape(1, 16, 16, 256, 256, 3, 1, 1), Activation::None, None),
    ];
    for (s, act, residual) in cases {
        let (ho, wo) = s.output_size().unwrap();
        let rows = s.batch * ho * wo;
        let k = s.kernel_h * s.kernel_w * s.in_channels;
        let (xh, xf) = random_f16(
            &mut rng,
            s.batch * s.height * s.width * s.in_channels,
            -1.0,
            1.0,
        );
        let scale = 2.0 / (k as f64).sqrt();
        let (wh, wf) = random_f16(&mut rng, s.out_channels * k, -scale, scale);
        let (bh, bf) = random_f32(&mut rng, s.out_channels, -0.5, 0.5);
        let (rh, rf) = random_f16(&mut rng, rows * s.out_channels, -1.0, 1.0);
        let reference = conv_reference(
            &s,
            &xf,
            &wf,
            &EpilogueRef {
                alpha: 1.0,
                bias: Some(&bf),
                act,
                residual: residual.map(|o| (&rf[..], o)),
            },
        );
        let (x, w, b, r) = (
            upload(&gpu, &xh),
            upload(&gpu, &wh),
            upload(&gpu, &bh),
            upload(&gpu, &rh),
        );
        for tile in ALL_TILES {
            // Output into channels [8, 8 + Cout) of a wider NHWC tensor.
            let ld = s.out_channels + 16;
            let y = poisoned(&gpu, rows * ld);
            let args = ConvArgs {
                input: region(&x),
                weight: region(&w),
                output: Matrix::packed(region_at(&y, 8), s.out_channels).with_row_stride(ld),
                epilogue: Epilogue {
                    bias: Some(region(&b)),
                    activation: act,
                    residual: residual.map(|order| Residual {
                        matrix: Matrix::packed(region(&r), s.out_channels),
                        order,
                    }),
                    ..Epilogue::default()
                },
            };
            run_conv(&gpu, tile, &s, &args).unwrap();
            let out = download_f16(&gpu, &y);
            let (values, stray) = gather(&out, 8, rows, s.out_channels, ld, 1, 0);
            let (rel, max_abs) = errors(&values, &reference);
            report(
                &format!("conv {tile:?} {s:?} {act:?} {residual:?}"),
                rel,
                max_abs,
                CONV_REL_L2,
            );
            assert_eq!(
                stray, 0,
                "conv wrote {stray} elements outside its channel slice"
            );
        }
    }
}

#[test]
fn depthwise_conv_matches_reference() {
    if !gpu_available("depthwise_conv_matches_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0020);
    let mut i = 0;
    for kernel in [3, 5, 7] {
        for stride in [1, 2] {
            for (height, width, channels) in [(19, 23, 40), (8, 9, 256)] {
                let s = DepthwiseShape {
                    batch: 2,
                    height,
                    width,
                    channels,
                    kernel,
                    stride,
                    padding: kernel / 2,
                };
                let act = [Activation::Gelu, Activation::None, Activation::Relu][i % 3];
                let with_bias = i % 4 != 3;
                i += 1;
                let (ho, wo) = s.output_size().unwrap();
                let rows = s.batch * ho * wo;
                let (xh, xf) = random_f16(&mut rng, s.batch * height * width * channels, -1.0, 1.0);
                let taps = kernel * kernel;
                let (wh, wf) = random_f16(
                    &mut rng,
                    taps * channels,
                    -1.0 / kernel as f64,
                    1.0 / kernel as f64,
                );
                let (bh, bf) = random_f32(&mut rng, channels, -0.5, 0.5);
                let reference =
                    depthwise_reference(&s, &xf, &wf, with_bias.then_some(&bf[..]), act);
                let (x, w, b) = (upload(&gpu, &xh), upload(&gpu, &wh), upload(&gpu, &bh));
                let ld = channels + 16;
                let y = poisoned(&gpu, rows * ld);
                let args = DepthwiseArgs {
                    input: region(&x),
                    weight: region(&w),
                    bias: with_bias.then(|| region(&b)),
                    activation: act,
                    output: Matrix::packed(region(&y), channels).with_row_stride(ld),
                };
                launch_depthwise_conv2d(&gpu, &s, &args).unwrap();
                let out = download_f16(&gpu, &y);
                let (values, stray) = gather(&out, 0, rows, channels, ld, 1, 0);
                let (rel, max_abs) = errors(&values, &reference);
                report(
                    &format!("depthwise {s:?} {act:?} bias={with_bias}"),
                    rel,
                    max_abs,
                    CONV_REL_L2,
                );
                assert_eq!(stray, 0, "depthwise wrote outside its channels");
            }
        }
    }
}

#[test]
fn stem_conv_matches_reference() {
    if !gpu_available("stem_conv_matches_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0030);
    for (batch, height, width, cout, stride, act) in [
        (1, 64, 70, 32, 2, Activation::Gelu),
        (2, 33, 31, 16, 1, Activation::None),
        (1, 17, 40, 64, 2, Activation::Relu),
    ] {
        let s = Conv2dShape {
            batch,
            height,
            width,
            in_channels: 3,
            out_channels: cout,
            kernel_h: 3,
            kernel_w: 3,
            stride,
            padding: 1,
        };
        let (ho, wo) = s.output_size().unwrap();
        let rows = batch * ho * wo;
        // The preprocessed image is about -2..2.7 (SAM normalisation).
        let (xh, xf) = random_f16(&mut rng, batch * 3 * height * width, -2.0, 2.7);
        let (wh, wf) = random_f16(&mut rng, cout * 27, -0.3, 0.3);
        let (bh, bf) = random_f32(&mut rng, cout, -0.5, 0.5);
        // Reference: NCHW input, OIHW weights, via the NHWC/OHWI conv reference.
        let x_nhwc: Vec<f64> = (0..batch * height * width * 3)
            .map(|e| {
                let (p, c) = (e / 3, e % 3);
                let (b, yx) = (p / (height * width), p % (height * width));
                xf[(b * 3 + c) * height * width + yx]
            })
            .collect();
        let w_ohwi: Vec<f64> = (0..cout * 27)
            .map(|e| {
                let (co, rest) = (e / 27, e % 27);
                let (tap, ci) = (rest / 3, rest % 3);
                wf[co * 27 + ci * 9 + tap]
            })
            .collect();
        let reference = conv_reference(
            &s,
            &x_nhwc,
            &w_ohwi,
            &EpilogueRef {
                alpha: 1.0,
                bias: Some(&bf),
                act,
                residual: None,
            },
        );
        let (x, w, b) = (upload(&gpu, &xh), upload(&gpu, &wh), upload(&gpu, &bh));
        let y = poisoned(&gpu, rows * cout);
        let args = StemArgs {
            input: region(&x),
            weight: region(&w),
            bias: Some(region(&b)),
            activation: act,
            output: Matrix::packed(region(&y), cout),
        };
        launch_conv3x3_stem(&gpu, &s, &args).unwrap();
        let out: Vec<f64> = download_f16(&gpu, &y).iter().map(|v| v.to_f64()).collect();
        let (rel, max_abs) = errors(&out, &reference);
        report(&format!("stem {s:?} {act:?}"), rel, max_abs, CONV_REL_L2);
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

#[test]
fn layer_norm_matches_reference() {
    if !gpu_available("layer_norm_matches_reference") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0040);
    let mut i = 0;
    for channels in [8, 64, 72, 128, 160, 256, 320, 512, 640, 1024] {
        for rows in [1, 37, 1000] {
            let with_residual = i % 2 == 1;
            let eps = if i % 3 == 0 { 1e-6 } else { 1e-5 };
            i += 1;
            let n = rows * channels;
            // Unit-scale values around an offset: the variance must come from centred values.
            let (xh, _) = random_f16(&mut rng, n, 2.0, 4.0);
            let (rh, _) = random_f16(&mut rng, n, -1.0, 1.0);
            let (gh, gf) = random_f32(&mut rng, channels, 0.5, 1.5);
            let (bh, bf) = random_f32(&mut rng, channels, -0.5, 0.5);
            // The kernel normalises the fp16-rounded sum (what PyTorch's x + r stores).
            let sum: Vec<f64> = (0..n)
                .map(|e| {
                    if with_residual {
                        f16::from_f32(xh[e].to_f32() + rh[e].to_f32()).to_f64()
                    } else {
                        xh[e].to_f64()
                    }
                })
                .collect();
            let reference: Vec<f64> = sum
                .chunks_exact(channels)
                .flat_map(|row| layer_norm_row(row, &gf, &bf, eps as f64))
                .collect();
            let (x, res, g, b) = (
                upload(&gpu, &xh),
                upload(&gpu, &rh),
                upload(&gpu, &gh),
                upload(&gpu, &bh),
            );
            let y = poisoned(&gpu, n);
            let s = poisoned(&gpu, n);
            let args = LayerNormArgs {
                rows,
                channels,
                eps,
                x: region(&x),
                residual: with_residual.then(|| region(&res)),
                sum: with_residual.then(|| region(&s)),
                gamma: region(&g),
                beta: region(&b),
                y: region(&y),
            };
            launch_layer_norm(&gpu, &args).unwrap();
            let out: Vec<f64> = download_f16(&gpu, &y).iter().map(|v| v.to_f64()).collect();
            let (rel, max_abs) = errors(&out, &reference);
            println!("layer_norm rows={rows} C={channels} eps={eps:e} residual={with_residual}: max abs {max_abs:.2e}, rel L2 {rel:.2e}");
            assert!(
                max_abs <= LAYER_NORM_MAX_ABS,
                "layer norm max abs error {max_abs:.3e}"
            );
            if with_residual {
                let stored: Vec<f64> = download_f16(&gpu, &s).iter().map(|v| v.to_f64()).collect();
                assert_eq!(stored, sum, "x + residual stored wrongly");
            }
        }
    }
}

#[test]
fn layer_norm_in_place() {
    if !gpu_available("layer_norm_in_place") {
        return;
    }
    // y = LN(x + r) with the sum written over r and the output over x, as a transformer
    // block updates its residual stream.
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x6e33_0041);
    let (rows, channels) = (513, 320);
    let n = rows * channels;
    let (xh, _) = random_f16(&mut rng, n, -1.0, 1.0);
    let (rh, _) = random_f16(&mut rng, n, -1.0, 1.0);
    let ones = vec![1.0f32; channels];
    let zeros = vec![0.0f32; channels];
    let sum: Vec<f64> = (0..n)
        .map(|e| f16::from_f32(xh[e].to_f32() + rh[e].to_f32()).to_f64())
        .collect();
    let (x, r, g, b) = (
        upload(&gpu, &xh),
        upload(&gpu, &rh),
        upload(&gpu, &ones),
        upload(&gpu, &zeros),
    );
    let args = LayerNormArgs {
        rows,
        channels,
        eps: 1e-5,
        x: region(&x),
        residual: Some(region(&r)),
        sum: Some(region(&r)),
        gamma: region(&g),
        beta: region(&b),
        y: region(&x),
    };
    launch_layer_norm(&gpu, &args).unwrap();
    let out: Vec<f64> = download_f16(&gpu, &x).iter().map(|v| v.to_f64()).collect();
    let stored: Vec<f64> = download_f16(&gpu, &r).iter().map(|v| v.to_f64()).collect();
    assert_eq!(stored, sum);
    let mut worst = 0.0f64;
    for row in 0..rows {
        let s = &sum[row * channels..(row + 1) * channels];
        let mean = s.iter().sum::<f64>() / channels as f64;
        let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / channels as f64;
        for c in 0..channels {
            let want = (s[c] - mean) / (var + 1e-5).sqrt();
            let got = out[row * channels + c];
            worst = worst.max(if got.is_finite() {
                (got - want).abs()
            } else {
                f64::INFINITY
            });
        }
    }
    println!("in-place layer_norm: max abs {worst:.2e}");
    assert!(worst <= LAYER_NORM_MAX_ABS);
}

// ---------------------------------------------------------------------------------------------
// Launcher errors

#[test]
fn launchers_reject_bad_arguments() {
    if !gpu_available("launchers_reject_bad_arguments") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let buf = gpu.alloc(1 << 20).unwrap();
    let small = gpu.alloc(64).unwrap();
    let whole = region(&buf);
    let null = DeviceRegion::new(0, 1 << 20);
    let (m, n, k) = (64, 64, 64);
    let p = GemmProblem::new(m, n, k);
    let mat = |r: DeviceRegion, cols| Matrix::packed(r, cols);
    let e = Epilogue::default();
    let good = GemmArgs {
        x: mat(whole, k),
        w: mat(whole, k),
        y: mat(whole, n),
        epilogue: e,
    };
    let k20 = GemmArgs {
        x: mat(whole, 20),
        w: mat(whole, 20),
        ..good
    };
    let bad_gemms = [
        ("K not a multiple of 8", GemmProblem::new(m, n, 20), k20),
        (
            "null X",
            p,
            GemmArgs {
                x: mat(null, k),
                ..good
            },
        ),
        (
            "undersized W",
            p,
            GemmArgs {
                w: mat(region(&small), k),
                ..good
            },
        ),
        (
            "misaligned X",
            p,
            GemmArgs {
                x: mat(region_at(&buf, 4), k),
                ..good
            },
        ),
        (
            "row stride below K",
            p,
            GemmArgs {
                x: mat(whole, k).with_row_stride(32),
                ..good
            },
        ),
        (
            "undersized bias",
            p,
            GemmArgs {
                epilogue: Epilogue {
                    bias: Some(region(&small)),
                    ..e
                },
                ..good
            },
        ),
    ];
    for (what, problem, args) in bad_gemms {
        expect_launch_error(what, launch_gemm(&gpu, &problem, &args));
    }
    let conv = Conv2dShape {
        batch: 1,
        height: 8,
        width: 8,
        in_channels: 12,
        out_channels: 16,
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        padding: 1,
    };
    expect_launch_error(
        "conv Cin % 8",
        launch_conv2d(
            &gpu,
            &conv,
            &ConvArgs {
                input: whole,
                weight: whole,
                output: mat(whole, 16),
                epilogue: e,
            },
        ),
    );
    let dw = DepthwiseShape {
        batch: 1,
        height: 8,
        width: 8,
        channels: 16,
        kernel: 4,
        stride: 1,
        padding: 1,
    };
    let dw_args = DepthwiseArgs {
        input: whole,
        weight: whole,
        bias: None,
        activation: Activation::None,
        output: mat(whole, 16),
    };
    expect_launch_error(
        "depthwise kernel 4",
        launch_depthwise_conv2d(&gpu, &dw, &dw_args),
    );
    let ln = LayerNormArgs {
        rows: 10,
        channels: 1032,
        eps: 1e-5,
        x: whole,
        residual: None,
        sum: None,
        gamma: whole,
        beta: whole,
        y: whole,
    };
    expect_launch_error("layer norm C > 1024", launch_layer_norm(&gpu, &ln));
    expect_launch_error(
        "layer norm undersized y",
        launch_layer_norm(
            &gpu,
            &LayerNormArgs {
                channels: 64,
                y: region(&small),
                ..ln
            },
        ),
    );
    // The stream is still healthy after the rejected launches.
    gpu.synchronize().unwrap();
}

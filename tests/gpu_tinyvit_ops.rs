//! GPU tests of the fused TinyViT kernels (kernels/tinyvit.cu `mbconv_c64_e4` and
//! `patch_merging_c64_c128`; the window
//! gather and the depthwise prologue of kernels/norm.cu, which fuse the window partition into
//! the attention's LayerNorm and the local conv into the MLP's; the window scatter of
//! kernels/gemm.cu, which fuses the window reverse and residual into the proj GEMM) against
//! f64 CPU references on fresh seeded random inputs, outputs poisoned (fp16 NaN) first so an
//! unwritten element fails and a write past the output is caught. Also the fused MLP
//! (`tinyvit_mlp_c128` / `c160`): against an f64 reference and bit for bit against the
//! two-GEMM chain it replaces. Skipped with a printed reason where there is no GPU.
//!
//! Tolerances: fused conv blocks rel L2 <= 2e-3 (the kernels round its two hidden activations and the
//! output to fp16, ~3e-4 rms relative each, with fp32 accumulation; the reference rounds
//! nothing); LayerNorm outputs max abs <= 1e-2 (fp16 output of unit-scale values); the stored
//! local conv and the scattered GEMM rel L2 <= 2e-3.

mod common;
#[path = "common/dense.rs"]
mod dense;

use common::{gpu_available, Rng};
use dense::{
    activate, depthwise_reference, download_f16, errors, expect_launch_error, layer_norm_row,
    poisoned, random_f16, random_f32, region, upload,
};
use finesam::ops::conv::DepthwiseShape;
use finesam::ops::gemm::{
    launch_gemm_tile, launch_gemm_window_scatter, Activation, Epilogue, GemmArgs, GemmProblem,
    GemmTile, Matrix, Residual, ResidualOrder,
};
use finesam::ops::norm::{
    launch_depthwise_layer_norm, launch_window_layer_norm, DepthwisePrologue, LayerNormArgs,
};
use finesam::ops::tinyvit::{
    launch_mbconv, launch_patch_merging_c64, launch_tinyvit_mlp, ConvBlockArgs, ConvBlockShape,
    MlpArgs, MlpShape, MBCONV_CHANNELS as C, MBCONV_HIDDEN as HID, MLP_CHANNELS, PATCH_MERGING_IN,
    PATCH_MERGING_OUT,
};
use finesam::ops::window::WindowGeometry;
use finesam::ops::DeviceRegion;
use finesam::Gpu;
use half::f16;

const CONV_BLOCK_REL_L2: f64 = 2e-3;
/// GEMM with fp16 output (as tests/gpu_ops.rs).
const GEMM_REL_L2: f64 = 2e-3;
/// The depthwise prologue's stored convolution (fp16, fp32 accumulation), as tests/gpu_ops.rs.
const CONV_REL_L2: f64 = 2e-3;
/// fp16 output of unit-scale normalised values (as tests/gpu_ops.rs's LayerNorm bound).
const LAYER_NORM_MAX_ABS: f64 = 1e-2;
/// Fused MLP against the f64 reference that rounds the hidden activations to fp16 as the
/// kernel does: what is left is the fp16 rounding of the output (uniform within half an ulp,
/// ~2^-11 / sqrt(3) = 2.8e-4 rms relative), fp32 summation order (~1e-6), the GELU
/// approximation (~1e-7 relative) and rare hidden values whose fp32 and f64 pre-activations
/// round to neighbouring fp16 values (one hidden ulp x |w2| <= 0.08: < 7e-4 per flip, a tiny
/// fraction of the 4C terms). rel L2 <= 1e-3 leaves 3.5x margin over the output rounding.
const MLP_REL_L2: f64 = 1e-3;
/// Max abs: half an fp16 ulp at the largest |y| of the case (the output rounding; 1.95e-3 for
/// |y| in [4, 8)), plus this slack for the rest (< 1e-3 even with one hidden flip).
const MLP_MAX_ABS_SLACK: f64 = 1e-3;

/// `y[p, o] = act(b[o] + sum_i x[p, i] * w[o, i])` over `pixels` rows.
fn linear(x: &[f64], w: &[f64], b: &[f64], cin: usize, cout: usize) -> Vec<f64> {
    x.chunks_exact(cin)
        .flat_map(|row| {
            (0..cout).map(move |o| {
                b[o] + row
                    .iter()
                    .zip(&w[o * cin..(o + 1) * cin])
                    .map(|(a, c)| a * c)
                    .sum::<f64>()
            })
        })
        .collect()
}

/// Which fused block a case runs: (Cin, hidden, Cout, depthwise stride, MBConv shortcut).
#[derive(Debug, Clone, Copy)]
struct Block {
    cin: usize,
    hidden: usize,
    cout: usize,
    stride: usize,
    mbconv: bool,
}

const MBCONV: Block = Block {
    cin: C,
    hidden: HID,
    cout: C,
    stride: 1,
    mbconv: true,
};
const PATCH_MERGING: Block = Block {
    cin: PATCH_MERGING_IN,
    hidden: PATCH_MERGING_OUT,
    cout: PATCH_MERGING_OUT,
    stride: 2,
    mbconv: false,
};

/// tiny_vit_sam.py `MBConv.forward` / `PatchMerging.forward` (eval, folded BatchNorms) in
/// f64 on NHWC: `gelu(conv1)`, `gelu(dw3x3)` at the block's stride, conv3 (+ x, gelu).
/// `p` holds w1, b1, w2, b2, w3, b3.
fn conv_block_reference(block: Block, s: &ConvBlockShape, x: &[f64], p: &[Vec<f64>]) -> Vec<f64> {
    let gelu = |v: f64| activate(v, Activation::Gelu);
    let h1: Vec<f64> = linear(x, &p[0], &p[1], block.cin, block.hidden)
        .into_iter()
        .map(gelu)
        .collect();
    let dw = DepthwiseShape {
        batch: s.batch,
        height: s.height,
        width: s.width,
        channels: block.hidden,
        kernel: 3,
        stride: block.stride,
        padding: 1,
    };
    let h2 = depthwise_reference(&dw, &h1, &p[2], Some(&p[3]), Activation::Gelu);
    let y = linear(&h2, &p[4], &p[5], block.hidden, block.cout);
    if block.mbconv {
        y.into_iter().zip(x).map(|(v, r)| gelu(v + r)).collect()
    } else {
        y
    }
}

/// Runs `block` on fresh random operands for each shape and checks it against the reference.
fn check_conv_block(gpu: &Gpu, rng: &mut Rng, block: Block, shapes: &[(usize, usize, usize)]) {
    let Block {
        cin,
        hidden,
        cout,
        stride,
        ..
    } = block;
    for &(batch, height, width) in shapes {
        let shape = ConvBlockShape {
            batch,
            height,
            width,
        };
        let (ho, wo) = ((height - 1) / stride + 1, (width - 1) / stride + 1);
        let n_out = batch * ho * wo * cout;
        let (xh, x) = random_f16(rng, batch * height * width * cin, -2.0, 2.0);
        // Weights scaled so every stage has unit-order values: w1 ~ 1/sqrt(Cin) etc.
        let (w1h, w1) = random_f16(
            rng,
            hidden * cin,
            -2.0 / (cin as f64).sqrt(),
            2.0 / (cin as f64).sqrt(),
        );
        let (b1h, b1) = random_f32(rng, hidden, -0.5, 0.5);
        let (w2h, w2) = random_f16(rng, 9 * hidden, -0.5, 0.5);
        let (b2h, b2) = random_f32(rng, hidden, -0.5, 0.5);
        let scale3 = 2.0 / (hidden as f64).sqrt();
        let (w3h, w3) = random_f16(rng, cout * hidden, -scale3, scale3);
        let (b3h, b3) = random_f32(rng, cout, -0.5, 0.5);
        let want = conv_block_reference(block, &shape, &x, &[w1, b1, w2, b2, w3, b3]);

        let input = upload(gpu, &xh);
        let weights = [
            upload(gpu, &w1h),
            upload(gpu, &b1h),
            upload(gpu, &w2h),
            upload(gpu, &b2h),
            upload(gpu, &w3h),
            upload(gpu, &b3h),
        ];
        // One poisoned tail vector past the output catches writes beyond it.
        let out = poisoned(gpu, n_out + 8);
        let args = ConvBlockArgs {
            input: region(&input),
            expand_weight: region(&weights[0]),
            expand_bias: region(&weights[1]),
            depthwise_weight: region(&weights[2]),
            depthwise_bias: region(&weights[3]),
            project_weight: region(&weights[4]),
            project_bias: region(&weights[5]),
            output: DeviceRegion::new(out.ptr(), n_out * 2),
        };
        if block.mbconv {
            launch_mbconv(gpu, &shape, &args).unwrap();
        } else {
            launch_patch_merging_c64(gpu, &shape, &args).unwrap();
        }
        let got = download_f16(gpu, &out);
        let tail_poisoned = got[n_out..].iter().all(|v| v.to_bits() == 0xffff);
        let got: Vec<f64> = got[..n_out].iter().map(|v| v.to_f64()).collect();
        let (rel, max_abs) = errors(&got, &want);
        println!(
            "{block:?} {batch}x{height}x{width}x{cin} -> {ho}x{wo}x{cout}: rel L2 {rel:.2e}, \
             max abs {max_abs:.2e}"
        );
        assert!(
            rel <= CONV_BLOCK_REL_L2,
            "{block:?} {shape:?}: rel L2 {rel:.3e}"
        );
        assert!(tail_poisoned, "{block:?} {shape:?}: wrote past the output");
    }
}

#[test]
fn mbconv_matches_reference() {
    const TEST: &str = "mbconv_matches_reference";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x4d42);
    // Whole 8x16 tiles, ragged tiles on both axes (and a single partial tile), a batch.
    let shapes = [(1, 16, 32), (2, 13, 37), (1, 5, 7), (1, 64, 48)];
    check_conv_block(&gpu, &mut rng, MBCONV, &shapes);
}

#[test]
fn patch_merging_matches_reference() {
    const TEST: &str = "patch_merging_matches_reference";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x504d);
    // Whole 8x8 output tiles (16x16 and 64x48 inputs), odd sizes (ragged outputs), a batch.
    let shapes = [(1, 16, 16), (2, 13, 37), (1, 5, 7), (1, 64, 48), (1, 1, 1)];
    check_conv_block(&gpu, &mut rng, PATCH_MERGING, &shapes);
}

#[test]
fn mbconv_rejects_bad_arguments() {
    const TEST: &str = "mbconv_rejects_bad_arguments";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let shape = ConvBlockShape {
        batch: 1,
        height: 8,
        width: 16,
    };
    let act = 8 * 16 * C * 2;
    let buf = gpu.alloc(4 * act).unwrap();
    let weights = gpu.alloc(1 << 16).unwrap();
    let w = region(&weights);
    let good = ConvBlockArgs {
        input: DeviceRegion::new(buf.ptr(), act),
        expand_weight: w,
        expand_bias: w,
        depthwise_weight: w,
        depthwise_bias: w,
        project_weight: w,
        project_bias: w,
        output: DeviceRegion::new(buf.ptr() + act as u64, act),
    };
    launch_mbconv(&gpu, &shape, &good).unwrap();
    gpu.synchronize().unwrap();
    let overlapping = ConvBlockArgs {
        output: DeviceRegion::new(buf.ptr() + 64, act),
        ..good
    };
    expect_launch_error(
        "overlapping output",
        launch_mbconv(&gpu, &shape, &overlapping),
    );
    let short = ConvBlockArgs {
        input: DeviceRegion::new(buf.ptr(), act - 2),
        ..good
    };
    expect_launch_error("short input", launch_mbconv(&gpu, &shape, &short));
    let misaligned = ConvBlockArgs {
        project_weight: DeviceRegion::new(weights.ptr() + 2, 1 << 15),
        ..good
    };
    expect_launch_error(
        "misaligned weight",
        launch_mbconv(&gpu, &shape, &misaligned),
    );
    let empty = ConvBlockShape { height: 0, ..shape };
    expect_launch_error("empty shape", launch_mbconv(&gpu, &empty, &good));
}

/// TinyViT's window partition (zero padding) followed by the attention's LayerNorm, fused:
/// every token, padding tokens included (they come out as beta).
#[test]
fn window_layer_norm_matches_partition_then_norm() {
    const TEST: &str = "window_layer_norm_matches_partition_then_norm";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x574c);
    // (batch, height, width, channels, window): padded on both axes, exact, the encoder's.
    let cases = [
        (2, 10, 13, 64, 7),
        (1, 14, 28, 160, 14),
        (1, 64, 64, 160, 14),
        (1, 16, 16, 320, 7),
    ];
    for (batch, height, width, channels, window) in cases {
        let g = WindowGeometry {
            batch,
            height,
            width,
            channels,
            window,
        };
        let rows = g.windows() * g.tokens();
        let (xh, x) = random_f16(&mut rng, g.map_elements(), -3.0, 3.0);
        let (gh, gf) = random_f32(&mut rng, channels, 0.5, 1.5);
        let (bh, bf) = random_f32(&mut rng, channels, -0.5, 0.5);
        let (wy, wx) = g.grid();
        let zeros = vec![0.0; channels];
        let mut want = Vec::with_capacity(rows * channels);
        for n in 0..batch {
            for win_y in 0..wy {
                for win_x in 0..wx {
                    for t in 0..window * window {
                        let (y, xx) = (win_y * window + t / window, win_x * window + t % window);
                        let row = if y < height && xx < width {
                            let p = ((n * height + y) * width + xx) * channels;
                            &x[p..p + channels]
                        } else {
                            &zeros[..]
                        };
                        want.extend(layer_norm_row(row, &gf, &bf, 1e-5));
                    }
                }
            }
        }
        let (xb, gb, bb) = (upload(&gpu, &xh), upload(&gpu, &gh), upload(&gpu, &bh));
        let out = poisoned(&gpu, rows * channels + 8);
        let args = LayerNormArgs {
            rows,
            channels,
            eps: 1e-5,
            x: region(&xb),
            residual: None,
            sum: None,
            gamma: region(&gb),
            beta: region(&bb),
            y: DeviceRegion::new(out.ptr(), rows * channels * 2),
        };
        launch_window_layer_norm(&gpu, &g, &args).unwrap();
        let got = download_f16(&gpu, &out);
        let tail_poisoned = got[rows * channels..].iter().all(|v| v.to_bits() == 0xffff);
        let got: Vec<f64> = got[..rows * channels].iter().map(|v| v.to_f64()).collect();
        let (rel, max_abs) = errors(&got, &want);
        println!("window LayerNorm {g:?}: rel L2 {rel:.2e}, max abs {max_abs:.2e}");
        assert!(
            max_abs <= LAYER_NORM_MAX_ABS,
            "{g:?}: max abs {max_abs:.3e}"
        );
        assert!(tail_poisoned, "{g:?}: wrote past the output");

        // Row count that is not the padded windows, and an output over the input, are typed.
        let wrong_rows = LayerNormArgs {
            rows: rows - 1,
            ..args
        };
        expect_launch_error(
            "wrong rows",
            launch_window_layer_norm(&gpu, &g, &wrong_rows),
        );
        let over_input = LayerNormArgs {
            y: region(&xb),
            ..args
        };
        expect_launch_error("y over x", launch_window_layer_norm(&gpu, &g, &over_input));
    }
}

/// TinyViT's local conv (depthwise 3x3, pad 1, bias) fused with the MLP's LayerNorm: the
/// stored convolution against the f64 depthwise reference, the norm against the f64 LayerNorm
/// of the fp16-rounded convolution (what the kernel normalises).
#[test]
fn depthwise_layer_norm_matches_conv_then_norm() {
    const TEST: &str = "depthwise_layer_norm_matches_conv_then_norm";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x444c);
    // (batch, height, width, channels): the encoder's three widths, ragged maps, a batch.
    let cases = [
        (2, 5, 9, 128),
        (1, 64, 64, 160),
        (1, 13, 7, 320),
        (1, 3, 3, 64),
    ];
    for (batch, height, width, channels) in cases {
        let rows = batch * height * width;
        let (xh, x) = random_f16(&mut rng, rows * channels, -2.0, 2.0);
        let (wh, w) = random_f16(&mut rng, 9 * channels, -0.5, 0.5);
        let (dbh, db) = random_f32(&mut rng, channels, -0.5, 0.5);
        let (gh, gf) = random_f32(&mut rng, channels, 0.5, 1.5);
        let (bh, bf) = random_f32(&mut rng, channels, -0.5, 0.5);
        let shape = DepthwiseShape {
            batch,
            height,
            width,
            channels,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let conv = depthwise_reference(&shape, &x, &w, Some(&db), Activation::None);
        let stored: Vec<f64> = conv.iter().map(|&v| f16::from_f64(v).to_f64()).collect();
        let want: Vec<f64> = stored
            .chunks_exact(channels)
            .flat_map(|row| layer_norm_row(row, &gf, &bf, 1e-5))
            .collect();
        let bufs = [
            upload(&gpu, &xh),
            upload(&gpu, &wh),
            upload(&gpu, &dbh),
            upload(&gpu, &gh),
            upload(&gpu, &bh),
        ];
        let n = rows * channels;
        let (sum, out) = (poisoned(&gpu, n + 8), poisoned(&gpu, n + 8));
        let prologue = DepthwisePrologue {
            batch,
            height,
            width,
            weight: region(&bufs[1]),
            bias: region(&bufs[2]),
        };
        let args = LayerNormArgs {
            rows,
            channels,
            eps: 1e-5,
            x: region(&bufs[0]),
            residual: None,
            sum: Some(DeviceRegion::new(sum.ptr(), n * 2)),
            gamma: region(&bufs[3]),
            beta: region(&bufs[4]),
            y: DeviceRegion::new(out.ptr(), n * 2),
        };
        launch_depthwise_layer_norm(&gpu, &prologue, &args).unwrap();
        let (got_sum, got) = (download_f16(&gpu, &sum), download_f16(&gpu, &out));
        let tails = got_sum[n..]
            .iter()
            .chain(&got[n..])
            .all(|v| v.to_bits() == 0xffff);
        let got_sum: Vec<f64> = got_sum[..n].iter().map(|v| v.to_f64()).collect();
        let got: Vec<f64> = got[..n].iter().map(|v| v.to_f64()).collect();
        let (conv_rel, _) = errors(&got_sum, &conv);
        let (_, norm_abs) = errors(&got, &want);
        println!(
            "depthwise LayerNorm {batch}x{height}x{width}x{channels}: conv rel L2 {conv_rel:.2e}, \
             norm max abs {norm_abs:.2e}"
        );
        assert!(conv_rel <= CONV_REL_L2, "conv rel L2 {conv_rel:.3e}");
        assert!(
            norm_abs <= LAYER_NORM_MAX_ABS,
            "norm max abs {norm_abs:.3e}"
        );
        assert!(tails, "wrote past an output");

        let no_sum = LayerNormArgs { sum: None, ..args };
        expect_launch_error(
            "no sum",
            launch_depthwise_layer_norm(&gpu, &prologue, &no_sum),
        );
        let in_place = LayerNormArgs {
            y: region(&bufs[0]),
            ..args
        };
        expect_launch_error(
            "y over x",
            launch_depthwise_layer_norm(&gpu, &prologue, &in_place),
        );
    }
}

/// The attention's proj GEMM with the window reverse, crop and `res_x + x` in its epilogue:
/// every map pixel written once from its token, padding tokens dropped.
#[test]
fn gemm_window_scatter_matches_unpartition() {
    const TEST: &str = "gemm_window_scatter_matches_unpartition";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x5347);
    // (batch, height, width, channels, window): padded, exact, the encoder's layers.2 shape.
    let cases = [
        (1, 10, 13, 64, 7),
        (2, 14, 14, 160, 14),
        (1, 64, 64, 160, 14),
        (1, 9, 16, 320, 7),
    ];
    for (batch, height, width, n, window) in cases {
        let g = WindowGeometry {
            batch,
            height,
            width,
            channels: n,
            window,
        };
        let (m, k) = (g.windows() * g.tokens(), n);
        let pixels = g.map_elements() / n;
        let (xh, x) = random_f16(&mut rng, m * k, -1.0, 1.0);
        let (wh, w) = random_f16(&mut rng, n * k, -0.1, 0.1);
        let (bh, b) = random_f32(&mut rng, n, -0.5, 0.5);
        let (rh, r) = random_f16(&mut rng, pixels * n, -2.0, 2.0);
        let (wy, wx) = g.grid();
        let mut want = vec![f64::NAN; pixels * n];
        for row in 0..m {
            let (t, win) = (row % g.tokens(), row / g.tokens());
            let (img, wyi, wxi) = (win / (wy * wx), (win / wx) % wy, win % wx);
            let (py, px) = (wyi * window + t / window, wxi * window + t % window);
            if py >= height || px >= width {
                continue;
            }
            let p = (img * height + py) * width + px;
            for o in 0..n {
                let dot: f64 = (0..k).map(|i| x[row * k + i] * w[o * k + i]).sum();
                want[p * n + o] = dot + b[o] + r[p * n + o];
            }
        }
        assert!(
            want.iter().all(|v| v.is_finite()),
            "every pixel has a token"
        );
        let bufs = [
            upload(&gpu, &xh),
            upload(&gpu, &wh),
            upload(&gpu, &bh),
            upload(&gpu, &rh),
        ];
        let out = poisoned(&gpu, pixels * n + 8);
        let problem = GemmProblem::new(m, n, k);
        let args = GemmArgs {
            x: Matrix::packed(region(&bufs[0]), k),
            w: Matrix::packed(region(&bufs[1]), k),
            y: Matrix::packed(DeviceRegion::new(out.ptr(), pixels * n * 2), n),
            epilogue: Epilogue {
                bias: Some(region(&bufs[2])),
                residual: Some(Residual {
                    matrix: Matrix::packed(region(&bufs[3]), n),
                    order: ResidualOrder::AfterActivation,
                }),
                ..Epilogue::default()
            },
        };
        launch_gemm_window_scatter(&gpu, &g, &problem, &args).unwrap();
        let got = download_f16(&gpu, &out);
        let tail_poisoned = got[pixels * n..].iter().all(|v| v.to_bits() == 0xffff);
        let got: Vec<f64> = got[..pixels * n].iter().map(|v| v.to_f64()).collect();
        let (rel, max_abs) = errors(&got, &want);
        println!("window-scatter GEMM {g:?}: rel L2 {rel:.2e}, max abs {max_abs:.2e}");
        assert!(rel <= GEMM_REL_L2, "{g:?}: rel L2 {rel:.3e}");
        assert!(tail_poisoned, "{g:?}: wrote past the output");

        // Only a map that needs padding has a pixel count different from the token count.
        if pixels != problem.m {
            let unpadded = GemmProblem::new(pixels, n, k);
            expect_launch_error(
                "M is not the padded token count",
                launch_gemm_window_scatter(&gpu, &g, &unpadded, &args),
            );
        }
    }
}

/// Random operands of one fused MLP, as uploaded (fp16 / f32) and as f64.
struct MlpOperands {
    x: (Vec<f16>, Vec<f64>),
    w1: (Vec<f16>, Vec<f64>),
    b1: (Vec<f32>, Vec<f64>),
    w2: (Vec<f16>, Vec<f64>),
    b2: (Vec<f32>, Vec<f64>),
    r: (Vec<f16>, Vec<f64>),
}

/// LayerNorm-like x, weights scaled to unit-order pre-activations (x ~ U(-2, 2), w1 ~
/// 2/sqrt(C)), a residual stream in [-2, 2): fc2's output has std ~1.1, |y| stays below ~10.
fn mlp_operands(rng: &mut Rng, rows: usize, c: usize) -> MlpOperands {
    let hid = 4 * c;
    let (s1, s2) = (2.0 / (c as f64).sqrt(), 2.0 / (hid as f64).sqrt());
    MlpOperands {
        x: random_f16(rng, rows * c, -2.0, 2.0),
        w1: random_f16(rng, hid * c, -s1, s1),
        b1: random_f32(rng, hid, -0.5, 0.5),
        w2: random_f16(rng, c * hid, -s2, s2),
        b2: random_f32(rng, c, -0.5, 0.5),
        r: random_f16(rng, rows * c, -2.0, 2.0),
    }
}

/// tiny_vit_sam.py `Mlp.forward` after its LayerNorm plus the block's residual, in f64, with
/// the hidden activations rounded to fp16 (the unfused chain stores them so, the kernel too).
fn mlp_reference(c: usize, o: &MlpOperands) -> Vec<f64> {
    let hid = 4 * c;
    let h: Vec<f64> = linear(&o.x.1, &o.w1.1, &o.b1.1, c, hid)
        .into_iter()
        .map(|v| f16::from_f64(activate(v, Activation::Gelu)).to_f64())
        .collect();
    linear(&h, &o.w2.1, &o.b2.1, hid, c)
        .into_iter()
        .zip(&o.r.1)
        .map(|(v, r)| v + r)
        .collect()
}

/// The uploaded operands and an `MlpArgs` over them, x, residual and output with the given
/// row strides (elements); the output buffer is poisoned, with 8 spare elements at its end.
struct MlpBuffers {
    _bufs: Vec<finesam::gpu::DeviceBuffer>,
    out: finesam::gpu::DeviceBuffer,
    args: MlpArgs,
}

fn mlp_buffers(
    gpu: &Gpu,
    rows: usize,
    c: usize,
    o: &MlpOperands,
    (ldx, ldr, ldy): (usize, usize, usize),
) -> MlpBuffers {
    // Spreads a packed [rows, c] matrix to rows `ld` apart (gaps zero).
    let strided = |m: &[f16], ld: usize| -> Vec<f16> {
        let mut v = vec![f16::ZERO; (rows - 1) * ld + c];
        for (i, row) in m.chunks_exact(c).enumerate() {
            v[i * ld..i * ld + c].copy_from_slice(row);
        }
        v
    };
    let bufs = vec![
        upload(gpu, &strided(&o.x.0, ldx)),
        upload(gpu, &o.w1.0),
        upload(gpu, &o.b1.0),
        upload(gpu, &o.w2.0),
        upload(gpu, &o.b2.0),
        upload(gpu, &strided(&o.r.0, ldr)),
    ];
    let out_elems = (rows - 1) * ldy + c;
    let out = poisoned(gpu, out_elems + 8);
    let args = MlpArgs {
        x: Matrix::packed(region(&bufs[0]), c).with_row_stride(ldx),
        fc1_weight: region(&bufs[1]),
        fc1_bias: region(&bufs[2]),
        fc2_weight: region(&bufs[3]),
        fc2_bias: region(&bufs[4]),
        residual: Matrix::packed(region(&bufs[5]), c).with_row_stride(ldr),
        output: Matrix::packed(DeviceRegion::new(out.ptr(), out_elems * 2), c).with_row_stride(ldy),
    };
    MlpBuffers {
        _bufs: bufs,
        out,
        args,
    }
}

/// Fused MLP against the f64 reference: both widths, rows that are not a multiple of either
/// block's 64 / 32 rows, the encoder's 4096, one row, and strided x / residual / output
/// (nothing written between output rows or past the end).
#[test]
fn fused_mlp_matches_reference() {
    const TEST: &str = "fused_mlp_matches_reference";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x4d4c50);
    // (channels, rows, (ldx, ldr, ldy)).
    let cases = [
        (128, 1000, (128, 128, 128)),
        (128, 4096, (128, 128, 128)),
        (160, 1000, (160, 160, 160)),
        (160, 4096, (160, 160, 160)),
        (160, 1, (160, 160, 160)),
        (128, 77, (136, 144, 152)),
        (160, 33, (168, 160, 176)),
    ];
    for (c, rows, strides) in cases {
        let o = mlp_operands(&mut rng, rows, c);
        let want = mlp_reference(c, &o);
        let peak = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // Half an ulp of the fp16 binade holding `peak` (normal range: |y| >= 2^-14).
        let half_ulp = 2f64.powi(peak.max(1.0).log2().floor() as i32 - 11);
        let max_abs_bound = half_ulp + MLP_MAX_ABS_SLACK;
        let b = mlp_buffers(&gpu, rows, c, &o, strides);
        let shape = MlpShape { rows, channels: c };
        launch_tinyvit_mlp(&gpu, &shape, &b.args).unwrap();
        let all = download_f16(&gpu, &b.out);
        let ldy = strides.2;
        let mut got = Vec::with_capacity(rows * c);
        let mut untouched = true;
        for (i, v) in all.iter().enumerate() {
            if i / ldy < rows && i % ldy < c {
                got.push(v.to_f64());
            } else {
                untouched &= v.to_bits() == 0xffff;
            }
        }
        let (rel, max_abs) = errors(&got, &want);
        println!(
            "fused MLP C {c} rows {rows} strides {strides:?}: rel L2 {rel:.2e}, max abs \
             {max_abs:.2e} (|y| <= {peak:.2})"
        );
        assert!(rel <= MLP_REL_L2, "C {c} rows {rows}: rel L2 {rel:.3e}");
        assert!(
            max_abs <= max_abs_bound,
            "C {c} rows {rows}: max abs {max_abs:.3e} > {max_abs_bound:.3e}"
        );
        assert!(
            untouched,
            "C {c} rows {rows}: wrote outside the output rows"
        );
    }
}

/// The fused MLP computes the same bits as the chain it replaces in the encoder (fc1 GEMM +
/// bias + GELU to an fp16 h, fc2 GEMM + bias + residual), whichever tile runs the GEMMs: each
/// output takes the same mma.sync k16 steps in the same order and the same epilogue
/// arithmetic (kernels/tinyvit.cu). This is what keeps the encoder's parity and tile tests
/// unchanged by the fusion.
#[test]
fn fused_mlp_is_bitwise_the_two_gemm_chain() {
    const TEST: &str = "fused_mlp_is_bitwise_the_two_gemm_chain";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x4d4c51);
    for c in MLP_CHANNELS {
        let (rows, hid) = (1000, 4 * c);
        let o = mlp_operands(&mut rng, rows, c);
        let b = mlp_buffers(&gpu, rows, c, &o, (c, c, c));
        launch_tinyvit_mlp(&gpu, &MlpShape { rows, channels: c }, &b.args).unwrap();
        let fused: Vec<u16> = download_f16(&gpu, &b.out)[..rows * c]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let h = poisoned(&gpu, rows * hid);
        let y = poisoned(&gpu, rows * c);
        let fc1 = GemmArgs {
            x: b.args.x,
            w: Matrix::packed(b.args.fc1_weight, c),
            y: Matrix::packed(region(&h), hid),
            epilogue: Epilogue {
                bias: Some(b.args.fc1_bias),
                activation: Activation::Gelu,
                ..Epilogue::default()
            },
        };
        let fc2 = GemmArgs {
            x: Matrix::packed(region(&h), hid),
            w: Matrix::packed(b.args.fc2_weight, hid),
            y: Matrix::packed(region(&y), c),
            epilogue: Epilogue {
                bias: Some(b.args.fc2_bias),
                residual: Some(Residual {
                    matrix: b.args.residual,
                    order: ResidualOrder::AfterActivation,
                }),
                ..Epilogue::default()
            },
        };
        for tile in GemmTile::ALL {
            launch_gemm_tile(&gpu, tile, &GemmProblem::new(rows, hid, c), &fc1).unwrap();
            launch_gemm_tile(&gpu, tile, &GemmProblem::new(rows, c, hid), &fc2).unwrap();
            let chain = download_f16(&gpu, &y);
            let differing = chain
                .iter()
                .zip(&fused)
                .filter(|(a, &f)| a.to_bits() != f)
                .count();
            println!(
                "fused MLP C {c} vs two GEMMs on {tile:?}: {differing} of {} differ",
                rows * c
            );
            assert_eq!(differing, 0, "C {c}, GEMMs on {tile:?}");
        }
    }
}

#[test]
fn fused_mlp_rejects_bad_arguments() {
    const TEST: &str = "fused_mlp_rejects_bad_arguments";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(0x4d4c52);
    let (rows, c) = (64, 128);
    let o = mlp_operands(&mut rng, rows, c);
    let b = mlp_buffers(&gpu, rows, c, &o, (c, c, c));
    let shape = MlpShape { rows, channels: c };
    launch_tinyvit_mlp(&gpu, &shape, &b.args).unwrap();
    gpu.synchronize().unwrap();
    // The host-side checks are covered in tests/cpu_ops.rs; here the launcher returns them.
    let wide = MlpShape {
        channels: 320,
        ..shape
    };
    expect_launch_error("320 channels", launch_tinyvit_mlp(&gpu, &wide, &b.args));
    let empty = MlpShape { rows: 0, ..shape };
    expect_launch_error("no rows", launch_tinyvit_mlp(&gpu, &empty, &b.args));
    let in_place = MlpArgs {
        output: b.args.residual,
        ..b.args
    };
    expect_launch_error(
        "output over residual",
        launch_tinyvit_mlp(&gpu, &shape, &in_place),
    );
    let short = MlpArgs {
        fc2_weight: DeviceRegion::new(b.args.fc2_weight.ptr, b.args.fc2_weight.bytes - 16),
        ..b.args
    };
    expect_launch_error("short fc2 weight", launch_tinyvit_mlp(&gpu, &shape, &short));
}

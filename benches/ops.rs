//! Criterion benchmarks of the dense kernels at MobileSAM (TinyViT-5M, 1024x1024) shapes: GPU
//! time from CUDA events (`Gpu::time_ms` inside `iter_custom`). Each case also prints one line
//! with its achieved TFLOP/s and GB/s against its floor, and every GEMM-shaped case prints the
//! time of each tile configuration (for tuning `select_gemm_tile`; every GEMM shape of the
//! MobileSAM image encoder and the decoder's token side is swept too, with each split count,
//! the model's and the tuned choice, without a criterion case). Skips without a GPU.
//!
//! Ceilings (H100 SXM): ~990 TFLOP/s dense fp16 datasheet (~800 measured), ~3.0 TB/s measured
//! copy bandwidth (H200: ~4.3 TB/s). Bytes below are the compulsory traffic: every operand read
//! once and the output written once.

mod common;

use common::{criterion_gpu_case, f32_buffer, region, upload};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use finesam::gpu::DeviceBuffer;
use finesam::ops::conv::{
    launch_conv2d, launch_conv2d_tile, launch_conv3x3_stem, launch_depthwise_conv2d, Conv2dShape,
    ConvArgs, DepthwiseArgs, DepthwiseShape, StemArgs,
};
use finesam::ops::gemm::{
    gemm_key, launch_gemm, launch_gemm_split, launch_gemm_tile, select_gemm_tile, split_k_segments,
    Activation, Epilogue, GemmArgs, GemmProblem, GemmTile, Matrix, Residual, ResidualOrder,
};
use finesam::ops::norm::{launch_layer_norm, LayerNormArgs};
use finesam::ops::tinyvit::{launch_tinyvit_mlp, tinyvit_mlp_flops, MlpArgs, MlpShape};
use finesam::{Gpu, Result};
use half::f16;

/// Repetitions per printed measurement.
const REPS: usize = 50;

/// A device buffer of `n` fp16 values in about [-1, 1] (never benchmark on zeros).
fn f16_buffer(gpu: &Gpu, n: usize, seed: usize) -> DeviceBuffer {
    let values: Vec<f16> = (0..n)
        .map(|i| {
            let h = (i ^ seed).wrapping_mul(2654435761) >> 7;
            f16::from_f32((h % 2001) as f32 / 1000.0 - 1.0)
        })
        .collect();
    upload(gpu, bytemuck::cast_slice(&values))
}

/// Times `work`, prints the achieved rates, and registers it with criterion.
fn bench_case(
    c: &mut Criterion,
    gpu: &Gpu,
    name: &str,
    flops: f64,
    bytes: f64,
    mut work: impl FnMut() -> Result<()>,
) {
    work().expect("launch");
    gpu.synchronize().expect("sync");
    let ms = gpu.time_ms(REPS, &mut work).expect("timing");
    let s = ms * 1e-3;
    println!(
        "{name}: {:.1} us, {:.1} TFLOP/s, {:.0} GB/s | floor {:.2} GFLOP, {:.1} MB",
        ms * 1e3,
        flops / s * 1e-12,
        bytes / s * 1e-9,
        flops * 1e-9,
        bytes * 1e-6
    );
    criterion_gpu_case(c, gpu, name, work);
}

/// Prints the time of each tile for a GEMM-shaped launch (`launch(tile)`).
fn tile_sweep(gpu: &Gpu, name: &str, flops: f64, mut launch: impl FnMut(GemmTile) -> Result<()>) {
    let mut line = format!("  tiles for {name}:");
    for tile in GemmTile::ALL {
        launch(tile).expect("launch");
        let ms = gpu.time_ms(REPS, || launch(tile)).expect("timing");
        line += &format!(
            " {tile:?} {:.1} us ({:.0} TFLOP/s);",
            ms * 1e3,
            flops / (ms * 1e-3) * 1e-12
        );
    }
    println!("{line}");
}

struct GemmCase {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    activation: Activation,
    bias: bool,
    residual: Option<ResidualOrder>,
}

fn gemms(c: &mut Criterion, gpu: &Gpu) {
    let cases = [
        GemmCase {
            name: "gemm_mlp_fc1_stage1_m16384_k128_n512_bias_gelu",
            m: 16384,
            n: 512,
            k: 128,
            activation: Activation::Gelu,
            bias: true,
            residual: None,
        },
        GemmCase {
            name: "gemm_mlp_fc2_stage3_m4096_k1280_n320_bias_residual",
            m: 4096,
            n: 320,
            k: 1280,
            activation: Activation::None,
            bias: true,
            residual: Some(ResidualOrder::AfterActivation),
        },
        GemmCase {
            name: "gemm_mbconv_expand_m65536_k64_n256_bias_gelu",
            m: 65536,
            n: 256,
            k: 64,
            activation: Activation::Gelu,
            bias: true,
            residual: None,
        },
        GemmCase {
            name: "gemm_mbconv_project_m65536_k256_n64_bias_residual_gelu",
            m: 65536,
            n: 64,
            k: 256,
            activation: Activation::Gelu,
            bias: true,
            residual: Some(ResidualOrder::BeforeActivation),
        },
        GemmCase {
            name: "gemm_square_4096",
            m: 4096,
            n: 4096,
            k: 4096,
            activation: Activation::None,
            bias: false,
            residual: None,
        },
    ];
    for case in cases {
        let GemmCase { m, n, k, .. } = case;
        let x = f16_buffer(gpu, m * k, 1);
        let w = f16_buffer(gpu, n * k, 2);
        let y = f16_buffer(gpu, m * n, 3);
        let r = f16_buffer(gpu, m * n, 4);
        let b = f32_buffer(gpu, n, 0.1);
        let problem = GemmProblem::new(m, n, k);
        let args = GemmArgs {
            x: Matrix::packed(region(&x), k),
            w: Matrix::packed(region(&w), k),
            y: Matrix::packed(region(&y), n),
            epilogue: Epilogue {
                bias: case.bias.then(|| region(&b)),
                activation: case.activation,
                residual: case.residual.map(|order| Residual {
                    matrix: Matrix::packed(region(&r), n),
                    order,
                }),
                ..Epilogue::default()
            },
        };
        let flops = problem.flops();
        let residual_bytes = if case.residual.is_some() {
            m * n * 2
        } else {
            0
        };
        let bytes = ((m * k + n * k + m * n) * 2 + residual_bytes) as f64;
        println!(
            "{}: launcher picks {:?}",
            case.name,
            select_gemm_tile(m, n, 1, gpu.kernels().sm_count())
        );
        tile_sweep(gpu, case.name, flops, |tile| {
            launch_gemm_tile(gpu, tile, &problem, &args)
        });
        bench_case(c, gpu, case.name, flops, bytes, || {
            launch_gemm(gpu, &problem, &args)
        });
    }
}

/// Every GEMM shape of the MobileSAM image encoder (1024x1024) and the mask decoder's token
/// side (8 and 32 prompts) with its epilogue: each tile's time (and each split count for
/// split-K shapes), the model's choice and the tuned one (GemmTuner), and the totals over the
/// encoder's launches (no criterion case; `gemm_tuned_decoder_mlp2` is one).
fn gemm_shape_sweep(gpu: &Gpu) {
    use Activation::{Gelu, None as Plain, Relu};
    const AFTER: Option<ResidualOrder> = Some(ResidualOrder::AfterActivation);
    // (name, launches per forward, M, N, K, activation, residual); M of qkv/proj is the
    // zero-padded window rows.
    let shapes = [
        ("encoder layers.1 qkv", 2, 17689, 384, 128, Plain, None),
        ("encoder layers.1 proj", 2, 17689, 128, 128, Plain, AFTER),
        ("encoder layers.1 fc1", 2, 16384, 512, 128, Gelu, None),
        ("encoder layers.1 fc2", 2, 16384, 128, 512, Plain, AFTER),
        (
            "encoder layers.1 merge conv1",
            1,
            16384,
            160,
            128,
            Gelu,
            None,
        ),
        (
            "encoder layers.1 merge conv3",
            1,
            4096,
            160,
            160,
            Plain,
            None,
        ),
        ("encoder layers.2 qkv", 6, 4900, 480, 160, Plain, None),
        ("encoder layers.2 proj", 6, 4900, 160, 160, Plain, AFTER),
        ("encoder layers.2 fc1", 6, 4096, 640, 160, Gelu, None),
        ("encoder layers.2 fc2", 6, 4096, 160, 640, Plain, AFTER),
        (
            "encoder layers.2 merge conv1",
            1,
            4096,
            320,
            160,
            Gelu,
            None,
        ),
        (
            "encoder layers.2 merge conv3",
            1,
            4096,
            320,
            320,
            Plain,
            None,
        ),
        ("encoder layers.3 qkv", 2, 4900, 960, 320, Plain, None),
        ("encoder layers.3 proj", 2, 4900, 320, 320, Plain, AFTER),
        ("encoder layers.3 fc1", 2, 4096, 1280, 320, Gelu, None),
        ("encoder layers.3 fc2", 2, 4096, 320, 1280, Plain, AFTER),
        ("encoder neck.0", 1, 4096, 256, 320, Plain, None),
        ("decoder 8 prompts mlp lin1", 2, 56, 2048, 256, Relu, None),
        ("decoder 8 prompts mlp lin2", 2, 56, 256, 2048, Plain, AFTER),
        ("decoder 8 prompts token proj", 6, 56, 256, 256, Plain, None),
        (
            "decoder 8 prompts token q to image",
            2,
            56,
            128,
            256,
            Plain,
            None,
        ),
        ("decoder 1 prompt mlp lin2", 2, 7, 256, 2048, Plain, AFTER),
        (
            "decoder 32 prompts mlp lin2",
            2,
            224,
            256,
            2048,
            Plain,
            AFTER,
        ),
    ];
    let tuner = gpu.gemm_tuner();
    let mut totals = [0.0f64; 2]; // encoder: model, tuned (us per forward)
    for (name, count, m, n, k, activation, residual) in shapes {
        let x = f16_buffer(gpu, m * k, 1);
        let w = f16_buffer(gpu, n * k, 2);
        let y = f16_buffer(gpu, m * n, 3);
        let r = f16_buffer(gpu, m * n, 4);
        let b = f32_buffer(gpu, n, 0.1);
        let problem = GemmProblem::new(m, n, k);
        let args = GemmArgs {
            x: Matrix::packed(region(&x), k),
            w: Matrix::packed(region(&w), k),
            y: Matrix::packed(region(&y), n),
            epilogue: Epilogue {
                bias: Some(region(&b)),
                activation,
                residual: residual.map(|order| Residual {
                    matrix: Matrix::packed(region(&r), n),
                    order,
                }),
                ..Epilogue::default()
            },
        };
        let label = format!("{name} M{m} N{n} K{k}");
        let flops = problem.flops();
        let key = gemm_key(&problem, &args).expect("valid GEMM");
        tile_sweep(gpu, &label, flops, |tile| {
            launch_gemm_tile(gpu, tile, &problem, &args)
        });
        if key.split_k() {
            let mut line = format!("  splits for {label}:");
            for tile in GemmTile::ALL {
                for splits in [1, 2, 4, 8, 16] {
                    if splits > split_k_segments(k) {
                        continue;
                    }
                    let launch = || launch_gemm_split(gpu, tile, splits, &problem, &args);
                    launch().expect("launch");
                    let ms = gpu.time_ms(REPS, launch).expect("timing");
                    line += &format!(" {tile:?}/{splits} {:.1} us;", ms * 1e3);
                }
            }
            println!("{line}");
        }
        // The model's choice (nothing cached for this key yet), then the tuned one.
        let cached = tuner.cached(&key);
        let auto = || launch_gemm(gpu, &problem, &args);
        let model_ms = if cached.is_none() {
            auto().expect("launch");
            gpu.time_ms(REPS, auto).expect("timing")
        } else {
            f64::NAN
        };
        tuner.tune(gpu, auto).expect("tuning");
        auto().expect("launch");
        let tuned_ms = gpu.time_ms(REPS, auto).expect("timing");
        println!(
            "{label}: model {:?} {:.1} us ({:?} by select_gemm_tile), tuned {:?} {:.1} us ({:.0} TFLOP/s)",
            finesam::ops::gemm_tune::heuristic_choice(
                &key,
                gpu.kernels().sm_count(),
                gpu.kernels().gemm_blocks_per_sm()
            ),
            model_ms * 1e3,
            select_gemm_tile(m, n, 1, gpu.kernels().sm_count()),
            tuner.cached(&key),
            tuned_ms * 1e3,
            flops / (tuned_ms * 1e-3) * 1e-12
        );
        if name.starts_with("encoder") && model_ms.is_finite() {
            totals[0] += count as f64 * model_ms * 1e3;
            totals[1] += count as f64 * tuned_ms * 1e3;
        }
    }
    println!(
        "encoder GEMMs per forward (these shapes x launches): model {:.1} us, tuned {:.1} us",
        totals[0], totals[1]
    );
}

/// The decoder MLP's second GEMM (8 prompts: M 56, N 256, K 2048, bias + residual), tuned:
/// the split-K case.
fn decoder_mlp2(c: &mut Criterion, gpu: &Gpu) {
    let (m, n, k) = (56, 256, 2048);
    let x = f16_buffer(gpu, m * k, 1);
    let w = f16_buffer(gpu, n * k, 2);
    let y = f16_buffer(gpu, m * n, 3);
    let b = f32_buffer(gpu, n, 0.1);
    let problem = GemmProblem::new(m, n, k);
    let ym = Matrix::packed(region(&y), n);
    let args = GemmArgs {
        x: Matrix::packed(region(&x), k),
        w: Matrix::packed(region(&w), k),
        y: ym,
        epilogue: Epilogue {
            bias: Some(region(&b)),
            residual: Some(Residual {
                matrix: ym,
                order: ResidualOrder::AfterActivation,
            }),
            ..Epilogue::default()
        },
    };
    let auto = || launch_gemm(gpu, &problem, &args);
    gpu.gemm_tuner().tune(gpu, auto).expect("tuning");
    // Floor: W (1 MiB) read once, ~0.25 us at 4.3 TB/s; X 229 KB, Y twice 29 KB.
    let bytes = ((m * k + n * k + 2 * m * n) * 2) as f64;
    bench_case(
        c,
        gpu,
        "gemm_tuned_decoder_mlp2_m56_n256_k2048",
        problem.flops(),
        bytes,
        auto,
    );
}

fn convs(c: &mut Criterion, gpu: &Gpu) {
    // Neck: 64x64x256 -> 256, 3x3, no bias (LayerNorm2d follows).
    let implicit = [
        (
            "conv3x3_neck_64x64_256_to_256",
            Conv2dShape {
                batch: 1,
                height: 64,
                width: 64,
                in_channels: 256,
                out_channels: 256,
                kernel_h: 3,
                kernel_w: 3,
                stride: 1,
                padding: 1,
            },
            false,
        ),
        (
            "conv3x3_s2_patch_embed_512x512_32_to_64_bias",
            Conv2dShape {
                batch: 1,
                height: 512,
                width: 512,
                in_channels: 32,
                out_channels: 64,
                kernel_h: 3,
                kernel_w: 3,
                stride: 2,
                padding: 1,
            },
            true,
        ),
    ];
    for (name, shape, with_bias) in implicit {
        let (ho, wo) = shape.output_size().expect("valid shape");
        let problem = shape.gemm_problem().expect("valid shape");
        let x = f16_buffer(gpu, shape.height * shape.width * shape.in_channels, 5);
        let w = f16_buffer(gpu, problem.n * problem.k, 6);
        let y = f16_buffer(gpu, ho * wo * shape.out_channels, 7);
        let b = f32_buffer(gpu, shape.out_channels, 0.1);
        let bytes = ((x.len() + w.len() + y.len()) + if with_bias { b.len() } else { 0 }) as f64;
        let args = ConvArgs {
            input: region(&x),
            weight: region(&w),
            output: Matrix::packed(region(&y), shape.out_channels),
            epilogue: Epilogue {
                bias: with_bias.then(|| region(&b)),
                ..Epilogue::default()
            },
        };
        tile_sweep(gpu, name, problem.flops(), |tile| {
            launch_conv2d_tile(gpu, tile, &shape, &args)
        });
        bench_case(c, gpu, name, problem.flops(), bytes, || {
            launch_conv2d(gpu, &shape, &args)
        });
    }

    // Depthwise 3x3 at MBConv's 256x256x256 (stride 1, GELU) and a stride-2 patch merging.
    for (name, shape) in [
        (
            "depthwise3x3_mbconv_256x256x256_gelu",
            DepthwiseShape {
                batch: 1,
                height: 256,
                width: 256,
                channels: 256,
                kernel: 3,
                stride: 1,
                padding: 1,
            },
        ),
        (
            "depthwise3x3_s2_merge_256x256x128_gelu",
            DepthwiseShape {
                batch: 1,
                height: 256,
                width: 256,
                channels: 128,
                kernel: 3,
                stride: 2,
                padding: 1,
            },
        ),
    ] {
        let (ho, wo) = shape.output_size().expect("valid shape");
        let x = f16_buffer(gpu, shape.height * shape.width * shape.channels, 8);
        let w = f16_buffer(gpu, 9 * shape.channels, 9);
        let b = f32_buffer(gpu, shape.channels, 0.1);
        let y = f16_buffer(gpu, ho * wo * shape.channels, 10);
        let args = DepthwiseArgs {
            input: region(&x),
            weight: region(&w),
            bias: Some(region(&b)),
            activation: Activation::Gelu,
            output: Matrix::packed(region(&y), shape.channels),
        };
        let flops = 2.0 * 9.0 * (ho * wo * shape.channels) as f64;
        let bytes = (x.len() + y.len()) as f64;
        bench_case(c, gpu, name, flops, bytes, || {
            launch_depthwise_conv2d(gpu, &shape, &args)
        });
    }

    // Stem: 1024x1024x3 NCHW -> 512x512x32 NHWC, stride 2, GELU.
    let stem = Conv2dShape {
        batch: 1,
        height: 1024,
        width: 1024,
        in_channels: 3,
        out_channels: 32,
        kernel_h: 3,
        kernel_w: 3,
        stride: 2,
        padding: 1,
    };
    let x = f16_buffer(gpu, 3 * 1024 * 1024, 11);
    let w = f16_buffer(gpu, 32 * 27, 12);
    let b = f32_buffer(gpu, 32, 0.1);
    let y = f16_buffer(gpu, 512 * 512 * 32, 13);
    let args = StemArgs {
        input: region(&x),
        weight: region(&w),
        bias: Some(region(&b)),
        activation: Activation::Gelu,
        output: Matrix::packed(region(&y), 32),
    };
    let flops = 2.0 * 27.0 * (512 * 512 * 32) as f64;
    let bytes = (x.len() + y.len()) as f64;
    bench_case(
        c,
        gpu,
        "conv3x3_stem_1024x1024x3_to_512x512x32_gelu",
        flops,
        bytes,
        || launch_conv3x3_stem(gpu, &stem, &args),
    );
}

fn layer_norms(c: &mut Criterion, gpu: &Gpu) {
    for (name, rows, channels, with_residual) in [
        ("layer_norm_4096x256", 4096, 256, false),
        ("layer_norm_65536x64", 65536, 64, false),
        ("layer_norm_residual_16384x128", 16384, 128, true),
    ] {
        let n = rows * channels;
        let x = f16_buffer(gpu, n, 14);
        let r = f16_buffer(gpu, n, 15);
        let s = f16_buffer(gpu, n, 16);
        let y = f16_buffer(gpu, n, 17);
        let g = f32_buffer(gpu, channels, 1.0);
        let b = f32_buffer(gpu, channels, 0.0);
        let args = LayerNormArgs {
            rows,
            channels,
            eps: 1e-6,
            x: region(&x),
            residual: with_residual.then(|| region(&r)),
            sum: with_residual.then(|| region(&s)),
            gamma: region(&g),
            beta: region(&b),
            y: region(&y),
        };
        // x (+ r) in, y (+ sum) out.
        let tensors = if with_residual { 4 } else { 2 };
        let bytes = (tensors * n * 2) as f64;
        let flops = 8.0 * n as f64;
        bench_case(c, gpu, name, flops, bytes, || launch_layer_norm(gpu, &args));
    }
}

/// The fused TinyViT MLP (fc1 + GELU + fc2 + residual) at the encoder's shapes, and the
/// two-GEMM chain it replaces (printed for comparison).
fn mlps(c: &mut Criterion, gpu: &Gpu) {
    for (name, rows, ch) in [
        ("tinyvit_mlp_c128_m16384_layers1", 16384, 128),
        ("tinyvit_mlp_c160_m4096_layers2", 4096, 160),
    ] {
        let hid = 4 * ch;
        let x = f16_buffer(gpu, rows * ch, 18);
        let r = f16_buffer(gpu, rows * ch, 19);
        let y = f16_buffer(gpu, rows * ch, 20);
        let h = f16_buffer(gpu, rows * hid, 21);
        let w1 = f16_buffer(gpu, hid * ch, 22);
        let w2 = f16_buffer(gpu, ch * hid, 23);
        let (b1, b2) = (f32_buffer(gpu, hid, 0.1), f32_buffer(gpu, ch, 0.1));
        let shape = MlpShape { rows, channels: ch };
        let args = MlpArgs {
            x: Matrix::packed(region(&x), ch),
            fc1_weight: region(&w1),
            fc1_bias: region(&b1),
            fc2_weight: region(&w2),
            fc2_bias: region(&b2),
            residual: Matrix::packed(region(&r), ch),
            output: Matrix::packed(region(&y), ch),
        };
        let flops = tinyvit_mlp_flops(&shape);
        // x, r in, y out, the weights once.
        let bytes = (x.len() + r.len() + y.len() + w1.len() + w2.len()) as f64;
        let fc1 = GemmArgs {
            x: args.x,
            w: Matrix::packed(region(&w1), ch),
            y: Matrix::packed(region(&h), hid),
            epilogue: Epilogue {
                bias: Some(region(&b1)),
                activation: Activation::Gelu,
                ..Epilogue::default()
            },
        };
        let fc2 = GemmArgs {
            x: Matrix::packed(region(&h), hid),
            w: Matrix::packed(region(&w2), hid),
            y: args.output,
            epilogue: Epilogue {
                bias: Some(region(&b2)),
                residual: Some(Residual {
                    matrix: args.residual,
                    order: ResidualOrder::AfterActivation,
                }),
                ..Epilogue::default()
            },
        };
        let mut chain = || {
            launch_gemm(gpu, &GemmProblem::new(rows, hid, ch), &fc1)?;
            launch_gemm(gpu, &GemmProblem::new(rows, ch, hid), &fc2)
        };
        chain().expect("launch");
        let ms = gpu.time_ms(REPS, &mut chain).expect("timing");
        println!(
            "  {name}: unfused fc1 + fc2 (two GEMMs): {:.1} us, {:.1} TFLOP/s",
            ms * 1e3,
            flops / (ms * 1e-3) * 1e-12
        );
        bench_case(c, gpu, name, flops, bytes, || {
            launch_tinyvit_mlp(gpu, &shape, &args)
        });
    }
}

fn dense_ops(c: &mut Criterion) {
    if let Err(e) = Gpu::probe() {
        eprintln!("skipping ops benchmarks: {e}");
        return;
    }
    let gpu = Gpu::new(0).expect("GPU opens");
    println!("device: {}", gpu.name());
    gemms(c, &gpu);
    gemm_shape_sweep(&gpu);
    decoder_mlp2(c, &gpu);
    convs(c, &gpu);
    layer_norms(c, &gpu);
    mlps(c, &gpu);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = dense_ops
}
criterion_main!(benches);

//! CPU tests of the dense ops' host-side logic: BatchNorm folding, weight layouts, GEMM tile
//! selection, and the launchers' argument checks (which run before any GPU work), including the
//! fused TinyViT MLP's, the mask decoder's fused token ops (`ops::sam_tokens`), its
//! token->image attention (`ops::sam_cross_attention`: key-chunk planning, workspace sizing), its
//! folded variant (`ops::sam_folded_t2i`), its head MLPs (`ops::sam_heads`) and the folded
//! image->token attention (`ops::sam_folded_i2t`).

use finesam::ops::conv::{
    check_conv2d, check_conv3x3_stem, check_depthwise_conv2d, conv_weight_ohwi,
    depthwise_weight_taps, fold_batchnorm, BatchNorm, Conv2dShape, ConvArgs, DepthwiseArgs,
    DepthwiseShape, StemArgs,
};
use finesam::ops::gemm::{
    check_gemm, check_gemm_split, gemm_key, select_gemm_tile, select_gemm_tile_for, split_k_family,
    split_k_segment, split_k_segments, Activation, Epilogue, GemmArgs, GemmChoice, GemmProblem,
    GemmTile, GemmTuner, Matrix, Residual, ResidualOrder, DEFAULT_BLOCKS_PER_SM,
};
use finesam::ops::gemm_tune::{candidates, heuristic_choice, tile_cost, tuning_enabled};
use finesam::ops::norm::{check_layer_norm, variant_index, LayerNormArgs};
use finesam::ops::sam_cross_attention::{
    check_cross_attention, cross_attention_workspace, plan_cross_attention, CrossAttentionArgs,
    CrossAttentionWorkspace, CrossRows, CROSS_MAX_CHUNKS, CROSS_STAGE_KEYS,
};
use finesam::ops::sam_decoder::{check_convt1_ln_gelu, convt1_ctas, ConvT1Args};
use finesam::ops::sam_folded_i2t::{
    check_folded_image_to_token, folded_grid, FoldedImageToTokenArgs,
};
use finesam::ops::sam_folded_t2i::{
    check_folded_token_to_image, folded_token_to_image_workspace, plan_folded_token_to_image,
    FoldedTokenToImageArgs,
};
use finesam::ops::sam_heads::{
    check_heads, heads_output_bytes, HeadsArgs, HEADS_MAX_PROMPTS, HEADS_MAX_TOKENS,
};
use finesam::ops::sam_tokens::{
    check_head_fold, check_token_linear, check_token_mlp, select_token_mlp_tile,
    token_mlp_scratch_bytes, token_mlp_tile_rows, HeadFold, TokenLinearArgs, TokenMlpArgs,
    TOKEN_MAX_ROWS,
};
use finesam::ops::tinyvit::{
    check_tinyvit_mlp, has_fused_mlp, tinyvit_mlp_flops, MlpArgs, MlpShape, MLP_CHANNELS,
};
use finesam::ops::DeviceRegion;
use finesam::Error;

const H100_SMS: u32 = 132;

fn is_launch_error(result: finesam::Result<()>) -> bool {
    matches!(result, Err(Error::Launch { .. }))
}

#[test]
fn fold_batchnorm_matches_the_formula() {
    // Two output channels, two weights each.
    let weight = [1.0f32, -2.0, 0.5, 4.0];
    let bn = BatchNorm {
        gamma: &[2.0, 0.5],
        beta: &[0.1, -0.2],
        mean: &[1.0, -3.0],
        var: &[3.0, 0.25],
        eps: 1.0,
    };
    let (w, b) = fold_batchnorm(&weight, None, &bn).unwrap();
    // s = gamma / sqrt(var + eps) = [1.0, 0.5 / sqrt(1.25)].
    let s1 = 0.5 / 1.25f64.sqrt();
    let expect_w = [1.0, -2.0, 0.5 * s1, 4.0 * s1];
    let expect_b = [0.1 - 1.0, -0.2 + 3.0 * s1];
    for (got, want) in w.iter().zip(expect_w) {
        assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
    }
    for (got, want) in b.iter().zip(expect_b) {
        assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
    }
    // With a conv bias: b' = beta + (b - mean) * s.
    let (_, b2) = fold_batchnorm(&weight, Some(&[0.5, 1.0]), &bn).unwrap();
    assert!((b2[0] as f64 - (0.1 + (0.5 - 1.0))).abs() < 1e-6);
    assert!((b2[1] as f64 - (-0.2 + (1.0 + 3.0) * s1)).abs() < 1e-6);
}

#[test]
fn fold_batchnorm_rejects_bad_inputs() {
    let bn = BatchNorm {
        gamma: &[1.0, 1.0],
        beta: &[0.0, 0.0],
        mean: &[0.0, 0.0],
        var: &[1.0, 1.0],
        eps: 1e-5,
    };
    assert!(
        fold_batchnorm(&[1.0, 2.0, 3.0], None, &bn).is_err(),
        "3 weights for 2 channels"
    );
    assert!(fold_batchnorm(&[], None, &bn).is_err());
    assert!(fold_batchnorm(&[1.0, 2.0], Some(&[0.0]), &bn).is_err());
    let short = BatchNorm { mean: &[0.0], ..bn };
    assert!(fold_batchnorm(&[1.0, 2.0], None, &short).is_err());
    let negative = BatchNorm {
        var: &[1.0, -2.0],
        eps: 0.0,
        ..bn
    };
    assert!(fold_batchnorm(&[1.0, 2.0], None, &negative).is_err());
}

#[test]
fn conv_weight_layouts() {
    // [Cout=2, Cin=3, 2, 2] with value = 1000 co + 100 ci + 10 ky + kx.
    let (cout, cin, kh, kw) = (2, 3, 2, 2);
    let mut w = Vec::new();
    for co in 0..cout {
        for ci in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    w.push((1000 * co + 100 * ci + 10 * ky + kx) as f32);
                }
            }
        }
    }
    let ohwi = conv_weight_ohwi(&w, cout, cin, kh, kw).unwrap();
    for co in 0..cout {
        for ky in 0..kh {
            for kx in 0..kw {
                for ci in 0..cin {
                    let got = ohwi[((co * kh + ky) * kw + kx) * cin + ci];
                    assert_eq!(got, (1000 * co + 100 * ci + 10 * ky + kx) as f32);
                }
            }
        }
    }
    assert!(conv_weight_ohwi(&w, cout, cin, kh, 3).is_err());

    // Depthwise [C=3, 1, 3, 3] -> [9, 3].
    let dw: Vec<f32> = (0..27).map(|i| i as f32).collect();
    let taps = depthwise_weight_taps(&dw, 3, 3, 3).unwrap();
    for c in 0..3 {
        for t in 0..9 {
            assert_eq!(taps[t * 3 + c], (c * 9 + t) as f32);
        }
    }
    assert!(depthwise_weight_taps(&dw, 4, 3, 3).is_err());
}

#[test]
fn tile_selection_fills_the_gpu() {
    // Large problems: the big tile.
    assert_eq!(
        select_gemm_tile(4096, 4096, 1, H100_SMS),
        GemmTile::T128x128
    );
    assert_eq!(
        select_gemm_tile(65536, 256, 1, H100_SMS),
        GemmTile::T128x128
    );
    assert_eq!(
        select_gemm_tile(16384, 512, 1, H100_SMS),
        GemmTile::T128x128
    );
    // The neck conv (M 4096, N 256): 64 big tiles would leave half the SMs idle.
    assert_ne!(select_gemm_tile(4096, 256, 1, H100_SMS), GemmTile::T128x128);
    // The measured H200 tile sweeps (132 SMs, as H100 SXM) the cost factors are fitted to.
    assert_eq!(
        select_gemm_tile(16384, 512, 1, H100_SMS),
        GemmTile::T128x128
    );
    assert_eq!(select_gemm_tile(4096, 320, 1, H100_SMS), GemmTile::T64x64);
    assert_eq!(select_gemm_tile(4096, 256, 1, H100_SMS), GemmTile::T64x64);
    // Tiny problems: the small tile.
    assert_eq!(select_gemm_tile(64, 64, 1, H100_SMS), GemmTile::T64x64);
    assert_eq!(select_gemm_tile(100, 30, 1, H100_SMS), GemmTile::T64x64);
    // Every choice is one of the compiled tiles, for any shape, and never panics.
    for m in [1, 7, 64, 129, 1000, 65536] {
        for n in [1, 8, 64, 320, 1280] {
            for batch in [1, 3, 100] {
                let tile = select_gemm_tile(m, n, batch, H100_SMS);
                assert!(GemmTile::ALL.contains(&tile));
                let _ = select_gemm_tile(m, n, batch, 0);
            }
        }
    }
}

#[test]
fn tile_table_is_consistent() {
    for (i, tile) in GemmTile::ALL.iter().enumerate() {
        assert_eq!(tile.index(), i);
        assert!(
            tile.smem_bytes() <= 227 * 1024,
            "{tile:?} exceeds Hopper's shared memory"
        );
        assert_eq!(tile.blocks(tile.bm(), tile.bn(), 1), 1);
        assert_eq!(tile.blocks(tile.bm() + 1, tile.bn(), 2), 4);
    }
    assert_eq!(GemmTile::T128x128.smem_bytes(), 81920);
    assert_eq!(GemmTile::T128x64.smem_bytes(), 61440);
    assert_eq!(GemmTile::T64x64.smem_bytes(), 40960);
}

// Fake, never dereferenced device addresses: the checks run on the host before any launch.
const BASE: u64 = 0x7f00_0000_0000;

fn region(bytes: usize) -> DeviceRegion {
    DeviceRegion::new(BASE, bytes)
}

/// check_gemm on loose operands.
fn check(p: &GemmProblem, x: Matrix, w: Matrix, y: Matrix, epilogue: Epilogue) -> bool {
    match check_gemm(p, &GemmArgs { x, w, y, epilogue }) {
        Ok(()) => true,
        Err(Error::Launch { .. }) => false,
        Err(other) => panic!("expected Error::Launch, got {other:?}"),
    }
}

#[test]
fn gemm_checks() {
    let (m, n, k) = (100, 72, 64);
    let p = GemmProblem::new(m, n, k);
    let x = Matrix::packed(region(m * k * 2), k);
    let w = Matrix::packed(region(n * k * 2), k);
    let y = Matrix::packed(region(m * n * 2), n);
    let e = Epilogue::default();
    assert!(check(&p, x, w, y, e));

    // K alignment; empty problem.
    assert!(!check(&GemmProblem::new(m, n, 20), x, w, y, e));
    assert!(!check(&GemmProblem::new(0, n, k), x, w, y, e));
    // Null, misaligned, undersized operands.
    let null = Matrix::packed(DeviceRegion::new(0, 1 << 20), k);
    assert!(!check(&p, null, w, y, e));
    let misaligned = Matrix::packed(DeviceRegion::new(BASE + 8, m * k * 2), k);
    assert!(!check(&p, misaligned, w, y, e));
    assert!(!check(
        &p,
        x,
        Matrix::packed(region(n * k * 2 - 2), k),
        y,
        e
    ));
    assert!(!check(
        &p,
        x,
        w,
        Matrix::packed(region(m * n * 2 - 2), n),
        e
    ));
    // Strides: below the column count, or not 16-byte multiples for the cp.async operands.
    assert!(!check(&p, x.with_row_stride(k - 8), w, y, e));
    let x_odd = Matrix::packed(region(m * (k + 4) * 2), k).with_row_stride(k + 4);
    assert!(!check(&p, x_odd, w, y, e));
    // Outputs may have any stride >= N.
    let y_odd = Matrix::packed(region(m * (n + 3) * 2), n).with_row_stride(n + 3);
    assert!(check(&p, x, w, y_odd, e));
    // Bias: needs N floats.
    let bias = |bytes| Epilogue {
        bias: Some(region(bytes)),
        activation: Activation::Gelu,
        ..e
    };
    assert!(!check(&p, x, w, y, bias(n * 4 - 4)));
    assert!(check(&p, x, w, y, bias(n * 4)));
    // Residual: same shape as Y.
    let residual = |bytes| Epilogue {
        residual: Some(Residual {
            matrix: Matrix::packed(region(bytes), n),
            order: ResidualOrder::BeforeActivation,
        }),
        ..e
    };
    assert!(check(&p, x, w, y, residual(m * n * 2)));
    assert!(!check(&p, x, w, y, residual(m * n * 2 - 2)));
    // Non-finite alpha.
    let nan = Epilogue {
        alpha: f32::NAN,
        ..e
    };
    assert!(!check(&p, x, w, y, nan));

    // Batched: operands must hold every item; outputs must not overlap between items.
    let pb = GemmProblem { batch: 4, ..p };
    let xb = x.with_batch_stride(m * k);
    let wb = Matrix::packed(region(n * k * 2), k); // batch stride 0: W broadcast
    let yb = Matrix::packed(region(4 * m * n * 2), n).with_batch_stride(m * n);
    assert!(!check(&pb, xb, wb, yb, e), "X holds one item only");
    let xb_big = Matrix::packed(region(4 * m * k * 2), k).with_batch_stride(m * k);
    assert!(check(&pb, xb_big, wb, yb, e));
    assert!(!check(&pb, xb_big, wb, yb.with_batch_stride(m * n - 8), e));
    let huge_batch = GemmProblem { batch: 70000, ..p };
    assert!(!check(&huge_batch, xb_big, wb, yb, e));
}

#[test]
fn conv_checks() {
    let s = Conv2dShape {
        batch: 2,
        height: 16,
        width: 12,
        in_channels: 32,
        out_channels: 48,
        kernel_h: 3,
        kernel_w: 3,
        stride: 2,
        padding: 1,
    };
    assert_eq!(s.output_size(), Some((8, 6)));
    let problem = s.gemm_problem().unwrap();
    assert_eq!((problem.m, problem.n, problem.k), (2 * 8 * 6, 48, 9 * 32));
    let args = ConvArgs {
        input: region(2 * 16 * 12 * 32 * 2),
        weight: region(48 * 9 * 32 * 2),
        output: Matrix::packed(region(problem.m * 48 * 2), 48),
        epilogue: Epilogue::default(),
    };
    check_conv2d(&s, &args).unwrap();
    let short_input = ConvArgs {
        input: region(100),
        ..args
    };
    assert!(is_launch_error(check_conv2d(&s, &short_input)));
    let short_weight = ConvArgs {
        weight: region(100),
        ..args
    };
    assert!(is_launch_error(check_conv2d(&s, &short_weight)));
    let too_big_kernel = Conv2dShape { kernel_h: 40, ..s };
    assert_eq!(too_big_kernel.output_size(), None);
    for bad in [
        Conv2dShape {
            in_channels: 12,
            ..s
        },
        too_big_kernel,
        Conv2dShape { stride: 0, ..s },
    ] {
        assert!(is_launch_error(check_conv2d(&bad, &args)), "{bad:?}");
    }

    // Depthwise.
    let d = DepthwiseShape {
        batch: 1,
        height: 10,
        width: 10,
        channels: 64,
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    assert_eq!(d.output_size(), Some((5, 5)));
    let args = DepthwiseArgs {
        input: region(10 * 10 * 64 * 2),
        weight: region(9 * 64 * 2),
        bias: Some(region(64 * 4)),
        activation: Activation::Gelu,
        output: Matrix::packed(region(25 * 64 * 2), 64),
    };
    check_depthwise_conv2d(&d, &args).unwrap();
    for bad in [
        DepthwiseShape { kernel: 4, ..d },
        DepthwiseShape { stride: 3, ..d },
        DepthwiseShape { channels: 60, ..d },
    ] {
        assert!(
            is_launch_error(check_depthwise_conv2d(&bad, &args)),
            "{bad:?}"
        );
    }
    let short_out = DepthwiseArgs {
        output: Matrix::packed(region(25 * 64 * 2 - 16), 64),
        ..args
    };
    assert!(is_launch_error(check_depthwise_conv2d(&d, &short_out)));
    let odd_stride = DepthwiseArgs {
        output: args.output.with_row_stride(68),
        ..args
    };
    assert!(is_launch_error(check_depthwise_conv2d(&d, &odd_stride)));

    // Stem.
    let stem = Conv2dShape {
        batch: 1,
        height: 64,
        width: 64,
        in_channels: 3,
        out_channels: 32,
        kernel_h: 3,
        kernel_w: 3,
        stride: 2,
        padding: 1,
    };
    let stem_args = StemArgs {
        input: region(3 * 64 * 64 * 2),
        weight: region(32 * 27 * 2),
        bias: None,
        activation: Activation::Gelu,
        output: Matrix::packed(region(32 * 32 * 32 * 2), 32),
    };
    check_conv3x3_stem(&stem, &stem_args).unwrap();
    for bad in [
        Conv2dShape {
            in_channels: 4,
            ..stem
        },
        Conv2dShape {
            out_channels: 72,
            ..stem
        },
        Conv2dShape {
            out_channels: 30,
            ..stem
        },
        Conv2dShape {
            kernel_w: 5,
            ..stem
        },
    ] {
        assert!(
            is_launch_error(check_conv3x3_stem(&bad, &stem_args)),
            "{bad:?}"
        );
    }
}

#[test]
fn layer_norm_checks() {
    assert_eq!(variant_index(8), Some(0));
    assert_eq!(variant_index(64), Some(0));
    assert_eq!(variant_index(72), Some(1));
    assert_eq!(variant_index(160), Some(2));
    assert_eq!(variant_index(256), Some(3));
    assert_eq!(variant_index(320), Some(4));
    assert_eq!(variant_index(1024), Some(6));
    assert_eq!(variant_index(1032), None);
    let args = LayerNormArgs {
        rows: 100,
        channels: 256,
        eps: 1e-6,
        x: region(100 * 256 * 2),
        residual: None,
        sum: None,
        gamma: region(256 * 4),
        beta: region(256 * 4),
        y: region(100 * 256 * 2),
    };
    check_layer_norm(&args).unwrap();
    for bad in [
        LayerNormArgs {
            channels: 250,
            ..args
        },
        LayerNormArgs {
            channels: 2048,
            ..args
        },
        LayerNormArgs { rows: 0, ..args },
        LayerNormArgs {
            eps: f32::NAN,
            ..args
        },
        LayerNormArgs {
            y: region(100),
            ..args
        },
        LayerNormArgs {
            gamma: region(16),
            ..args
        },
        LayerNormArgs {
            sum: Some(region(100 * 256 * 2)),
            ..args
        },
        LayerNormArgs {
            x: DeviceRegion::new(0, 1 << 20),
            ..args
        },
    ] {
        assert!(is_launch_error(check_layer_norm(&bad)), "{bad:?}");
    }
    let with_sum = LayerNormArgs {
        residual: Some(region(100 * 256 * 2)),
        sum: Some(region(100 * 256 * 2)),
        ..args
    };
    check_layer_norm(&with_sum).unwrap();
}

#[test]
fn wave_model_picks_the_measured_tiles() {
    let pick = |m, n| select_gemm_tile_for(m, n, 1, H100_SMS, DEFAULT_BLOCKS_PER_SM);
    // The H200 sweeps the model is fitted to (KERNELS.md): faster tile first.
    assert_eq!(pick(16384, 512), GemmTile::T128x128); // 32.3 us vs 64x64 34.7, 128x64 38.5
    assert_eq!(pick(4096, 320), GemmTile::T64x64); // 29.8 us vs 128x128 32.1
    assert_eq!(pick(4096, 256), GemmTile::T64x64); // neck conv 42.0 us vs 128x64 50.3
    let cost = |t, m, n| tile_cost(t, m, n, 1, H100_SMS, DEFAULT_BLOCKS_PER_SM[t.index()]);
    // (The model ranks 128x64 second there, the card 64x64: only the winner is fitted;
    // measured tuning settles the rest.)
    // Wave quantisation: 96 blocks of 128x128 fill less than one wave but cost a whole block
    // per SM; 320 blocks of 64x64 (5 per SM fit) cost 3 small tiles on the busiest SM.
    assert_eq!(cost(GemmTile::T128x128, 4096, 320), 16384.0);
    assert!((cost(GemmTile::T64x64, 4096, 320) - 3.0 * 4096.0 * 1.15).abs() < 1e-6);
    // A partial wave costs at least half a full one: 1 block of 64x64 = 2.5 tiles.
    assert!((cost(GemmTile::T64x64, 7, 64) - 2.5 * 4096.0 * 1.15).abs() < 1e-6);
    // select_gemm_tile is the model with the sm_90 occupancy; other occupancies and SM
    // counts (A100: 108 SMs, 2/2/4 blocks) and zero never panic.
    for m in [1, 7, 56, 224, 4096, 16384, 65536] {
        for n in [8, 256, 320, 1280] {
            assert_eq!(select_gemm_tile(m, n, 1, H100_SMS), pick(m, n));
            for (sms, occ) in [(108, [2, 2, 4]), (0, [0, 0, 0])] {
                let t = select_gemm_tile_for(m, n, 3, sms, occ);
                assert!(GemmTile::ALL.contains(&t));
            }
        }
    }
}

#[test]
fn split_k_segments_depend_on_k_only() {
    assert_eq!((split_k_segment(2048), split_k_segments(2048)), (128, 16));
    assert_eq!((split_k_segment(1024), split_k_segments(1024)), (128, 8));
    assert_eq!((split_k_segment(1288), split_k_segments(1288)), (128, 11));
    assert_eq!((split_k_segment(4096), split_k_segments(4096)), (256, 16));
    assert_eq!((split_k_segment(8), split_k_segments(8)), (128, 1));
    assert_eq!(
        (split_k_segment(100_000), split_k_segments(100_000)),
        (6272, 16)
    );
    for k in (8..20_000).step_by(8) {
        let (seg, n) = (split_k_segment(k), split_k_segments(k));
        assert_eq!(seg % 32, 0, "K {k}");
        assert!(
            (1..=16).contains(&n) && (n - 1) * seg < k && n * seg >= k,
            "K {k}"
        );
    }
    // The mask decoder's MLP (M = 7 tokens x prompts, N 256, K 2048) up to 73 prompts; the
    // encoder's GEMMs (thousands of rows) and short K never.
    for prompts in [1, 8, 32, 64] {
        assert!(
            split_k_family(7 * prompts, 256, 2048, 1),
            "{prompts} prompts"
        );
    }
    assert!(!split_k_family(7 * 80, 256, 2048, 1));
    assert!(!split_k_family(4096, 320, 1280, 1));
    assert!(!split_k_family(56, 256, 256, 1));
    assert!(!split_k_family(56, 256, 2048, 9));
}

fn key_for(m: usize, n: usize, k: usize, epilogue: Epilogue) -> finesam::ops::gemm::GemmKey {
    let p = GemmProblem::new(m, n, k);
    let args = GemmArgs {
        x: Matrix::packed(region(m * k * 2), k),
        w: Matrix::packed(region(n * k * 2), k),
        y: Matrix::packed(region(m * n * 2), n),
        epilogue,
    };
    gemm_key(&p, &args).unwrap()
}

#[test]
fn tuner_cache_keys_and_choices() {
    let bias = Some(region(4096));
    let plain = key_for(56, 256, 2048, Epilogue::default());
    // M is keyed by 64-row tiles: 7 and 56 rows share an entry, 65 does not.
    assert_eq!(plain, key_for(7, 256, 2048, Epilogue::default()));
    assert_ne!(plain, key_for(65, 256, 2048, Epilogue::default()));
    // Everything else that changes the kernel's work is in the key.
    let residual = |order| Residual {
        matrix: Matrix::packed(region(1 << 20), 256),
        order,
    };
    let variants = [
        key_for(56, 256, 2040, Epilogue::default()),
        key_for(56, 248, 2048, Epilogue::default()),
        key_for(
            56,
            256,
            2048,
            Epilogue {
                bias,
                ..Epilogue::default()
            },
        ),
        key_for(
            56,
            256,
            2048,
            Epilogue {
                activation: Activation::Gelu,
                ..Epilogue::default()
            },
        ),
        key_for(
            56,
            256,
            2048,
            Epilogue {
                residual: Some(residual(ResidualOrder::AfterActivation)),
                ..Epilogue::default()
            },
        ),
        key_for(
            56,
            256,
            2048,
            Epilogue {
                residual: Some(residual(ResidualOrder::BeforeActivation)),
                ..Epilogue::default()
            },
        ),
    ];
    for (i, v) in variants.iter().enumerate() {
        assert_ne!(*v, plain, "variant {i}");
        for w in &variants[i + 1..] {
            assert_ne!(v, w);
        }
    }
    // alpha does not change the kernel's work: same key.
    let scaled = Epilogue {
        alpha: 0.5,
        ..Epilogue::default()
    };
    assert_eq!(key_for(56, 256, 2048, scaled), plain);

    // The cache: insert, look up, overwrite, clear.
    let tuner = GemmTuner::new(false);
    assert!(!tuner.enabled() && !tuner.is_tuning() && tuner.is_empty());
    let choice = GemmChoice {
        tile: GemmTile::T128x64,
        splits: 4,
    };
    tuner.insert(plain, choice);
    assert_eq!(tuner.cached(&plain), Some(choice));
    assert_eq!(tuner.cached(&variants[0]), None);
    tuner.insert(
        plain,
        GemmChoice {
            splits: 8,
            ..choice
        },
    );
    assert_eq!(tuner.len(), 1);
    assert_eq!(tuner.cached(&plain).map(|c| c.splits), Some(8));
    tuner.clear();
    assert!(tuner.is_empty());

    // Candidates: every tile; split counts <= the segments for split-K shapes only.
    assert!(plain.split_k());
    let all = candidates(&plain);
    assert_eq!(all.len(), 3 * 5);
    assert!(all.iter().all(|c| c.splits <= 16));
    let fc1 = key_for(4096, 1280, 320, Epilogue::default());
    assert!(!fc1.split_k());
    assert_eq!(candidates(&fc1).len(), 3);
    assert!(candidates(&key_for(33, 77, 1288, Epilogue::default()))
        .iter()
        .all(|c| c.splits <= 11));

    // The model's choice: the wave model for single-pass shapes; for split-K shapes 64x64
    // with the largest power-of-two split that keeps tiles x splits within the SMs.
    let model =
        |k: &finesam::ops::gemm::GemmKey| heuristic_choice(k, H100_SMS, DEFAULT_BLOCKS_PER_SM);
    assert_eq!(
        model(&plain),
        GemmChoice {
            tile: GemmTile::T64x64,
            splits: 16
        }
    );
    assert_eq!(
        model(&key_for(224, 256, 2048, Epilogue::default())).splits,
        8
    );
    assert_eq!(model(&fc1).splits, 1);
    assert_eq!(
        model(&fc1).tile,
        select_gemm_tile_for(4096, 1280, 1, H100_SMS, DEFAULT_BLOCKS_PER_SM)
    );

    // FINESAM_GEMM_TUNE parsing.
    assert!(tuning_enabled(None));
    assert!(tuning_enabled(Some("1")));
    for off in ["0", "off", "FALSE", " 0 "] {
        assert!(!tuning_enabled(Some(off)), "{off}");
    }
}

#[test]
fn split_k_checks() {
    let check = |m: usize, n: usize, k: usize, tile, splits| {
        let p = GemmProblem::new(m, n, k);
        let args = GemmArgs {
            x: Matrix::packed(region(m * k * 2), k),
            w: Matrix::packed(region(n * k * 2), k),
            y: Matrix::packed(region(m * n * 2), n),
            epilogue: Epilogue::default(),
        };
        match check_gemm_split(tile, splits, &p, &args) {
            Ok(()) => true,
            Err(Error::Launch { .. }) => false,
            Err(other) => panic!("expected Error::Launch, got {other:?}"),
        }
    };
    for tile in GemmTile::ALL {
        assert!(check(56, 256, 2048, tile, 1));
        assert!(check(56, 256, 2048, tile, 16));
        assert!(check(33, 77, 1288, tile, 11));
        // No splits, more splits than segments.
        assert!(!check(56, 256, 2048, tile, 0));
        assert!(!check(56, 256, 2048, tile, 17));
        assert!(!check(33, 77, 1288, tile, 12));
        // Partials beyond the workspace, more output tiles than counters.
        assert!(!check(4096, 1280, 2048, tile, 2));
    }
    assert!(!check(64, 64 * 33, 8, GemmTile::T64x64, 1));
    // The usual operand checks come first.
    assert!(!check(56, 256, 2044, GemmTile::T64x64, 1));
}

/// The fused MLP's launcher checks: widths, rows, strides, alignment, extents, overlap.
#[test]
fn tinyvit_mlp_checks() {
    assert_eq!(MLP_CHANNELS, [128, 160]);
    assert!(has_fused_mlp(128) && has_fused_mlp(160) && !has_fused_mlp(320));
    let (rows, c) = (1000, 160);
    let hid = 4 * c;
    // Disjoint fake regions, 1 MiB apart.
    let at = |i: u64, bytes: usize| DeviceRegion::new(BASE + (i << 20), bytes);
    let act = rows * c * 2;
    let good = MlpArgs {
        x: Matrix::packed(at(0, act), c),
        fc1_weight: at(1, hid * c * 2),
        fc1_bias: at(2, hid * 4),
        fc2_weight: at(3, c * hid * 2),
        fc2_bias: at(4, c * 4),
        residual: Matrix::packed(at(5, act), c),
        output: Matrix::packed(at(6, act), c),
    };
    let shape = MlpShape { rows, channels: c };
    let ok = |shape: &MlpShape, args: &MlpArgs| match check_tinyvit_mlp(shape, args) {
        Ok(()) => true,
        Err(Error::Launch { .. }) => false,
        Err(other) => panic!("expected Error::Launch, got {other:?}"),
    };
    assert!(ok(&shape, &good));
    assert_eq!(
        tinyvit_mlp_flops(&shape),
        2.0 * 2.0 * (rows * c * hid) as f64
    );

    // Widths without a kernel, no rows.
    assert!(!ok(
        &MlpShape {
            channels: 320,
            ..shape
        },
        &good
    ));
    assert!(!ok(
        &MlpShape {
            channels: 64,
            ..shape
        },
        &good
    ));
    assert!(!ok(&MlpShape { rows: 0, ..shape }, &good));
    // Strided rows: multiples of 8 elements >= C are fine if the region spans them.
    let wide = |ld: usize, i: u64| {
        Matrix::packed(at(i, (rows - 1) * ld * 2 + c * 2), c).with_row_stride(ld)
    };
    assert!(ok(
        &shape,
        &MlpArgs {
            x: wide(168, 0),
            residual: wide(176, 5),
            output: wide(200, 6),
            ..good
        }
    ));
    assert!(
        !ok(
            &shape,
            &MlpArgs {
                x: wide(164, 0),
                ..good
            }
        ),
        "stride not a multiple of 8"
    );
    assert!(
        !ok(
            &shape,
            &MlpArgs {
                output: wide(152, 6),
                ..good
            }
        ),
        "stride below C"
    );
    let short = |m: Matrix| Matrix {
        region: DeviceRegion::new(m.region.ptr, m.region.bytes - 2),
        ..m
    };
    assert!(
        !ok(
            &shape,
            &MlpArgs {
                x: short(wide(168, 0)),
                ..good
            }
        ),
        "short strided x"
    );
    // Null, misaligned, undersized operands.
    assert!(!ok(
        &shape,
        &MlpArgs {
            x: Matrix::packed(DeviceRegion::new(0, act), c),
            ..good
        }
    ));
    assert!(!ok(
        &shape,
        &MlpArgs {
            residual: Matrix::packed(at(5, act - 2), c),
            ..good
        }
    ));
    assert!(!ok(
        &shape,
        &MlpArgs {
            output: Matrix::packed(DeviceRegion::new(BASE + (6 << 20) + 8, act), c),
            ..good
        }
    ));
    assert!(!ok(
        &shape,
        &MlpArgs {
            fc1_weight: at(1, hid * c * 2 - 16),
            ..good
        }
    ));
    assert!(!ok(
        &shape,
        &MlpArgs {
            fc2_weight: DeviceRegion::new(BASE + (3 << 20) + 4, c * hid * 2),
            ..good
        }
    ));
    assert!(!ok(
        &shape,
        &MlpArgs {
            fc1_bias: at(2, hid * 4 - 4),
            ..good
        }
    ));
    assert!(!ok(
        &shape,
        &MlpArgs {
            fc2_bias: DeviceRegion::new(BASE + (4 << 20) + 8, c * 4),
            ..good
        }
    ));
    // The output may not overlap any operand (in place over x or the residual included).
    for i in 0..6 {
        let output = Matrix::packed(DeviceRegion::new(BASE + (i << 20) + 16, act), c);
        assert!(
            !ok(&shape, &MlpArgs { output, ..good }),
            "output over operand {i}"
        );
    }
    assert!(!ok(
        &shape,
        &MlpArgs {
            output: good.x,
            ..good
        }
    ));
    assert!(!ok(
        &shape,
        &MlpArgs {
            output: good.residual,
            ..good
        }
    ));
    // Adjacent is not overlapping.
    let after_x = Matrix::packed(DeviceRegion::new(BASE + act as u64, act), c);
    assert!(ok(
        &shape,
        &MlpArgs {
            output: after_x,
            ..good
        }
    ));
}

#[test]
fn token_linear_checks() {
    // Operands 1 MiB apart; 7 rows (one box prompt).
    let at = |i: u64, bytes: usize| DeviceRegion::new(BASE + (i << 20), bytes);
    let rows = 7;
    for k in [128usize, 256] {
        let good = TokenLinearArgs {
            rows,
            k,
            x: at(0, rows * k * 2),
            weight: at(1, 256 * k * 2),
            bias: at(2, 1024),
            residual: Some(at(3, rows * 512)),
            norm: (at(4, 1024), at(5, 1024)),
            eps: 1e-5,
            y: at(6, rows * 512),
        };
        check_token_linear(&good).unwrap();
        // In place over the residual, and no residual at all (block 0's self attention).
        let in_place = TokenLinearArgs {
            residual: Some(good.y),
            ..good
        };
        check_token_linear(&in_place).unwrap();
        check_token_linear(&TokenLinearArgs {
            residual: None,
            ..good
        })
        .unwrap();
        let bad = [
            TokenLinearArgs { k: 64, ..good },
            TokenLinearArgs { k: 192, ..good },
            TokenLinearArgs { rows: 0, ..good },
            TokenLinearArgs {
                rows: TOKEN_MAX_ROWS + 1,
                ..good
            },
            TokenLinearArgs {
                eps: f32::INFINITY,
                ..good
            },
            TokenLinearArgs {
                x: DeviceRegion::new(0, 1 << 20),
                ..good
            },
            TokenLinearArgs {
                x: DeviceRegion::new(BASE + 8, rows * k * 2),
                ..good
            },
            TokenLinearArgs {
                x: at(0, rows * k * 2 - 2),
                ..good
            },
            TokenLinearArgs {
                weight: at(1, 255 * k * 2),
                ..good
            },
            TokenLinearArgs {
                bias: DeviceRegion::new(BASE + (2 << 20) + 4, 1024),
                ..good
            },
            TokenLinearArgs {
                norm: (good.norm.0, at(5, 1020)),
                ..good
            },
            TokenLinearArgs {
                residual: Some(at(3, rows * 512 - 16)),
                ..good
            },
            TokenLinearArgs {
                y: at(6, rows * 512 - 16),
                ..good
            },
            // The residual partly over y (in place means the same rows).
            TokenLinearArgs {
                residual: Some(DeviceRegion::new(good.y.ptr + 512, rows * 512)),
                ..good
            },
            // y over x, the weight or a parameter.
            TokenLinearArgs {
                y: DeviceRegion::new(good.x.ptr + 256, rows * 512),
                ..good
            },
            TokenLinearArgs {
                y: good.weight,
                ..good
            },
            TokenLinearArgs {
                y: DeviceRegion::new(good.norm.1.ptr, rows * 512),
                ..good
            },
        ];
        for args in bad {
            assert!(is_launch_error(check_token_linear(&args)), "{args:?}");
        }
    }
}

#[test]
fn token_mlp_checks() {
    let at = |i: u64, bytes: usize| DeviceRegion::new(BASE + (i << 20), bytes);
    let rows = 56;
    assert_eq!(token_mlp_scratch_bytes(rows), 16 * rows * 256 * 4);
    let good = TokenMlpArgs {
        rows,
        x: at(0, rows * 512),
        lin1: (at(1, 2048 * 256 * 2), at(2, 2048 * 4)),
        lin2: (at(3, 256 * 2048 * 2), at(4, 1024)),
        norm: (at(5, 1024), at(6, 1024)),
        eps: 1e-5,
        scratch: at(7, token_mlp_scratch_bytes(rows)),
        y: at(9, rows * 512),
    };
    check_token_mlp(&good).unwrap();
    check_token_mlp(&TokenMlpArgs { y: good.x, ..good }).unwrap();
    let bad = [
        TokenMlpArgs { rows: 0, ..good },
        TokenMlpArgs {
            rows: rows + 1,
            ..good
        },
        TokenMlpArgs { eps: -1e-5, ..good },
        TokenMlpArgs {
            x: DeviceRegion::new(BASE + 2, rows * 512),
            ..good
        },
        TokenMlpArgs {
            lin1: (at(1, 2047 * 256 * 2), good.lin1.1),
            ..good
        },
        TokenMlpArgs {
            lin1: (good.lin1.0, at(2, 2047 * 4)),
            ..good
        },
        TokenMlpArgs {
            lin2: (DeviceRegion::new(0, 1 << 20), good.lin2.1),
            ..good
        },
        TokenMlpArgs {
            norm: (DeviceRegion::new(BASE + (5 << 20) + 8, 1024), good.norm.1),
            ..good
        },
        TokenMlpArgs {
            scratch: at(7, token_mlp_scratch_bytes(rows) - 4),
            ..good
        },
        TokenMlpArgs {
            scratch: DeviceRegion::new(BASE + (7 << 20) + 4, token_mlp_scratch_bytes(rows)),
            ..good
        },
        // y partly over x (in place means the same rows), over the scratch or a weight.
        TokenMlpArgs {
            y: DeviceRegion::new(good.x.ptr + 512, rows * 512),
            ..good
        },
        TokenMlpArgs {
            y: good.scratch,
            ..good
        },
        TokenMlpArgs {
            y: DeviceRegion::new(good.lin2.0.ptr, rows * 512),
            ..good
        },
        // The scratch over x or a weight.
        TokenMlpArgs {
            scratch: DeviceRegion::new(good.x.ptr, token_mlp_scratch_bytes(rows)),
            ..good
        },
        TokenMlpArgs {
            scratch: DeviceRegion::new(good.lin1.0.ptr, token_mlp_scratch_bytes(rows)),
            ..good
        },
    ];
    for args in bad {
        assert!(is_launch_error(check_token_mlp(&args)), "{args:?}");
    }
}

#[test]
fn token_mlp_row_tile_selection() {
    // The smallest tile whose grid (16 chunks x row tiles) fits one CTA per SM, else the
    // largest tile the device's shared memory per block allows.
    let h100 = H100_SMS as usize;
    let (sm90, sm86) = (227 * 1024, 99 * 1024);
    let rows_of = |rows, smem| select_token_mlp_tile(rows, h100, smem).map(token_mlp_tile_rows);
    assert_eq!(rows_of(7, sm90), Some(16)); // 1 box: 16 CTAs
    assert_eq!(rows_of(56, sm90), Some(16)); // 8 boxes: 64 CTAs
    assert_eq!(rows_of(128, sm90), Some(16)); // 128 CTAs
    assert_eq!(rows_of(224, sm90), Some(32)); // 32 boxes: 112 CTAs
    assert_eq!(rows_of(483, sm90), Some(64)); // 128 CTAs
    assert_eq!(rows_of(2208, sm90), Some(64)); // 560 CTAs, the largest tile
    assert_eq!(rows_of(2208, sm86), Some(16)); // sm_86 / sm_89: only the 16-row tile fits
    assert_eq!(rows_of(7, 64 * 1024), None);
}

#[test]
fn cross_attention_plans_fill_the_gpu_without_empty_chunks() {
    let sms = H100_SMS as usize;
    // T = 7 on 132 SMs: ~2 CTAs per SM, at most 32 chunks.
    let chunks = |prompts, tokens| {
        plan_cross_attention(prompts, tokens, 4096, sms)
            .unwrap()
            .chunks
    };
    assert_eq!(chunks(1, 7), 32);
    assert_eq!(chunks(8, 7), 32);
    assert_eq!(chunks(16, 7), 16);
    assert_eq!(chunks(32, 7), 8);
    // The merge budget: 256 / T chunks, at least 4.
    assert_eq!(chunks(1, 11), 22); // 23 wanted: 3 stages each -> 22 chunks
    assert_eq!(chunks(1, 69), 4);
    assert_eq!(chunks(32, 69), 4);
    // Many prompts: one chunk, no workspace.
    let many = plan_cross_attention(1000, 7, 4096, sms).unwrap();
    assert_eq!((many.chunks, many.workspace_bytes()), (1, 0));
    for prompts in [1usize, 2, 3, 7, 8, 9, 31, 32, 33, 100, 264, 265, 4096] {
        for tokens in [1usize, 7, 11, 16, 17, 69, 80] {
            for keys in [64usize, 192, 4096, 4160] {
                let p = plan_cross_attention(prompts, tokens, keys, sms).unwrap();
                let tiles = keys / CROSS_STAGE_KEYS;
                assert!(p.chunks >= 1 && p.chunks <= CROSS_MAX_CHUNKS.min(tiles));
                // Every chunk has work and together they cover every stage.
                assert!((p.chunks - 1) * p.tiles_per_chunk < tiles, "{p:?}");
                assert!(p.chunks * p.tiles_per_chunk >= tiles, "{p:?}");
                if p.chunks > 1 {
                    assert_eq!(p.counter_slots, prompts);
                    assert_eq!(p.partial_bytes, prompts * p.chunks * tokens * 144 * 4);
                } else {
                    assert_eq!((p.counter_slots, p.partial_bytes), (0, 0));
                }
            }
        }
    }
    // The workspace serves every batch size up to the maximum.
    for (max, tokens) in [(1usize, 7usize), (8, 7), (32, 7), (32, 69), (300, 11)] {
        let (slots, bytes) = cross_attention_workspace(max, tokens, 4096, sms).unwrap();
        for prompts in 1..=max {
            let p = plan_cross_attention(prompts, tokens, 4096, sms).unwrap();
            assert!(p.counter_slots <= slots);
            let counters = (slots * 4).div_ceil(16) * 16;
            assert!(p.chunks == 1 || counters + p.partial_bytes <= bytes);
        }
    }
    assert_eq!(cross_attention_workspace(1, 7, 64, sms).unwrap(), (0, 0));
    // Shape errors.
    for (prompts, tokens, keys) in [
        (0, 7, 4096),
        (1, 0, 4096),
        (1, 81, 4096),
        (1, 7, 0),
        (1, 7, 100),
    ] {
        assert!(matches!(
            plan_cross_attention(prompts, tokens, keys, sms),
            Err(Error::Launch { .. })
        ));
    }
}

#[test]
fn cross_attention_checks() {
    let sms = H100_SMS as usize;
    let at = |i: u64, bytes: usize| DeviceRegion::new(BASE + (i << 26), bytes);
    let (prompts, tokens, keys) = (8usize, 7usize, 4096usize);
    let (slots, ws_bytes) = cross_attention_workspace(prompts, tokens, keys, sms).unwrap();
    // Block 1's layout: keys projection [q | k | v] rows of 384, k at 128, v at 256.
    let g = at(1, prompts * keys * 384 * 2);
    let col = |r: DeviceRegion, c: usize| DeviceRegion::new(r.ptr + 2 * c as u64, r.bytes - 2 * c);
    let good = CrossAttentionArgs {
        prompts,
        tokens,
        keys,
        scale: 0.25,
        q: CrossRows {
            region: at(0, prompts * tokens * 256),
            token_stride: 128,
            batch_stride: tokens * 128,
        },
        k: col(g, 128),
        v: col(g, 256),
        kv_token_stride: 384,
        kv_batch_stride: keys * 384,
        o: CrossRows {
            region: at(2, prompts * tokens * 256),
            token_stride: 128,
            batch_stride: tokens * 128,
        },
        workspace: Some(CrossAttentionWorkspace {
            ptr: at(3, 0).ptr,
            bytes: ws_bytes,
            counter_slots: slots,
        }),
    };
    let plan = check_cross_attention(&good, sms).unwrap();
    assert_eq!(plan.chunks, 32);
    // Shared keys (batch stride 0) and no workspace (one chunk).
    check_cross_attention(
        &CrossAttentionArgs {
            kv_batch_stride: 0,
            k: col(at(1, keys * 768), 128),
            v: col(at(1, keys * 768), 256),
            ..good
        },
        sms,
    )
    .unwrap();
    let one = check_cross_attention(
        &CrossAttentionArgs {
            workspace: None,
            ..good
        },
        sms,
    )
    .unwrap();
    assert_eq!((one.chunks, one.tiles_per_chunk), (1, 64));
    let ws = good.workspace.unwrap();
    let bad = [
        CrossAttentionArgs { prompts: 0, ..good },
        CrossAttentionArgs { tokens: 81, ..good },
        CrossAttentionArgs { keys: 4000, ..good },
        CrossAttentionArgs { scale: 0.0, ..good },
        CrossAttentionArgs {
            scale: f32::NAN,
            ..good
        },
        // k one row short.
        CrossAttentionArgs {
            k: DeviceRegion::new(good.k.ptr, good.k.bytes - 384 * 2 * 2),
            ..good
        },
        // Misaligned v, null q.
        CrossAttentionArgs {
            v: DeviceRegion::new(good.v.ptr + 8, good.v.bytes - 8),
            ..good
        },
        CrossAttentionArgs {
            q: CrossRows {
                region: DeviceRegion::new(0, 1 << 20),
                ..good.q
            },
            ..good
        },
        // Strides: not a multiple of 8, shorter than a row, output rows overlapping.
        CrossAttentionArgs {
            kv_token_stride: 388,
            ..good
        },
        CrossAttentionArgs {
            q: CrossRows {
                token_stride: 64,
                ..good.q
            },
            ..good
        },
        CrossAttentionArgs {
            o: CrossRows {
                batch_stride: 0,
                ..good.o
            },
            ..good
        },
        // The output over q, and over the keys.
        CrossAttentionArgs {
            o: CrossRows {
                region: good.q.region,
                ..good.o
            },
            ..good
        },
        CrossAttentionArgs {
            o: CrossRows {
                region: good.k,
                ..good.o
            },
            ..good
        },
        // Workspace: short, too few counters, misaligned, over the output.
        CrossAttentionArgs {
            workspace: Some(CrossAttentionWorkspace {
                bytes: ws.bytes - 4,
                ..ws
            }),
            ..good
        },
        CrossAttentionArgs {
            workspace: Some(CrossAttentionWorkspace {
                counter_slots: prompts - 1,
                ..ws
            }),
            ..good
        },
        CrossAttentionArgs {
            workspace: Some(CrossAttentionWorkspace {
                ptr: ws.ptr + 4,
                ..ws
            }),
            ..good
        },
        CrossAttentionArgs {
            workspace: Some(CrossAttentionWorkspace {
                ptr: good.o.region.ptr,
                ..ws
            }),
            ..good
        },
    ];
    for args in bad {
        assert!(
            is_launch_error(check_cross_attention(&args, sms).map(|_| ())),
            "{args:?}"
        );
    }
}

#[test]
fn heads_checks() {
    // Operands 1 MiB apart; 8 box prompts (7 tokens) in a plan of 32.
    let at = |i: u64, bytes: usize| DeviceRegion::new(BASE + (i << 20), bytes);
    let (prompts, tokens, stride) = (8, 7, 32);
    let big = 5 * 256 * 256 * 2;
    assert_eq!(heads_output_bytes(stride), 5 * stride * 32 * 2);
    let good = HeadsArgs {
        prompts,
        tokens,
        queries: at(0, prompts * tokens * 512),
        layers: [
            (at(1, big), at(2, 5 * 256 * 4)),
            (at(3, big), at(4, 5 * 256 * 4)),
            (at(5, 5 * 32 * 256 * 2), at(6, 5 * 32 * 4)),
        ],
        stride,
        y: at(7, heads_output_bytes(stride)),
    };
    check_heads(&good).unwrap();
    // 69 tokens (64 points), one prompt, stride = prompts, the largest launch.
    check_heads(&HeadsArgs {
        prompts: 1,
        tokens: 69,
        queries: at(0, 69 * 512),
        stride: 1,
        ..good
    })
    .unwrap();
    let with_layer = |l: usize, layer: (DeviceRegion, DeviceRegion)| {
        let mut layers = good.layers;
        layers[l] = layer;
        HeadsArgs { layers, ..good }
    };
    let bad = [
        HeadsArgs { prompts: 0, ..good },
        HeadsArgs {
            prompts: HEADS_MAX_PROMPTS + 1,
            stride: HEADS_MAX_PROMPTS + 1,
            ..good
        },
        HeadsArgs { tokens: 4, ..good },
        HeadsArgs {
            tokens: HEADS_MAX_TOKENS + 1,
            ..good
        },
        HeadsArgs { stride: 7, ..good },
        // One token more than the queries hold; misaligned; null.
        HeadsArgs { tokens: 8, ..good },
        HeadsArgs {
            queries: DeviceRegion::new(BASE + 8, prompts * tokens * 512),
            ..good
        },
        HeadsArgs {
            queries: DeviceRegion::new(0, 1 << 20),
            ..good
        },
        with_layer(0, (at(1, big - 2), good.layers[0].1)),
        with_layer(1, (good.layers[1].0, at(4, 5 * 256 * 4 - 4))),
        with_layer(2, (at(5, 5 * 4 * 256 * 2), good.layers[2].1)),
        with_layer(2, (good.layers[2].0, at(6, 5 * 4 * 4))),
        with_layer(
            0,
            (
                DeviceRegion::new(BASE + (1 << 20) + 4, big),
                good.layers[0].1,
            ),
        ),
        HeadsArgs {
            y: at(7, heads_output_bytes(stride) - 2),
            ..good
        },
        HeadsArgs {
            y: DeviceRegion::new(BASE + (7 << 20) + 2, heads_output_bytes(stride)),
            ..good
        },
        // y over the queries, a weight or a bias.
        HeadsArgs {
            y: DeviceRegion::new(good.queries.ptr + 512, heads_output_bytes(stride)),
            ..good
        },
        HeadsArgs {
            y: good.layers[1].0,
            ..good
        },
        HeadsArgs {
            y: DeviceRegion::new(good.layers[2].1.ptr, heads_output_bytes(stride)),
            ..good
        },
    ];
    for args in bad {
        assert!(is_launch_error(check_heads(&args)), "{args:?}");
    }
    // Adjacent is not overlapping: y right after the queries.
    let after_x = BASE + (prompts * tokens * 512) as u64;
    check_heads(&HeadsArgs {
        y: DeviceRegion::new(after_x, heads_output_bytes(stride)),
        ..good
    })
    .unwrap();
}

#[test]
fn folded_image_to_token_checks() {
    // Operands 64 MiB apart: 8 prompts, T 7, N 4096, per-prompt X in place.
    let at = |i: u64, bytes: usize| DeviceRegion::new(BASE + (i << 26), bytes);
    let (prompts, tokens, pixels) = (8usize, 7usize, 4096usize);
    let plane = pixels * 256;
    let rows = 8 * tokens;
    let good = FoldedImageToTokenArgs {
        prompts,
        tokens,
        pixels,
        x: at(0, prompts * plane * 2),
        x_batch: plane,
        pe: at(1, plane * 2),
        kf: at(2, prompts * rows * 512),
        kb: at(3, prompts * rows * 4),
        kb_batch: rows,
        vf: at(4, prompts * rows * 512),
        f_batch: rows * 256,
        out_bias: at(5, 1024),
        norm: (at(6, 1024), at(7, 1024)),
        eps: 1e-5,
        y: at(0, prompts * plane * 2),
        spare_sms: 0,
    };
    assert_eq!(check_folded_image_to_token(&good).unwrap(), prompts * 64);
    // Shared X (x_batch 0) with a separate Y; 64 pixels.
    let shared = FoldedImageToTokenArgs {
        x: at(0, plane * 2),
        x_batch: 0,
        y: at(8, prompts * plane * 2),
        ..good
    };
    check_folded_image_to_token(&shared).unwrap();
    check_folded_image_to_token(&FoldedImageToTokenArgs {
        pixels: 64,
        ..shared
    })
    .unwrap();
    let bad = [
        ("0 tokens", FoldedImageToTokenArgs { tokens: 0, ..good }),
        ("9 tokens", FoldedImageToTokenArgs { tokens: 9, ..good }),
        ("0 prompts", FoldedImageToTokenArgs { prompts: 0, ..good }),
        (
            "65536 prompts",
            FoldedImageToTokenArgs {
                prompts: 65536,
                ..good
            },
        ),
        ("0 pixels", FoldedImageToTokenArgs { pixels: 0, ..good }),
        (
            "pixels not a multiple of 64",
            FoldedImageToTokenArgs {
                pixels: 4000,
                ..good
            },
        ),
        (
            "X batch stride not a multiple of 8",
            FoldedImageToTokenArgs {
                x_batch: plane + 4,
                ..good
            },
        ),
        (
            "Kf batch stride not a multiple of 8",
            FoldedImageToTokenArgs {
                f_batch: rows * 256 + 2,
                ..good
            },
        ),
        (
            "eps NaN",
            FoldedImageToTokenArgs {
                eps: f32::NAN,
                ..good
            },
        ),
        (
            "short X",
            FoldedImageToTokenArgs {
                x: at(0, prompts * plane * 2 - 2),
                ..good
            },
        ),
        (
            "short PE",
            FoldedImageToTokenArgs {
                pe: at(1, plane * 2 - 16),
                ..good
            },
        ),
        (
            "short Kf",
            FoldedImageToTokenArgs {
                kf: at(2, prompts * rows * 512 - 2),
                ..good
            },
        ),
        (
            "short Vf",
            FoldedImageToTokenArgs {
                vf: at(4, prompts * rows * 512 - 2),
                ..good
            },
        ),
        (
            "short kb",
            FoldedImageToTokenArgs {
                kb: at(3, prompts * rows * 4 - 4),
                ..good
            },
        ),
        (
            "short norm weight",
            FoldedImageToTokenArgs {
                norm: (at(6, 1020), at(7, 1024)),
                ..good
            },
        ),
        (
            "short Y",
            FoldedImageToTokenArgs {
                y: at(8, prompts * plane * 2 - 2),
                ..shared
            },
        ),
        (
            "misaligned Kf",
            FoldedImageToTokenArgs {
                kf: DeviceRegion::new(BASE + (2 << 26) + 8, prompts * rows * 512),
                ..good
            },
        ),
        (
            "null PE",
            FoldedImageToTokenArgs {
                pe: DeviceRegion::new(0, plane * 2),
                ..good
            },
        ),
        (
            "Y over a shared X",
            FoldedImageToTokenArgs {
                y: at(0, prompts * plane * 2),
                ..shared
            },
        ),
        (
            "Y one row past X (not in place)",
            FoldedImageToTokenArgs {
                y: DeviceRegion::new(BASE + 512, prompts * plane * 2),
                ..good
            },
        ),
        (
            "Y over PE",
            FoldedImageToTokenArgs {
                y: at(1, prompts * plane * 2),
                ..shared
            },
        ),
    ];
    for (what, args) in bad {
        match check_folded_image_to_token(&args) {
            Err(Error::Launch { message, .. }) => println!("{what}: {message}"),
            other => panic!("{what}: expected Error::Launch, got {other:?}"),
        }
    }
    // One CTA per SM, at most one per 16-pixel unit (4 a tile).
    assert_eq!(folded_grid(1, H100_SMS), 4);
    assert_eq!(folded_grid(33, H100_SMS), H100_SMS);
    assert_eq!(folded_grid(8 * 64, H100_SMS), H100_SMS);
    assert_eq!(folded_grid(100, 0), 1);
}

#[test]
fn folded_token_to_image_plans_and_checks() {
    let sms = H100_SMS as usize;
    // About one CTA per SM, at most 32 chunks, no empty chunk.
    let plan = |prompts, keys| plan_folded_token_to_image(prompts, 7, keys, sms).unwrap();
    assert_eq!(
        (plan(8, 4096).chunks, plan(8, 4096).tiles_per_chunk),
        (16, 4)
    );
    assert_eq!(
        (plan(32, 4096).chunks, plan(32, 4096).tiles_per_chunk),
        (4, 16)
    );
    assert_eq!(plan(1, 4096).chunks, 32);
    assert_eq!(plan(1, 192).chunks, 3);
    assert_eq!((plan(1, 64).chunks, plan(1, 64).workspace_bytes()), (1, 0));
    assert_eq!(plan(200, 4096).chunks, 1);
    let p = plan(8, 4096);
    assert_eq!(
        (p.counter_slots, p.partial_bytes),
        (8, 8 * 16 * 7 * 144 * 4)
    );
    let (slots, ws_bytes) = folded_token_to_image_workspace(32, 7, 4096, sms).unwrap();
    for prompts in 1..=32 {
        let p = plan(prompts, 4096);
        assert!(p.counter_slots <= slots && p.workspace_bytes() <= ws_bytes);
    }
    for (prompts, tokens, keys) in [(0, 7, 4096), (1, 0, 4096), (1, 9, 4096), (1, 7, 100)] {
        assert!(matches!(
            plan_folded_token_to_image(prompts, tokens, keys, sms),
            Err(Error::Launch { .. })
        ));
    }

    let at = |i: u64, bytes: usize| DeviceRegion::new(BASE + (i << 26), bytes);
    let (prompts, tokens, keys) = (8usize, 7usize, 4096usize);
    let (slots, ws_bytes) = folded_token_to_image_workspace(prompts, tokens, keys, sms).unwrap();
    let good = FoldedTokenToImageArgs {
        prompts,
        tokens,
        keys,
        scale: 0.25,
        qf: at(0, prompts * tokens * 8 * 256 * 2),
        qf_batch_stride: tokens * 8 * 256,
        x: at(1, prompts * keys * 256 * 2),
        x_batch_stride: keys * 256,
        pe: at(2, keys * 256 * 2),
        wv: at(3, 128 * 256 * 2),
        bv: at(4, 128 * 4),
        o: CrossRows {
            region: at(5, prompts * tokens * 128 * 2),
            token_stride: 128,
            batch_stride: tokens * 128,
        },
        workspace: Some(CrossAttentionWorkspace {
            ptr: at(6, 0).ptr,
            bytes: ws_bytes,
            counter_slots: slots,
        }),
    };
    let good_plan = check_folded_token_to_image(&good, sms).unwrap();
    assert_eq!(good_plan.chunks, 16);
    // Shared X (batch stride 0, one prompt's rows), and no workspace (one chunk).
    check_folded_token_to_image(
        &FoldedTokenToImageArgs {
            x: at(1, keys * 256 * 2),
            x_batch_stride: 0,
            ..good
        },
        sms,
    )
    .unwrap();
    let one = check_folded_token_to_image(
        &FoldedTokenToImageArgs {
            workspace: None,
            ..good
        },
        sms,
    )
    .unwrap();
    assert_eq!((one.chunks, one.tiles_per_chunk), (1, 64));
    let ws = good.workspace.unwrap();
    let bad = [
        FoldedTokenToImageArgs { tokens: 0, ..good },
        FoldedTokenToImageArgs { tokens: 9, ..good },
        FoldedTokenToImageArgs { keys: 4000, ..good },
        FoldedTokenToImageArgs { prompts: 0, ..good },
        FoldedTokenToImageArgs {
            scale: f32::INFINITY,
            ..good
        },
        // Short buffers: x one key row short, qf one row short, pe, wv, bv.
        FoldedTokenToImageArgs {
            x: DeviceRegion::new(good.x.ptr, good.x.bytes - 512),
            ..good
        },
        FoldedTokenToImageArgs {
            qf: DeviceRegion::new(good.qf.ptr, good.qf.bytes - 512),
            ..good
        },
        FoldedTokenToImageArgs {
            pe: DeviceRegion::new(good.pe.ptr, good.pe.bytes - 2),
            ..good
        },
        FoldedTokenToImageArgs {
            wv: DeviceRegion::new(good.wv.ptr, good.wv.bytes - 2),
            ..good
        },
        FoldedTokenToImageArgs {
            bv: DeviceRegion::new(good.bv.ptr, 508),
            ..good
        },
        // Misaligned x, odd batch stride, short output token stride.
        FoldedTokenToImageArgs {
            x: DeviceRegion::new(good.x.ptr + 8, good.x.bytes - 8),
            ..good
        },
        FoldedTokenToImageArgs {
            qf_batch_stride: good.qf_batch_stride + 4,
            ..good
        },
        FoldedTokenToImageArgs {
            o: CrossRows {
                token_stride: 120,
                ..good.o
            },
            ..good
        },
        // Overlapping output: prompts' rows over each other, over x, over the workspace.
        FoldedTokenToImageArgs {
            o: CrossRows {
                batch_stride: 0,
                ..good.o
            },
            ..good
        },
        FoldedTokenToImageArgs {
            o: CrossRows {
                region: good.x,
                ..good.o
            },
            ..good
        },
        FoldedTokenToImageArgs {
            workspace: Some(CrossAttentionWorkspace {
                ptr: good.o.region.ptr,
                ..ws
            }),
            ..good
        },
        // Workspace: short, too few counters.
        FoldedTokenToImageArgs {
            workspace: Some(CrossAttentionWorkspace {
                bytes: good_plan.workspace_bytes() - 4,
                ..ws
            }),
            ..good
        },
        FoldedTokenToImageArgs {
            workspace: Some(CrossAttentionWorkspace {
                counter_slots: prompts - 1,
                ..ws
            }),
            ..good
        },
    ];
    for args in bad {
        assert!(
            is_launch_error(check_folded_token_to_image(&args, sms).map(|_| ())),
            "{args:?}"
        );
    }
}

#[test]
fn convt1_and_head_fold_checks() {
    // Operands 64 MiB apart.
    let at = |i: u64, bytes: usize| DeviceRegion::new(BASE + (i << 26), bytes);
    let rows = 8 * 4096;
    let good = ConvT1Args {
        rows,
        x: at(0, rows * 512),
        weight: at(1, 256 * 512),
        bias: at(2, 1024),
        ln: (at(3, 256), at(4, 256)),
        eps: 1e-6,
        y: at(5, rows * 512),
        spare_sms: 0,
    };
    check_convt1_ln_gelu(&good).unwrap();
    let bad = [
        ConvT1Args { rows: 0, ..good },
        ConvT1Args { rows: 100, ..good },
        ConvT1Args {
            eps: f32::NAN,
            ..good
        },
        ConvT1Args {
            x: at(0, rows * 512 - 2),
            ..good
        },
        ConvT1Args {
            weight: at(1, 256 * 512 - 2),
            ..good
        },
        ConvT1Args {
            y: at(0, rows * 512),
            ..good
        },
    ];
    for args in bad {
        assert!(is_launch_error(check_convt1_ln_gelu(&args)), "{args:?}");
    }
    // One CTA per SM, two tiles each, spare SMs left free, never none.
    assert_eq!(convt1_ctas(64, 132, 0), 1);
    assert_eq!(convt1_ctas(8 * 4096, 132, 0), 132);
    assert_eq!(convt1_ctas(8 * 4096, 132, 4), 128);
    assert_eq!(convt1_ctas(8 * 4096, 132, 1000), 1);

    let fold = HeadFold {
        x: at(6, 56 * 384 * 2),
        x_stride: 384,
        weight: at(7, 128 * 512),
        bias: Some((at(8, 512), at(9, 56 * 8 * 4))),
        scale: 0.25,
        y: at(10, 56 * 8 * 512),
    };
    check_head_fold(56, &[fold, HeadFold { bias: None, ..fold }]).unwrap();
    let bad = [
        (0, vec![fold]),
        (57, vec![fold]),
        (56, vec![]),
        (56, vec![fold, fold, fold]),
        (
            56,
            vec![HeadFold {
                x_stride: 100,
                ..fold
            }],
        ),
        (
            56,
            vec![HeadFold {
                scale: f32::INFINITY,
                ..fold
            }],
        ),
        (
            56,
            vec![HeadFold {
                y: at(6, 56 * 8 * 512),
                ..fold
            }],
        ),
        (
            56,
            vec![HeadFold {
                bias: Some((at(8, 512), at(9, 8))),
                ..fold
            }],
        ),
    ];
    for (rows, folds) in bad {
        assert!(
            is_launch_error(check_head_fold(rows, &folds)),
            "{rows} rows, {folds:?}"
        );
    }
}

//! Host-side tests of the MobileSAM prompt encoder and mask decoder: prompt validation and the
//! device prompt layout, mask input validation, weight validation by official name and shape,
//! the positional encoding, and the f64 `mask_downscaling` reference the GPU kernel is checked
//! against (on hand-derived cases).

mod common;
#[path = "common/dense.rs"]
mod dense;

use common::weights::{spec, temp_dir, write};
use dense::{activate, mask_downscaling_reference};
use finesam::models::mobilesam::decoder::{expected_tensors, PreparedWeights};
use finesam::models::mobilesam::prompt::{
    dense_positional_encoding, positional_encoding, validate_mask_input, PromptKind, Prompts,
    PROMPT_HEADER_BYTES,
};
use finesam::ops::gemm::Activation;
use finesam::ops::sam_decoder::{mask_params, MASK_INPUT_PIXELS};
use finesam::weights::WeightsFile;
use finesam::Error;

#[test]
fn prompts_encode_to_the_device_layout() {
    let boxes = [[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]];
    let bytes = Prompts::Boxes(&boxes).encode(PromptKind::Boxes, 4).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()), 2);
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[PROMPT_HEADER_BYTES..]);
    assert_eq!(
        values,
        vec![10.0, 20.0, 2.0, 30.0, 40.0, 3.0, 1.0, 2.0, 2.0, 3.0, 4.0, 3.0]
    );

    // Points get the padding point PromptEncoder appends without boxes.
    let coords = [[5.0, 6.0], [7.0, 8.0]];
    let prompts = Prompts::Points {
        coords: &coords,
        labels: &[1.0, 0.0],
        per_prompt: 2,
    };
    let kind = PromptKind::Points { per_prompt: 2 };
    assert_eq!(kind.points(), 3);
    let bytes = prompts.encode(kind, 1).unwrap();
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[PROMPT_HEADER_BYTES..]);
    assert_eq!(values, vec![5.0, 6.0, 1.0, 7.0, 8.0, 0.0, 0.0, 0.0, -1.0]);

    // Boxes with points: each prompt's points first (no padding point, boxes are given), then
    // its two box corners, as PromptEncoder.forward concatenates them.
    let boxes = [[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]];
    let coords = [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0], [11.0, 12.0]];
    let prompts = Prompts::BoxesWithPoints {
        boxes: &boxes,
        coords: &coords,
        labels: &[1.0, 0.0, -1.0, 1.0],
        per_prompt: 2,
    };
    let kind = PromptKind::BoxesWithPoints {
        points_per_prompt: 2,
    };
    assert_eq!(
        (prompts.kind(), prompts.count(), kind.points()),
        (kind, 2, 4)
    );
    let bytes = prompts.encode(kind, 2).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()), 2);
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[PROMPT_HEADER_BYTES..]);
    #[rustfmt::skip]
    let want = [
        5.0, 6.0, 1.0, 7.0, 8.0, 0.0, 10.0, 20.0, 2.0, 30.0, 40.0, 3.0,
        9.0, 10.0, -1.0, 11.0, 12.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 3.0,
    ];
    assert_eq!(values, want);
}

#[test]
fn bad_prompts_are_rejected() {
    let ok = [[0.0, 0.0, 1.0, 1.0]];
    let cases: Vec<(Prompts<'_>, PromptKind, usize)> = vec![
        (Prompts::Boxes(&[]), PromptKind::Boxes, 4),
        (Prompts::Boxes(&[[0.0; 4]; 5]), PromptKind::Boxes, 4),
        (
            Prompts::Boxes(&[[0.0, f32::INFINITY, 1.0, 1.0]]),
            PromptKind::Boxes,
            4,
        ),
        (Prompts::Boxes(&ok), PromptKind::Points { per_prompt: 1 }, 4),
        (
            Prompts::Points {
                coords: &[[0.0, 0.0]],
                labels: &[2.0],
                per_prompt: 1,
            },
            PromptKind::Points { per_prompt: 1 },
            4,
        ),
        (
            Prompts::Points {
                coords: &[[f32::NAN, 0.0]],
                labels: &[1.0],
                per_prompt: 1,
            },
            PromptKind::Points { per_prompt: 1 },
            4,
        ),
        (
            Prompts::Points {
                coords: &[[0.0, 0.0]; 3],
                labels: &[1.0; 2],
                per_prompt: 1,
            },
            PromptKind::Points { per_prompt: 1 },
            4,
        ),
    ];
    let two = PromptKind::BoxesWithPoints {
        points_per_prompt: 2,
    };
    let with_points = |boxes, coords, labels, per_prompt| Prompts::BoxesWithPoints {
        boxes,
        coords,
        labels,
        per_prompt,
    };
    let pts = [[1.0, 1.0]; 2];
    let cases_with_points: Vec<(Prompts<'_>, PromptKind, usize)> = vec![
        // Fewer points than boxes x per_prompt, and labels not matching the points.
        (with_points(&ok, &pts[..1], &[1.0], 2), two, 4),
        (with_points(&ok, &pts, &[1.0], 2), two, 4),
        // A box label code given as a point label; a non-finite point; a non-finite box.
        (with_points(&ok, &pts, &[1.0, 3.0], 2), two, 4),
        (
            with_points(&ok, &[[1.0, f32::NAN]; 2], &[1.0, 1.0], 2),
            two,
            4,
        ),
        (
            with_points(&[[0.0, 0.0, f32::INFINITY, 1.0]], &pts, &[1.0, 1.0], 2),
            two,
            4,
        ),
        // No boxes; too many for the plan; zero points per box; the wrong plan kind.
        (with_points(&[], &[], &[], 2), two, 4),
        (
            with_points(&[[0.0; 4]; 2], &[[1.0, 1.0]; 4], &[1.0; 4], 2),
            two,
            1,
        ),
        (
            with_points(&ok, &[], &[], 0),
            PromptKind::BoxesWithPoints {
                points_per_prompt: 0,
            },
            4,
        ),
        (with_points(&ok, &pts, &[1.0, 0.0], 2), PromptKind::Boxes, 4),
        (
            Prompts::Boxes(&ok),
            PromptKind::BoxesWithPoints {
                points_per_prompt: 1,
            },
            4,
        ),
    ];
    for (prompts, kind, max) in cases.into_iter().chain(cases_with_points) {
        let err = prompts.encode(kind, max).unwrap_err();
        assert!(matches!(err, Error::Prompt(_)), "{prompts:?}: {err:?}");
    }
}

#[test]
fn bad_mask_inputs_are_rejected() {
    let mut masks = vec![0.5f32; 3 * MASK_INPUT_PIXELS];
    assert_eq!(validate_mask_input(&masks, 4).unwrap(), 3);
    let mut bad: Vec<(Vec<f32>, usize)> = vec![
        (Vec::new(), 4),                       // none
        (vec![0.0; MASK_INPUT_PIXELS + 7], 4), // not whole masks
        (vec![0.0; 64 * 64], 4),               // embedding-sized, not 256 x 256
        (masks.clone(), 2),                    // more masks than the plan's prompts
    ];
    masks[2 * MASK_INPUT_PIXELS + 300] = f32::NAN;
    bad.push((masks.clone(), 4));
    masks[2 * MASK_INPUT_PIXELS + 300] = f32::NEG_INFINITY;
    bad.push((masks, 4));
    for (masks, max) in bad {
        let err = validate_mask_input(&masks, max).unwrap_err();
        assert!(
            matches!(err, Error::Prompt(_)),
            "{} values: {err:?}",
            masks.len()
        );
    }
    let mut nan = vec![0.0f32; MASK_INPUT_PIXELS];
    nan[256 * 5 + 9] = f32::NAN;
    let err = validate_mask_input(&nan, 1).unwrap_err().to_string();
    assert!(err.contains("row 5, column 9"), "{err}");
}

#[test]
fn mask_downscaling_parameters_pack_the_official_tensors() {
    // The packed offsets (the kernel's kW1..kB3) are the running sums of the official tensor
    // sizes in packing order, and the decoder requires exactly those names and shapes.
    let offsets = [
        mask_params::W1,
        mask_params::B1,
        mask_params::G1,
        mask_params::BE1,
        mask_params::W2,
        mask_params::B2,
        mask_params::G2,
        mask_params::BE2,
        mask_params::W3,
        mask_params::B3,
        mask_params::LEN,
    ];
    let mut at = 0;
    let all = expected_tensors();
    for (i, (suffix, shape)) in mask_params::TENSORS.iter().enumerate() {
        assert_eq!(offsets[i], at, "offset of {suffix}");
        at += shape.iter().product::<usize>();
        let name = format!("prompt_encoder.mask_downscaling.{suffix}");
        assert!(all.iter().any(|(n, s)| *n == name && s == shape), "{name}");
    }
    assert_eq!(at, mask_params::LEN);
}

/// Packed mask_downscaling parameters: conv1 taps of channel c all c + 1 (bias 0), LayerNorm2d
/// scales 1 and shifts 0, conv2 zero except output 0 reading conv1 channel 3 through tap
/// `tap`, conv3 `w[o][o % 16] = 1` with bias `0.01 o`.
fn hand_params(tap: (usize, usize)) -> Vec<f32> {
    let mut p = vec![0f32; mask_params::LEN];
    for c in 0..4 {
        for t in 0..4 {
            p[mask_params::W1 + c * 4 + t] = (c + 1) as f32;
        }
        p[mask_params::G1 + c] = 1.0;
    }
    // Weight [o = 0][c = 3][tap.0][tap.1] of [16, 4, 2, 2].
    p[mask_params::W2 + (3 * 2 + tap.0) * 2 + tap.1] = 1.0;
    for i in 0..16 {
        p[mask_params::G2 + i] = 1.0;
    }
    for o in 0..256 {
        p[mask_params::W3 + o * 16 + o % 16] = 1.0;
        p[mask_params::B3 + o] = 0.01 * o as f32;
    }
    p
}

#[test]
fn mask_downscaling_reference_matches_hand_derived_values() {
    let gelu = |v: f64| activate(v, Activation::Gelu);
    // One nonzero input pixel at row 4*5 + 2*1 + 1, column 4*7 + 2*0 + 1: the first conv's
    // output (11, 14) reads it through tap (1, 1) (every tap weighs c + 1 there: values 1..4,
    // LayerNorm -> nonzero), the second conv's output (5, 7) reads that through tap (1, 0).
    // Everywhere else the conv outputs are 0, LayerNorm2d(0) = 0 and GELU(0) = 0.
    let mut mask = vec![0f32; MASK_INPUT_PIXELS];
    mask[23 * 256 + 29] = 2.5;
    let background = |o: usize| (0.01 * o as f32) as f64;
    let hit = mask_downscaling_reference(&hand_params((1, 0)), &mask);
    // When the second conv is [v, 0 x 15]: mean v / 16, variance 15 v^2 / 256, so LayerNorm2d
    // gives 15 v / 16 / sigma for channel 0 and -v / 16 / sigma for the rest (~ sqrt(15) and
    // -1/sqrt(15)); then GELU and conv3 (channel o reads o % 16).
    let second = |v: f64| {
        let sigma = (15.0 * v * v / 256.0 + 1e-6).sqrt();
        (gelu(15.0 * v / 16.0 / sigma), gelu(-v / 16.0 / sigma))
    };
    // The first conv at (11, 14) is 2.5 x [1, 2, 3, 4]: centred [-3.75, -1.25, 1.25, 3.75],
    // variance 7.8125; the second conv reads channel 3.
    let (big, small) = second(gelu(3.75 / (7.8125f64 + 1e-6).sqrt()));
    assert!((big - 3.8727).abs() < 1e-3 && (small + 0.1028).abs() < 1e-3);
    for px in 0..4096 {
        for o in 0..256 {
            let got = hit[px * 256 + o];
            let want = if px == 5 * 64 + 7 {
                background(o) + if o % 16 == 0 { big } else { small }
            } else {
                background(o)
            };
            assert!(
                (got - want).abs() < 1e-9,
                "pixel {px} channel {o}: {got} vs {want}"
            );
        }
    }
    // Through another second-conv tap the pixel is not seen: the output is the bias everywhere.
    let miss = mask_downscaling_reference(&hand_params((0, 1)), &mask);
    for (i, v) in miss.iter().enumerate() {
        assert!((v - background(i % 256)).abs() < 1e-12, "value {i}: {v}");
    }
    // A constant mask: conv1 = 4 c' x 2.5 (c' = c + 1), centred [-15, -5, 5, 15], variance 125,
    // so the normalised channel 3 is 15 / sqrt(125 + 1e-6) at every pixel.
    let constant = vec![2.5f32; MASK_INPUT_PIXELS];
    let all = mask_downscaling_reference(&hand_params((0, 0)), &constant);
    let (big, small) = second(gelu(15.0 / (125.0f64 + 1e-6).sqrt()));
    for (i, v) in all.iter().enumerate() {
        let o = i % 256;
        let want = background(o) + if o % 16 == 0 { big } else { small };
        assert!((v - want).abs() < 1e-9, "value {i}: {v} vs {want}");
    }
}

#[test]
fn dense_positional_encoding_matches_the_point_encoding() {
    let gauss: Vec<f32> = (0..256)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let dense = dense_positional_encoding(&gauss);
    assert_eq!(dense.len(), 4096 * 256);
    // Pixel (row 3, column 5) is the point ((5 + 0.5) / 64, (3 + 0.5) / 64).
    let point = positional_encoding(&gauss, (5.5 / 64.0, 3.5 / 64.0));
    let row = &dense[(3 * 64 + 5) * 256..(3 * 64 + 6) * 256];
    for (a, b) in row.iter().zip(point) {
        assert!((*a as f64 - b).abs() < 1e-6);
    }
    // sin^2 + cos^2 = 1 per frequency.
    for c in 0..128 {
        let (s, co) = (row[c] as f64, row[128 + c] as f64);
        assert!((s * s + co * co - 1.0).abs() < 1e-5);
    }
}

#[test]
fn weights_are_validated_by_official_name_and_shape() {
    let dir = temp_dir("cpu_mobilesam_decoder");
    let all = expected_tensors();
    assert!(all
        .iter()
        .any(|(n, _)| n == "mask_decoder.output_upscaling.0.weight"));
    let specs = |skip: &str, reshape: Option<(&str, Vec<usize>)>| -> Vec<_> {
        all.iter()
            .filter(|(n, _)| n != skip)
            .map(|(n, s)| match &reshape {
                Some((name, shape)) if name == n => spec(n, shape),
                _ => spec(n, s),
            })
            .collect()
    };
    // A complete file is prepared (and uploaded) by the GPU tests: the positional tables take
    // ~0.7 GFLOP on the host, too slow for an unoptimised test build.
    let path = write(
        &dir,
        "missing.safetensors",
        &specs("mask_decoder.transformer.layers.1.norm4.bias", None),
    );
    let err = PreparedWeights::prepare(&WeightsFile::open(path).unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name.ends_with("norm4.bias")),
        "{err:?}"
    );

    let path = write(
        &dir,
        "missing_mask.safetensors",
        &specs("prompt_encoder.mask_downscaling.6.bias", None),
    );
    let err = PreparedWeights::prepare(&WeightsFile::open(path).unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "prompt_encoder.mask_downscaling.6.bias"),
        "{err:?}"
    );
    let conv2 = "prompt_encoder.mask_downscaling.3.weight";
    let path = write(
        &dir,
        "shape_mask.safetensors",
        &specs("", Some((conv2, vec![16, 4, 1, 1]))),
    );
    let err = PreparedWeights::prepare(&WeightsFile::open(path).unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::TensorShape { name, expected, .. } if name == conv2 && expected == &vec![16, 4, 2, 2]),
        "{err:?}"
    );

    let bad = "mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj.weight";
    let path = write(
        &dir,
        "shape.safetensors",
        &specs("", Some((bad, vec![256, 256]))),
    );
    let err = PreparedWeights::prepare(&WeightsFile::open(path).unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::TensorShape { name, expected, .. } if name == bad && expected == &vec![128, 256]),
        "{err:?}"
    );
}

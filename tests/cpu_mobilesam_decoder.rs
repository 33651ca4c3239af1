//! Host-side tests of the MobileSAM prompt encoder and mask decoder: prompt validation and the
//! device prompt layout, weight validation by official name and shape, the positional encoding.

mod common;

use common::weights::{spec, temp_dir, write};
use finesam::models::mobilesam::decoder::{expected_tensors, PreparedWeights};
use finesam::models::mobilesam::prompt::{
    dense_positional_encoding, positional_encoding, PromptKind, Prompts, PROMPT_HEADER_BYTES,
};
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
    for (prompts, kind, max) in cases {
        let err = prompts.encode(kind, max).unwrap_err();
        assert!(matches!(err, Error::Prompt(_)), "{prompts:?}: {err:?}");
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

//! Synthetic safetensors files with the official key names, for weights and CLI tests.

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

/// One tensor to write: name, shape, f32 values (filled from the index when empty), stored dtype
/// (F32, F16 or BF16).
pub struct Spec {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Option<Vec<f32>>,
    pub dtype: Dtype,
}

pub fn spec(name: &str, shape: &[usize]) -> Spec {
    Spec {
        name: name.to_string(),
        shape: shape.to_vec(),
        values: None,
        dtype: Dtype::F32,
    }
}

/// The values a spec holds (explicit, or a ramp derived from the index).
pub fn values(s: &Spec) -> Vec<f32> {
    let n: usize = s.shape.iter().product();
    s.values
        .clone()
        .unwrap_or_else(|| (0..n).map(|i| (i % 17) as f32 * 0.01 - 0.05).collect())
}

/// Writes the tensors as safetensors into `dir/name`.
pub fn write(dir: &Path, name: &str, specs: &[Spec]) -> PathBuf {
    let buffers: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| {
            let values = values(s);
            match s.dtype {
                Dtype::F16 => values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => values
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
                Dtype::I64 => values
                    .iter()
                    .flat_map(|&v| (v as i64).to_le_bytes())
                    .collect(),
                _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = specs
        .iter()
        .zip(&buffers)
        .map(|(s, b)| {
            (
                s.name.clone(),
                TensorView::new(s.dtype, s.shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The tensors `recognise` checks for MobileSAM, plus a few more.
pub fn mobilesam() -> Vec<Spec> {
    vec![
        spec("image_encoder.patch_embed.seq.0.c.weight", &[32, 3, 3, 3]),
        spec("image_encoder.neck.0.weight", &[256, 320, 1, 1]),
        spec("image_encoder.neck.2.weight", &[256, 256, 3, 3]),
        spec(
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
            &[2, 128],
        ),
        spec("prompt_encoder.not_a_point_embed.weight", &[1, 256]),
        spec("mask_decoder.iou_token.weight", &[1, 256]),
        spec("mask_decoder.mask_tokens.weight", &[4, 256]),
    ]
}

/// The tensors `recognise` reads for a D-FINE model with these encoder inputs.
pub fn dfine(in_channels: &[usize], hidden: usize, layers: usize) -> Vec<Spec> {
    let mut specs = vec![
        spec("backbone.stem.stem1.conv.weight", &[16, 3, 3, 3]),
        spec("decoder.up", &[1]),
        spec("decoder.reg_scale", &[1]),
    ];
    for (i, &c) in in_channels.iter().enumerate() {
        specs.push(spec(
            &format!("encoder.input_proj.{i}.conv.weight"),
            &[hidden, c, 1, 1],
        ));
    }
    for i in 0..layers {
        specs.push(spec(
            &format!("decoder.dec_score_head.{i}.weight"),
            &[80, hidden],
        ));
    }
    specs
}

/// A fresh temporary directory for one test.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("finesam-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

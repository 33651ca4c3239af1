//! Seeded random MobileSAM image-encoder weights with the official names, written as
//! safetensors: for CPU tests of loading and for benchmarks without the PyTorch fixtures.
//! Included by path (`#[path = ...] mod encoder_weights;`) from tests and benches.

use std::path::Path;

use finesam::models::mobilesam::encoder::required_tensors;
use safetensors::tensor::{Dtype, TensorView};

/// What to change in the written file, for error tests.
#[derive(Clone, Copy, Default)]
pub struct Damage<'a> {
    /// Leave this tensor out.
    pub drop: Option<&'a str>,
    /// Write this tensor with one extra leading element in its first dimension.
    pub reshape: Option<&'a str>,
}

/// Writes every tensor the encoder reads (prefix `image_encoder.`) to `path`, values drawn the
/// way tests/parity/official.py randomises: weights ~ U with std 1/sqrt(fan_in), norm scales
/// and running variances in [0.5, 1.5), other vectors std ~0.1.
pub fn write_random_encoder_weights(path: &Path, seed: u64, damage: Damage<'_>) {
    let mut state = seed;
    let mut uniform = move || {
        // SplitMix64 -> [-1, 1).
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f32 / (1u64 << 52) as f32 - 1.0
    };
    let sqrt3 = 3f32.sqrt();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, mut shape) in required_tensors("image_encoder.") {
        if damage.drop == Some(name.as_str()) {
            continue;
        }
        if damage.reshape == Some(name.as_str()) {
            shape[0] += 1;
        }
        let n: usize = shape.iter().product();
        let fan_in = (n / shape[0]).max(1) as f32;
        let positive = name.ends_with("running_var")
            || (shape.len() == 1 && name.contains("norm") && name.ends_with("weight"))
            || (shape.len() == 1 && name.ends_with("bn.weight"))
            || name.ends_with("neck.1.weight")
            || name.ends_with("neck.3.weight");
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let u = uniform();
                if positive {
                    1.0 + 0.5 * u
                } else if shape.len() >= 2 {
                    u * sqrt3 / fan_in.sqrt()
                } else {
                    0.1 * sqrt3 * u
                }
            })
            .collect();
        tensors.push((name, shape, bytemuck::cast_slice(&values).to_vec()));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap();
            (name.clone(), view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

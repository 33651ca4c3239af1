//! Helpers shared by the integration tests: GPU presence, fixtures, a seeded generator.
#![allow(dead_code)]

pub mod assign;
pub mod weights;

use std::path::PathBuf;

/// Whether the GPU tests can run. Without a GPU they print why and pass (CI has none); with
/// `FINESAM_REQUIRE_GPU=1` (set by the device runner) a missing GPU is a failure instead.
pub fn gpu_available(test: &str) -> bool {
    match finesam::Gpu::probe() {
        Ok(()) => true,
        Err(e) => {
            assert!(
                std::env::var("FINESAM_REQUIRE_GPU").as_deref() != Ok("1"),
                "{test}: FINESAM_REQUIRE_GPU=1 but no GPU: {e}"
            );
            eprintln!("skipping {test}: {e}");
            false
        }
    }
}

/// The reference fixture directory `$FINESAM_FIXTURES/<kind>`, if generated. Without it the
/// parity tests print why and pass, unless `FINESAM_REQUIRE_FIXTURES=1`.
pub fn fixtures(test: &str, kind: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("FINESAM_FIXTURES").map(|d| PathBuf::from(d).join(kind));
    match dir {
        Some(dir) if dir.is_dir() => Some(dir),
        _ => {
            assert!(
                std::env::var("FINESAM_REQUIRE_FIXTURES").as_deref() != Ok("1"),
                "{test}: FINESAM_REQUIRE_FIXTURES=1 but $FINESAM_FIXTURES/{kind} is missing"
            );
            eprintln!(
                "skipping {test}: no $FINESAM_FIXTURES/{kind} (generate with tests/parity/generate.py)"
            );
            None
        }
    }
}

/// SplitMix64: a tiny seeded generator so tests draw fresh but reproducible inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % (hi - lo) as u64) as u32
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A float32 tensor of a reference fixture, by name (panics with the name if absent: a broken
/// fixture is a test failure).
pub fn fixture_f32(tensors: &safetensors::SafeTensors<'_>, name: &str) -> Vec<f32> {
    let view = tensors
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor '{name}': {e}"));
    bytemuck::pod_collect_to_vec(view.data())
}

/// The pixel format a fixture's metadata names (`gray8`, `rgb8`, `bgr8`, `rgba8`).
pub fn fixture_format(name: &str) -> finesam::PixelFormat {
    match name {
        "gray8" => finesam::PixelFormat::Gray8,
        "rgb8" => finesam::PixelFormat::Rgb8,
        "bgr8" => finesam::PixelFormat::Bgr8,
        "rgba8" => finesam::PixelFormat::Rgba8,
        other => panic!("fixture has unknown pixel format {other}"),
    }
}

//! Helpers shared by the criterion benches: CUDA-event times as criterion durations, non-trivial
//! device operands, and one-line-plus-criterion timing of a launch.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;
use finesam::gpu::DeviceBuffer;
use finesam::ops::DeviceRegion;
use finesam::{Gpu, Result};
use half::f16;

/// A GPU time of `ms_per_rep` per repetition as criterion's duration for `iters` of them.
pub fn gpu_duration(ms_per_rep: f64, iters: u64) -> Duration {
    Duration::from_secs_f64(ms_per_rep * 1e-3 * iters as f64)
}

/// A device buffer holding `bytes`.
pub fn upload(gpu: &Gpu, bytes: &[u8]) -> DeviceBuffer {
    let buffer = gpu.alloc(bytes.len()).expect("device allocation");
    gpu.upload(buffer.ptr(), bytes).expect("upload");
    buffer
}

/// A device buffer of `elements` fp16 values in about [-amplitude, amplitude], non-trivial
/// (never benchmark on zeros).
pub fn filled(gpu: &Gpu, elements: usize, amplitude: f32) -> DeviceBuffer {
    let values: Vec<f16> = (0..elements)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2654435761) >> 8;
            f16::from_f32(amplitude * ((h % 2001) as f32 / 1000.0 - 1.0))
        })
        .collect();
    upload(gpu, bytemuck::cast_slice(&values))
}

/// A device buffer of `n` f32 values all `value`.
pub fn f32_buffer(gpu: &Gpu, n: usize, value: f32) -> DeviceBuffer {
    upload(gpu, bytemuck::cast_slice(&vec![value; n]))
}

pub fn region(buffer: &DeviceBuffer) -> DeviceRegion {
    DeviceRegion::of(buffer)
}

/// Registers `work` with criterion, each sample timed by CUDA events.
pub fn criterion_gpu_case(
    c: &mut Criterion,
    gpu: &Gpu,
    name: &str,
    mut work: impl FnMut() -> Result<()>,
) {
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let ms = gpu.time_ms(iters as usize, &mut work).expect("timing");
            gpu_duration(ms, iters)
        })
    });
}

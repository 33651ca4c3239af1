//! Criterion benchmarks of the frame path on the GPU: preprocessing a 1920x1080 RGB frame into
//! both network inputs (GPU time from CUDA events), the pinned upload of that frame, and a whole
//! frame through the graph (wall clock). Skips with a printed reason without a GPU.
//!
//! Floors (H100 SXM, ~3.0 TB/s measured copy bandwidth): preprocessing reads the 6.2 MB frame
//! and writes 2.46 MB (D-FINE) + 6.29 MB (SAM) of fp16, ~15 MB -> ~5 us; the upload is 6.2 MB
//! over PCIe 5 x16 (~50 GB/s achievable) -> ~0.12 ms.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use finesam::{Frame, Gpu, Pipeline, PipelineConfig, PixelFormat, Stage};

fn frame_bytes(width: u32, height: u32) -> Vec<u8> {
    // Non-trivial content (never benchmark on zeros).
    (0..width as usize * height as usize * 3)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn gpu_duration(ms_per_rep: f64, iters: u64) -> Duration {
    Duration::from_secs_f64(ms_per_rep * 1e-3 * iters as f64)
}

fn frame_path(c: &mut Criterion) {
    if let Err(e) = Gpu::probe() {
        eprintln!("skipping preprocess benchmarks: {e}");
        return;
    }
    let (width, height) = (1920, 1080);
    let mut pipeline = Pipeline::new(PipelineConfig {
        max_width: width,
        max_height: height,
        ..PipelineConfig::default()
    })
    .expect("pipeline builds");
    println!("device: {}", pipeline.gpu().name());
    let data = frame_bytes(width, height);
    let frame = Frame::packed(&data, width, height, PixelFormat::Rgb8);
    let staged = pipeline.stage_frame(&frame).expect("frame stages");
    pipeline.upload_staged(staged).expect("frame uploads");

    let mut group = c.benchmark_group("frame_path");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("preprocess_1920x1080_rgb_gpu_time", |b| {
        b.iter_custom(|iters| {
            let ms = pipeline
                .gpu()
                .time_ms(iters as usize, || pipeline.launch_stage(Stage::Preprocess))
                .expect("preprocess launches");
            gpu_duration(ms, iters)
        })
    });
    group.bench_function("upload_1920x1080_rgb_pinned_gpu_time", |b| {
        b.iter_custom(|iters| {
            let ms = pipeline
                .gpu()
                .time_ms(iters as usize, || pipeline.upload_staged(staged))
                .expect("upload");
            gpu_duration(ms, iters)
        })
    });
    group.bench_function("whole_frame_1920x1080_wall_clock", |b| {
        b.iter(|| {
            pipeline.process(&frame).expect("frame runs");
        })
    });
    pipeline
        .staged_frame_mut(width, height, PixelFormat::Rgb8)
        .expect("staging fits")
        .copy_from_slice(&data);
    group.bench_function("whole_frame_1920x1080_written_in_place_wall_clock", |b| {
        b.iter(|| {
            pipeline
                .staged_frame_mut(width, height, PixelFormat::Rgb8)
                .expect("staging fits");
            pipeline.process_staged().expect("frame runs");
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = frame_path
}
criterion_main!(benches);

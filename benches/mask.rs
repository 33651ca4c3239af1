//! Criterion benchmark of mask decoding (low-res logits -> bit-packed frame-resolution masks in
//! the packet) for 8 and 32 masks on a 1920x1080 frame, GPU time from CUDA events. Masks are
//! blobs covering ~15% of the frame each. Skips with a printed reason without a GPU.
//!
//! Floor: reading the logits (256 KiB a mask) is negligible; the work is evaluating two
//! bilinear interpolations (16 low-res taps) per pixel of each crop: ~50 flops x crop pixels.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use finesam::frame::{FrameHeader, FRAME_PIXEL_OFFSET};
use finesam::ops::mask::{
    launch_mask_decode, MaskDecodeIo, MaskDecodeParams, BOUNDS_BYTES_PER_MASK, LOW_RES_MASK_BYTES,
    LOW_RES_SIDE,
};
use finesam::{Frame, Gpu, PacketLayout, PixelFormat};

/// A Gaussian blob of logits centred at (cx, cy) in low-res pixels (inside the 1024x576 extent).
fn blob(cx: f32, cy: f32, radius: f32) -> Vec<f32> {
    (0..LOW_RES_SIDE * LOW_RES_SIDE)
        .map(|i| {
            let (x, y) = ((i % LOW_RES_SIDE) as f32, (i / LOW_RES_SIDE) as f32);
            2.0 * (-((x - cx).powi(2) + (y - cy).powi(2)) / (2.0 * radius * radius)).exp() - 1.0
        })
        .collect()
}

fn mask_decode(c: &mut Criterion) {
    let gpu = match Gpu::new(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("skipping mask benchmarks: {e}");
            return;
        }
    };
    let layout = PacketLayout {
        detection_capacity: 32,
        mask_data_capacity: 16 << 20,
    };
    let upload = gpu.alloc(FRAME_PIXEL_OFFSET).expect("alloc");
    let header = FrameHeader::for_frame(&Frame::packed(&[], 1920, 1080, PixelFormat::Rgb8), 1)
        .expect("valid frame");
    gpu.upload(upload.ptr(), bytemuck::bytes_of(&header))
        .expect("upload");
    let low_res = gpu.alloc(32 * LOW_RES_MASK_BYTES).expect("alloc");
    let logits: Vec<f32> = (0..32)
        .flat_map(|k| blob(30.0 + 6.0 * k as f32, 40.0 + 2.0 * k as f32, 22.0))
        .collect();
    gpu.upload(low_res.ptr(), bytemuck::cast_slice(&logits))
        .expect("upload");
    let (count, bounds, packet, counts) = (
        gpu.alloc(4).expect("alloc"),
        gpu.alloc(32 * BOUNDS_BYTES_PER_MASK).expect("alloc"),
        gpu.alloc(layout.total_bytes()).expect("alloc"),
        gpu.alloc(16).expect("alloc"),
    );
    let io = MaskDecodeIo {
        low_res: low_res.ptr(),
        low_res_bytes: low_res.len(),
        mask_count: count.ptr(),
        upload: upload.ptr(),
        bounds: bounds.ptr(),
        bounds_bytes: bounds.len(),
        packet: packet.ptr(),
        packet_bytes: packet.len(),
        counts: counts.ptr(),
    };
    let mut group = c.benchmark_group("mask_decode");
    for masks in [8u32, 32] {
        gpu.upload(count.ptr(), &masks.to_le_bytes())
            .expect("upload");
        let params = MaskDecodeParams {
            masks_per_detection: 1,
            max_masks: masks,
            threshold: 0.0,
        };
        group.bench_function(format!("{masks}_masks_1920x1080_gpu_time"), |b| {
            b.iter_custom(|iters| {
                let ms = gpu
                    .time_ms(iters as usize, || {
                        gpu.memset(counts.ptr(), 0, 16)?;
                        launch_mask_decode(&gpu, &io, &layout, &params)
                    })
                    .expect("mask decode runs");
                Duration::from_secs_f64(ms * 1e-3 * iters as f64)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = mask_decode
}
criterion_main!(benches);

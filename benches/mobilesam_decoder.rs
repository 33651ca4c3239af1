//! Criterion benchmark of the MobileSAM prompt encoder + mask decoder for 1, 8 and 32 boxes,
//! alone and followed by mask decoding to a 1920x1080 frame (the measure; targets
//! <= 0.3 ms for 8 boxes, <= 0.6 ms for 32; eager PyTorch 6.6 / 11.7 ms on an H200), GPU time
//! of CUDA-graph replays from CUDA events. Uses the fixture weights and the 1920x1080
//! embedding when `$FINESAM_FIXTURES/mobilesam` exists (realistic mask areas), otherwise
//! seeded random weights. `$FINESAM_BENCH_BOXES` (e.g. `8`) benches only those prompt counts.
//! Skips with a printed reason without a GPU.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use finesam::frame::{FrameHeader, FRAME_PIXEL_OFFSET};
use finesam::gpu::Graph;
use finesam::models::mobilesam::decoder::{
    expected_tensors, upload_embedding_nchw, DecodeConfig, DecodePart, MaskDecoder,
};
use finesam::models::mobilesam::prompt::{PromptKind, Prompts};
use finesam::ops::mask::{
    launch_mask_decode, MaskDecodeIo, MaskDecodeParams, BOUNDS_BYTES_PER_MASK,
};
use finesam::ops::DeviceRegion;
use finesam::weights::WeightsFile;
use finesam::{Frame, Gpu, PacketLayout, PixelFormat};
use safetensors::tensor::{Dtype, TensorView};

const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;

/// SplitMix64 normal samples (the bench has no access to the tests' helpers).
fn normals(seed: u64, n: usize, std: f32) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (((z ^ (z >> 31)) >> 11) + 1) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next(), next());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32 * std
        })
        .collect()
}

/// (weights, NCHW embedding): the fixtures', or random ones written to a temporary file.
fn inputs() -> (WeightsFile, Vec<f32>) {
    let dir = std::env::var_os("FINESAM_FIXTURES").map(|d| PathBuf::from(d).join("mobilesam"));
    if let Some(dir) = dir.filter(|d| d.join("weights.safetensors").is_file()) {
        let image = dir.join("astronaut_1920x1080.safetensors");
        if let Ok(bytes) = std::fs::read(&image) {
            let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("fixture");
            let embedding = bytemuck::pod_collect_to_vec(
                tensors.tensor("embedding").expect("embedding").data(),
            );
            let file = WeightsFile::open(dir.join("weights.safetensors")).expect("fixture weights");
            println!("mobilesam decoder bench: fixture weights and embedding");
            return (file, embedding);
        }
    }
    let specs = expected_tensors();
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, (_, shape))| {
            let v = normals(i as u64 + 1, shape.iter().product(), 0.06);
            bytemuck::cast_slice(&v).to_vec()
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = specs
        .iter()
        .zip(&data)
        .map(|((name, shape), d)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), d).expect("view"),
            )
        })
        .collect();
    let path = std::env::temp_dir().join(format!(
        "finesam-bench-decoder-{}.safetensors",
        std::process::id()
    ));
    std::fs::write(
        &path,
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");
    println!("mobilesam decoder bench: random weights (no fixtures)");
    (
        WeightsFile::open(&path).expect("weights"),
        normals(99, 256 * 4096, 1.0),
    )
}

fn decoder(c: &mut Criterion) {
    let gpu = match Gpu::new(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("skipping mobilesam decoder benchmarks: {e}");
            return;
        }
    };
    let (file, nchw) = inputs();
    let decoder = MaskDecoder::load(&gpu, &file).expect("load");
    let embedding = upload_embedding_nchw(&gpu, &nchw).expect("embedding");
    let upload = gpu.alloc(FRAME_PIXEL_OFFSET).expect("alloc");
    let header = FrameHeader::for_frame(&Frame::packed(&[], WIDTH, HEIGHT, PixelFormat::Rgb8), 1)
        .expect("valid frame");
    gpu.upload(upload.ptr(), bytemuck::bytes_of(&header))
        .expect("upload");
    let (emb, hdr) = (DeviceRegion::of(&embedding), DeviceRegion::of(&upload));

    let mut group = c.benchmark_group("mobilesam_decoder");
    for k in box_counts() {
        let plan = decoder
            .plan(
                &gpu,
                DecodeConfig {
                    max_prompts: k,
                    kind: PromptKind::Boxes,
                    multimask: false,
                    mask_input: false,
                },
            )
            .expect("plan");
        // Boxes spread over the frame, 10-40 % of each side.
        let boxes: Vec<[f32; 4]> = (0..k)
            .map(|i| {
                let f = i as f32 / k as f32;
                let (x, y) = (
                    100.0 + 1200.0 * f,
                    80.0 + 600.0 * ((i * 7 % k) as f32 / k as f32),
                );
                [x, y, x + 200.0 + 400.0 * f, y + 150.0 + 250.0 * (1.0 - f)]
            })
            .collect();
        plan.stage_prompts(&gpu, &Prompts::Boxes(&boxes))
            .expect("prompts");
        let layout = PacketLayout {
            detection_capacity: k as u32,
            mask_data_capacity: 32 << 20,
        };
        let bounds = gpu.alloc(k * BOUNDS_BYTES_PER_MASK).expect("alloc");
        let packet = gpu.alloc(layout.total_bytes()).expect("alloc");
        let counts = gpu.alloc(16).expect("alloc");
        gpu.upload(counts.ptr(), bytemuck::cast_slice(&[k as u32, 0, 0, 0]))
            .expect("upload");
        let io = MaskDecodeIo {
            low_res: plan.low_res().ptr,
            low_res_bytes: plan.low_res().bytes,
            mask_count: plan.mask_count().ptr,
            upload: upload.ptr(),
            bounds: bounds.ptr(),
            bounds_bytes: bounds.len(),
            packet: packet.ptr(),
            packet_bytes: packet.len(),
            counts: counts.ptr(),
        };
        let params = MaskDecodeParams {
            masks_per_detection: 1,
            max_masks: k as u32,
            threshold: 0.0,
        };
        let decode_only =
            Graph::capture(&gpu, || decoder.decode(&gpu, &plan, emb, hdr, k)).expect("capture");
        let with_masks = Graph::capture(&gpu, || {
            decoder.decode(&gpu, &plan, emb, hdr, k)?;
            gpu.memset(counts.ptr() + 4, 0, 12)?;
            launch_mask_decode(&gpu, &io, &layout, &params)
        })
        .expect("capture");
        // Per-part GPU time: each launch group alone as a graph (after a full decode, so its
        // inputs are real); the sum is an upper bound of the whole (no overlap between parts).
        graph_time(&gpu, &decode_only);
        let mut line = format!("mobilesam decoder parts, {k} boxes, us:");
        let mut sum = 0.0;
        for part in DecodePart::ALL {
            let graph =
                Graph::capture(&gpu, || decoder.decode_part(&gpu, &plan, emb, hdr, k, part))
                    .expect("capture");
            let us = graph_time(&gpu, &graph) * 1e3;
            sum += us;
            line += &format!(" [{}] {us:.1}", part.name());
        }
        let whole = graph_time(&gpu, &decode_only) * 1e3;
        println!("{line}; sum {sum:.1}, whole decode {whole:.1}");
        for (name, graph) in [
            ("decoder", &decode_only),
            ("decoder_and_masks_1920x1080", &with_masks),
        ] {
            group.bench_function(format!("{name}_{k}_boxes_graph_gpu_time"), |b| {
                b.iter_custom(|iters| {
                    let ms = gpu
                        .time_ms(iters as usize, || graph.replay())
                        .expect("replay");
                    Duration::from_secs_f64(ms * 1e-3 * iters as f64)
                })
            });
        }
        group.bench_function(format!("decoder_{k}_boxes_eager_gpu_time"), |b| {
            b.iter_custom(|iters| {
                let ms = gpu
                    .time_ms(iters as usize, || decoder.decode(&gpu, &plan, emb, hdr, k))
                    .expect("decode");
                Duration::from_secs_f64(ms * 1e-3 * iters as f64)
            })
        });
    }
    group.finish();
}

/// Prompt counts to bench: `$FINESAM_BENCH_BOXES` (comma-separated, e.g. `8` to profile one
/// size with ncu), else 1, 8 and 32.
fn box_counts() -> Vec<usize> {
    std::env::var("FINESAM_BENCH_BOXES")
        .ok()
        .and_then(|v| v.split(',').map(|k| k.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32])
}

/// Mean GPU milliseconds of a graph replay (200 replays after 20 warm-up ones).
fn graph_time(gpu: &Gpu, graph: &Graph) -> f64 {
    gpu.time_ms(20, || graph.replay()).expect("replay");
    gpu.time_ms(200, || graph.replay()).expect("replay")
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = decoder
}
criterion_main!(benches);

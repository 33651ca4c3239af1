//! The MobileSAM image encoder at 1024x1024: GPU time of one graph replay of the whole encoder
//! (CUDA events), then a per-stage table (each stage captured and replayed on its own) with
//! FLOPs and achieved TFLOP/s, and the PyTorch peer's numbers when
//! tests/parity/peer_mobilesam.py has written them ($FINESAM_PEER_MOBILESAM, default
//! /tmp/finesam-peers/peer_mobilesam.json). Target: <= 1.2 ms and faster than torch.compile
//! fp16. Weights: the parity fixture if present, else seeded random ones (same cost). Skips
//! with a printed reason without a GPU.

#[path = "../tests/common/encoder_weights.rs"]
mod encoder_weights;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use encoder_weights::{write_random_encoder_weights, Damage};
use finesam::models::mobilesam::encoder::{EncoderStage, ImageEncoder, INPUT_BYTES};
use finesam::ops::DeviceRegion;
use finesam::weights::WeightsFile;
use finesam::Gpu;
use half::f16;

fn weights_path() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("FINESAM_FIXTURES") {
        let p = std::path::Path::new(&dir).join("mobilesam/weights.safetensors");
        if p.is_file() {
            return p;
        }
    }
    let dir = std::env::temp_dir().join(format!("finesam-bench-enc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join("random.safetensors");
    write_random_encoder_weights(&p, 11, Damage::default());
    p
}

fn peer_rows() -> Vec<(String, f64)> {
    let path = std::env::var("FINESAM_PEER_MOBILESAM")
        .unwrap_or_else(|_| "/tmp/finesam-peers/peer_mobilesam.json".into());
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&text) else {
        return Vec::new();
    };
    map.into_iter()
        .filter_map(|(k, v)| v.as_f64().map(|ms| (k, ms)))
        .collect()
}

fn bench(c: &mut Criterion) {
    if let Err(e) = Gpu::probe() {
        eprintln!("skipping mobilesam_encoder benchmarks: {e}");
        return;
    }
    let gpu = Gpu::new(0).expect("GPU");
    let file = WeightsFile::open(weights_path()).expect("weights");
    let encoder = ImageEncoder::load(&gpu, &file).expect("encoder loads");
    // A non-trivial input (never benchmark on zeros).
    let values: Vec<f16> = (0..INPUT_BYTES / 2)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2654435761) >> 8;
            f16::from_f32(2.0 * ((h % 2001) as f32 / 1000.0 - 1.0))
        })
        .collect();
    let input = gpu.alloc(INPUT_BYTES).expect("alloc");
    gpu.upload(input.ptr(), bytemuck::cast_slice(&values))
        .expect("upload");
    let region = DeviceRegion::of(&input);
    encoder.encode(&gpu, region).expect("eager run");
    let graph = encoder.capture(&gpu, region).expect("capture");
    let stages: Vec<_> = EncoderStage::ALL
        .iter()
        .map(|&s| {
            (
                s,
                encoder
                    .capture_stage(&gpu, region, s)
                    .expect("stage capture"),
            )
        })
        .collect();
    gpu.synchronize().expect("sync");

    let whole = gpu.time_ms(200, || graph.replay()).expect("timing");
    let total_flops: f64 = EncoderStage::ALL.iter().map(|&s| encoder.flops(s)).sum();
    println!(
        "\nMobileSAM image encoder 1024x1024 on {}: {whole:.3} ms per graph replay \
         ({:.1} TFLOP/s over {:.1} GFLOP; arena {:.1} MiB)",
        gpu.name(),
        total_flops / whole * 1e-9,
        total_flops * 1e-9,
        encoder.arena_bytes() as f64 / 1048576.0
    );
    println!(
        "{:<12} {:>9} {:>8} {:>9} {:>9}",
        "stage", "ms", "GFLOP", "TFLOP/s", "launches"
    );
    let mut sum = 0.0;
    for (stage, g) in &stages {
        let ms = gpu.time_ms(200, || g.replay()).expect("timing");
        sum += ms;
        let flops = encoder.flops(*stage);
        println!(
            "{:<12} {ms:>9.4} {:>8.2} {:>9.1} {:>9}",
            stage.name(),
            flops * 1e-9,
            flops / ms * 1e-9,
            encoder.launches(*stage)
        );
    }
    println!("{:<12} {sum:>9.4}  (sum of stage replays)", "stages");
    for (name, ms) in peer_rows() {
        println!(
            "peer {name:<40} {ms:>8.3} ms  (finesam x{:.2} faster)",
            ms / whole
        );
    }

    let mut group = c.benchmark_group("mobilesam_encoder");
    group.sample_size(20);
    group.bench_function("encoder_1024_graph", |b| {
        b.iter_custom(|iters| {
            let ms = gpu
                .time_ms(iters as usize, || graph.replay())
                .expect("timing");
            Duration::from_secs_f64(ms * 1e-3 * iters as f64)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

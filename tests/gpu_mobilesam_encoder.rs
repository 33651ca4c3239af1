//! GPU tests of the MobileSAM image encoder against the official PyTorch `vit_t` (fp32, seeded
//! random weights; fixtures from tests/parity/gen_mobilesam.py): per-stage relative L2 error on
//! every fixture image, graph replay against eager launches, no allocation or copy while
//! encoding, and typed errors for bad weights. Skipped with a printed reason without a GPU or
//! fixtures.

mod common;
#[path = "common/encoder_weights.rs"]
mod encoder_weights;

use common::{fixtures, gpu_available};
use encoder_weights::{write_random_encoder_weights, Damage};
use finesam::gpu::DeviceBuffer;
use finesam::models::mobilesam::encoder::{EncoderStage, ImageEncoder, INPUT_BYTES};
use finesam::ops::gemm::{GemmChoice, GemmTile};
use finesam::ops::DeviceRegion;
use finesam::weights::WeightsFile;
use finesam::{Error, Gpu};
use half::f16;
use safetensors::SafeTensors;

/// Stated bounds on rel L2 (fp16 storage, fp32 accumulation vs the fp32 reference), about 3x
/// the error expected. One fp16 rounding of a tensor adds ~3e-4 relative (unit roundoff 4.9e-4,
/// RMS over uniformly placed values ~0.6 of it); patch_embed stores two (measured 5.7e-4 on the
/// H200). Each later stage stores a few more per block, and GELU, softmax and the residual
/// stream carry them forward roughly in quadrature: ~1e-3 after layers.0, growing to ~1.5e-3
/// by layers.3. The neck's LayerNorms renormalise (the embedding measured 9e-4); its bound is
/// the issue's.
fn bound(stage: EncoderStage) -> f64 {
    match stage {
        EncoderStage::PatchEmbed => 2e-3,
        EncoderStage::Layer0 => 3e-3,
        EncoderStage::Layer1 => 4e-3,
        EncoderStage::Layer2 | EncoderStage::Layer3 => 5e-3,
        // The bound for the image embedding.
        EncoderStage::Neck => 1e-2,
    }
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        // A NaN (unwritten poisoned element) makes the error infinite.
        let d = if g.is_finite() {
            (g - w) as f64
        } else {
            f64::INFINITY
        };
        err += d * d;
        norm += (w as f64) * (w as f64);
    }
    (err / norm.max(1e-30)).sqrt()
}

fn max_abs(got: &[f32], want: &[f32]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs())
        .fold(0.0, f64::max)
}

fn f32_tensor(st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let view = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    let values = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

/// Uploads an f32 NCHW image as fp16 into a fresh device buffer.
fn upload_input(gpu: &Gpu, input: &[f32]) -> DeviceBuffer {
    assert_eq!(
        input.len() * 2,
        INPUT_BYTES,
        "input must be [3, 1024, 1024]"
    );
    let halves: Vec<f16> = input.iter().map(|&v| f16::from_f32(v)).collect();
    let buffer = gpu.alloc(INPUT_BYTES).unwrap();
    gpu.upload(buffer.ptr(), bytemuck::cast_slice(&halves))
        .unwrap();
    buffer
}

/// Fills every stage output with 0xFF (fp16 NaN) so an unwritten output cannot pass.
fn poison_outputs(gpu: &Gpu, encoder: &ImageEncoder) {
    for stage in EncoderStage::ALL {
        let r = encoder.stage_region(stage);
        gpu.memset(r.ptr, 0xff, r.bytes).unwrap();
    }
}

fn image_fixtures(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                && p.file_name().is_some_and(|n| n != "weights.safetensors")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn encoder_matches_official_per_stage() {
    const TEST: &str = "encoder_matches_official_per_stage";
    if !gpu_available(TEST) {
        return;
    }
    let Some(dir) = fixtures(TEST, "mobilesam") else {
        return;
    };
    let gpu = Gpu::new(0).unwrap();
    let file = WeightsFile::open(dir.join("weights.safetensors")).unwrap();
    let encoder = ImageEncoder::load(&gpu, &file).unwrap();
    println!(
        "encoder on {}: arena {:.1} MiB",
        gpu.name(),
        encoder.arena_bytes() as f64 / 1048576.0
    );
    let images = image_fixtures(&dir);
    assert!(!images.is_empty(), "no image fixtures in {}", dir.display());
    println!(
        "{:<28} {:<12} {:>10} {:>10} {:>8}",
        "image", "stage", "rel L2", "max abs", "bound"
    );
    let mut failures = Vec::new();
    for path in images {
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let image = path.file_stem().unwrap().to_string_lossy().to_string();
        let (shape, input) = f32_tensor(&st, "input");
        assert_eq!(shape, [3, 1024, 1024], "{image}: input shape");
        let input = upload_input(&gpu, &input);
        poison_outputs(&gpu, &encoder);
        encoder.encode(&gpu, DeviceRegion::of(&input)).unwrap();
        for stage in EncoderStage::ALL {
            let key = match stage {
                EncoderStage::Neck => "embedding".to_string(),
                _ => format!("stage.{}", stage.name()),
            };
            let (shape, want) = f32_tensor(&st, &key);
            assert_eq!(shape, stage.official_shape(), "{image}: {key} shape");
            let got = encoder.read_stage(&gpu, stage).unwrap();
            let (rel, abs) = (rel_l2(&got, &want), max_abs(&got, &want));
            let ok = rel <= bound(stage);
            println!(
                "{image:<28} {:<12} {rel:>10.2e} {abs:>10.2e} {:>8.0e}{}",
                stage.name(),
                bound(stage),
                if ok { "" } else { "  FAIL" }
            );
            if !ok {
                failures.push(format!("{image} {}: {rel:.3e}", stage.name()));
            }
        }
    }
    assert!(failures.is_empty(), "over the bound: {failures:?}");
}

#[test]
fn graph_replay_equals_eager_without_allocations_or_copies() {
    const TEST: &str = "graph_replay_equals_eager_without_allocations_or_copies";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    // Fixture weights when present, else seeded random ones (the check is self-consistency).
    let path = match std::env::var_os("FINESAM_FIXTURES") {
        Some(d)
            if std::path::Path::new(&d)
                .join("mobilesam/weights.safetensors")
                .is_file() =>
        {
            std::path::Path::new(&d).join("mobilesam/weights.safetensors")
        }
        _ => {
            let dir = std::env::temp_dir().join(format!("finesam-enc-gpu-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join("random.safetensors");
            write_random_encoder_weights(&p, 3, Damage::default());
            p
        }
    };
    let encoder = ImageEncoder::load(&gpu, &WeightsFile::open(&path).unwrap()).unwrap();
    let mut rng = common::Rng::new(0xe4c0);
    let input: Vec<f32> = (0..3 * 1024 * 1024)
        .map(|_| 1.5 * rng.normal() as f32)
        .collect();
    let input = upload_input(&gpu, &input);
    let region = DeviceRegion::of(&input);

    poison_outputs(&gpu, &encoder);
    let before = gpu.counters();
    encoder.encode(&gpu, region).unwrap();
    gpu.synchronize().unwrap();
    let eager_cost = gpu.counters().since(&before);
    let eager: Vec<Vec<f32>> = EncoderStage::ALL
        .iter()
        .map(|&s| encoder.read_stage(&gpu, s).unwrap())
        .collect();
    assert!(
        eager.iter().all(|v| v.iter().all(|x| x.is_finite())),
        "eager run left non-finite values"
    );

    let graph = encoder.capture(&gpu, region).unwrap();
    poison_outputs(&gpu, &encoder);
    gpu.synchronize().unwrap();
    let before = gpu.counters();
    for _ in 0..3 {
        graph.replay().unwrap();
    }
    gpu.synchronize().unwrap();
    let replay_cost = gpu.counters().since(&before);
    for (stage, want) in EncoderStage::ALL.iter().zip(&eager) {
        let got = encoder.read_stage(&gpu, *stage).unwrap();
        let same = got
            .iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{}: graph replay differs from eager", stage.name());
    }
    println!("eager encode: {eager_cost:?}\n3 graph replays: {replay_cost:?}");
    for cost in [eager_cost, replay_cost] {
        assert_eq!(cost.device_allocations, 0, "encode allocated");
        assert_eq!(cost.uploads + cost.downloads, 0, "encode copied");
    }
    // A too-small input is a launch error, not a fault.
    let err = encoder
        .encode(&gpu, DeviceRegion::new(input.ptr(), INPUT_BYTES - 2))
        .unwrap_err();
    assert!(matches!(err, Error::Launch { .. }), "{err:?}");
}

#[test]
fn every_gemm_tile_gives_the_same_embedding() {
    const TEST: &str = "every_gemm_tile_gives_the_same_embedding";
    if !gpu_available(TEST) {
        return;
    }
    // The encoder's GEMMs are tuned at load; that is only sound because every tile gives the
    // same bits. Check it through the whole encoder: each tile forced on every GEMM (qkv, proj,
    // layers.3's MLP, the PatchMergings' and the neck's 1x1s). The fused MLPs of layers.1-2
    // are fixed kernels, not tuned; they equal the two-GEMM chain bit for bit on every tile
    // (tests/gpu_tinyvit_ops.rs `fused_mlp_is_bitwise_the_two_gemm_chain`).
    let gpu = Gpu::new(0).unwrap();
    let dir = std::env::temp_dir().join(format!("finesam-enc-tiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("random.safetensors");
    write_random_encoder_weights(&path, 5, Damage::default());
    let encoder = ImageEncoder::load(&gpu, &WeightsFile::open(&path).unwrap()).unwrap();
    let mut rng = common::Rng::new(0xe4c1);
    let input: Vec<f32> = (0..3 * 1024 * 1024)
        .map(|_| 1.5 * rng.normal() as f32)
        .collect();
    let input = upload_input(&gpu, &input);
    let embedding_bits = || -> Vec<u32> {
        encoder.encode(&gpu, DeviceRegion::of(&input)).unwrap();
        let out = encoder.read_stage(&gpu, EncoderStage::Neck).unwrap();
        out.iter().map(|v| v.to_bits()).collect()
    };
    let tuned = embedding_bits();
    let mut failures = Vec::new();
    for tile in GemmTile::ALL {
        gpu.gemm_tuner().force(Some(GemmChoice { tile, splits: 1 }));
        let forced = embedding_bits();
        gpu.gemm_tuner().force(None);
        let differing = forced.iter().zip(&tuned).filter(|(a, b)| a != b).count();
        println!(
            "every GEMM on {tile:?}: {differing} of {} values differ",
            tuned.len()
        );
        if differing != 0 {
            failures.push(tile);
        }
    }
    assert!(
        failures.is_empty(),
        "embedding bits changed with {failures:?}"
    );
}

#[test]
fn bad_weights_are_typed_errors() {
    const TEST: &str = "bad_weights_are_typed_errors";
    if !gpu_available(TEST) {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let dir = std::env::temp_dir().join(format!("finesam-enc-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = "image_encoder.neck.1.weight";
    let path = dir.join("missing.safetensors");
    let damage = Damage {
        drop: Some(missing),
        ..Damage::default()
    };
    write_random_encoder_weights(&path, 5, damage);
    let before = gpu.counters();
    let err = ImageEncoder::load(&gpu, &WeightsFile::open(&path).unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == missing),
        "{err:?}"
    );
    // Validation happens before anything is uploaded.
    assert_eq!(gpu.counters().since(&before).device_allocations, 0);

    let misshapen = "image_encoder.layers.0.blocks.0.conv1.bn.running_var";
    let path = dir.join("misshapen.safetensors");
    let damage = Damage {
        reshape: Some(misshapen),
        ..Damage::default()
    };
    write_random_encoder_weights(&path, 5, damage);
    let err = ImageEncoder::load(&gpu, &WeightsFile::open(&path).unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::TensorShape { name, .. } if name == misshapen),
        "{err:?}"
    );
    println!("{err}");
}

//! GPU tests of the frame pipeline: preprocessing against the f64 CPU reference on fresh random
//! frames and against PyTorch on real images, graph replay against eager launches, the copy and
//! allocation promises, and bad frames. Skipped with a printed reason where there is no GPU.

mod common;

use common::{fixture_f32, fixture_format, fixtures, gpu_available, Rng};
use finesam::frame::{sam_extent, SAM_INPUT_SIZE};
use finesam::{reference, Error, Frame, Pipeline, PipelineConfig, PixelFormat};
use half::f16;
use safetensors::SafeTensors;

/// D-FINE input (0..1): fp16 rounding (<= 2.5e-4 below 1.0) plus f32 accumulation.
const DFINE_TOL_VS_CPU: f64 = 5e-4;
/// SAM input (about -2.1..2.7): fp16 rounding (<= 1e-3 at |x| < 4) plus f32 accumulation.
const SAM_TOL_VS_CPU: f64 = 2e-3;
/// Against PyTorch on real images: the bounds.
const DFINE_TOL_VS_TORCH: f64 = 2e-3;
const SAM_TOL_VS_TORCH: f64 = 1e-2;

fn pipeline(max_width: u32, max_height: u32) -> Pipeline {
    Pipeline::new(PipelineConfig {
        max_width,
        max_height,
        ..PipelineConfig::default()
    })
    .expect("pipeline builds on the GPU")
}

/// Both network inputs of the last frame, read back from the device.
fn read_inputs(pipeline: &Pipeline) -> (Vec<f16>, Vec<f16>) {
    (
        pipeline.read_dfine_input().unwrap(),
        pipeline.read_sam_input().unwrap(),
    )
}

/// Bitwise equality of two input pairs (NaN-safe, unlike `==` on f16).
fn assert_same_inputs(a: &(Vec<f16>, Vec<f16>), b: &(Vec<f16>, Vec<f16>), what: &str) {
    let same = |x: &[f16], y: &[f16]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
    assert!(same(&a.0, &b.0), "{what}: D-FINE inputs differ");
    assert!(same(&a.1, &b.1), "{what}: SAM inputs differ");
}

/// Max |gpu - reference| over all elements; NaN (an unwritten, poisoned element) counts as inf.
fn max_abs_error(gpu: &[f16], reference: impl Iterator<Item = f64>) -> f64 {
    gpu.iter().zip(reference).fold(0.0f64, |worst, (g, r)| {
        let g = g.to_f64();
        let err = if g.is_finite() {
            (g - r).abs()
        } else {
            f64::INFINITY
        };
        worst.max(err)
    })
}

/// Runs one frame (inputs poisoned with NaN first) and returns the errors of both inputs.
fn run_against(
    pipeline: &mut Pipeline,
    frame: &Frame<'_>,
    dfine: &[f64],
    sam: &[f64],
) -> (f64, f64) {
    pipeline.poison_inputs(0xff).unwrap();
    pipeline.process(frame).unwrap();
    let (dfine_gpu, sam_gpu) = read_inputs(pipeline);
    (
        max_abs_error(&dfine_gpu, dfine.iter().copied()),
        max_abs_error(&sam_gpu, sam.iter().copied()),
    )
}

#[test]
fn preprocess_matches_cpu_reference_on_random_frames() {
    if !gpu_available("preprocess_matches_cpu_reference_on_random_frames") {
        return;
    }
    let mut pipeline = pipeline(3840, 2160);
    let mut rng = Rng::new(0x5eed);
    let cases = [
        (1920, 1080, PixelFormat::Rgb8, 0),
        (1037, 771, PixelFormat::Bgr8, 13),
        (333, 1999, PixelFormat::Rgba8, 4),
        (17, 9, PixelFormat::Gray8, 3),
        (640, 640, PixelFormat::Rgb8, 0),
        (1024, 1024, PixelFormat::Rgb8, 0),
        (3840, 2160, PixelFormat::Gray8, 1),
        (4, 2000, PixelFormat::Rgb8, 0),
    ];
    for (width, height, format, pad) in cases {
        let stride = width as usize * format.bytes_per_pixel() + pad;
        let data = rng.bytes(stride * height as usize);
        let frame = Frame {
            data: &data,
            width,
            height,
            row_stride: stride,
            format,
        };
        let dfine = reference::dfine_input(&frame);
        let sam = reference::sam_input(&frame).unwrap();
        let (dfine_err, sam_err) = run_against(&mut pipeline, &frame, &dfine, &sam);
        println!(
            "random {width}x{height} {format:?} stride {stride}: max abs error D-FINE {dfine_err:.2e}, SAM {sam_err:.2e}"
        );
        assert!(
            dfine_err <= DFINE_TOL_VS_CPU,
            "D-FINE input error {dfine_err}"
        );
        assert!(sam_err <= SAM_TOL_VS_CPU, "SAM input error {sam_err}");
    }
}

#[test]
fn preprocess_matches_pytorch_on_real_images() {
    if !gpu_available("preprocess_matches_pytorch_on_real_images") {
        return;
    }
    let Some(dir) = fixtures("preprocess_matches_pytorch_on_real_images", "preprocess") else {
        return;
    };
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 16,
        "expected the 16 generated cases, found {}",
        paths.len()
    );
    let mut pipeline = pipeline(3840, 2160);
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = metadata.metadata().clone().unwrap_or_default();
        let format = fixture_format(&meta["format"]);
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let frame_view = tensors.tensor("frame").unwrap();
        let shape = frame_view.shape();
        let (height, width) = (shape[0] as u32, shape[1] as u32);
        let frame = Frame::packed(frame_view.data(), width, height, format);
        let dfine: Vec<f64> = fixture_f32(&tensors, "dfine_input")
            .into_iter()
            .map(f64::from)
            .collect();
        let sam: Vec<f64> = fixture_f32(&tensors, "sam_input")
            .into_iter()
            .map(f64::from)
            .collect();
        assert_eq!(sam.len(), 3 * (SAM_INPUT_SIZE * SAM_INPUT_SIZE) as usize);
        let (dfine_err, sam_err) = run_against(&mut pipeline, &frame, &dfine, &sam);
        let name = path.file_name().unwrap().to_string_lossy();
        println!(
            "torch parity {name}: {width}x{height} {format:?} SAM extent {:?}: max abs error D-FINE {dfine_err:.2e} (<= {DFINE_TOL_VS_TORCH:.0e}), SAM {sam_err:.2e} (<= {SAM_TOL_VS_TORCH:.0e})",
            sam_extent(width, height).unwrap()
        );
        assert!(
            dfine_err <= DFINE_TOL_VS_TORCH,
            "{name}: D-FINE input error {dfine_err}"
        );
        assert!(
            sam_err <= SAM_TOL_VS_TORCH,
            "{name}: SAM input error {sam_err}"
        );
    }
}

#[test]
fn graph_replay_equals_eager_launches() {
    if !gpu_available("graph_replay_equals_eager_launches") {
        return;
    }
    let mut pipeline = pipeline(1920, 1080);
    let data = Rng::new(3).bytes(1280 * 720 * 3);
    let frame = Frame::packed(&data, 1280, 720, PixelFormat::Rgb8);
    pipeline.poison_inputs(0xff).unwrap();
    let graph_packet = pipeline.process(&frame).unwrap().as_bytes().to_vec();
    let graph = read_inputs(&pipeline);
    pipeline.poison_inputs(0xff).unwrap();
    let eager_packet = pipeline.process_eager(&frame).unwrap().as_bytes().to_vec();
    let eager = read_inputs(&pipeline);
    assert_same_inputs(&graph, &eager, "graph vs eager");
    // The packets differ only in the sequence number.
    assert_eq!(graph_packet.len(), eager_packet.len());
    let differing: Vec<usize> = (0..graph_packet.len())
        .filter(|&i| graph_packet[i] != eager_packet[i])
        .collect();
    assert!(
        differing.iter().all(|&i| (12..16).contains(&i)),
        "{differing:?}"
    );
}

#[test]
fn frame_written_in_place_equals_copied_frame() {
    if !gpu_available("frame_written_in_place_equals_copied_frame") {
        return;
    }
    let mut pipeline = pipeline(1920, 1080);
    let data = Rng::new(9).bytes(1037 * 771 * 3);
    pipeline
        .process(&Frame::packed(&data, 1037, 771, PixelFormat::Bgr8))
        .unwrap();
    let copied = read_inputs(&pipeline);
    pipeline.poison_inputs(0xff).unwrap();
    pipeline
        .staged_frame_mut(1037, 771, PixelFormat::Bgr8)
        .unwrap()
        .copy_from_slice(&data);
    let before = pipeline.gpu().counters();
    let packet = pipeline.process_staged().unwrap();
    assert_eq!(
        (packet.header().frame_width, packet.header().sam_height),
        (1037, 761)
    );
    let cost = pipeline.gpu().counters().since(&before);
    assert_eq!(
        (cost.uploads, cost.downloads, cost.device_allocations),
        (1, 1, 0)
    );
    let staged = read_inputs(&pipeline);
    assert_same_inputs(&copied, &staged, "copied vs written in place");
    assert!(matches!(pipeline.process_staged(), Err(Error::Frame(_))));
    assert!(matches!(
        pipeline.staged_frame_mut(1921, 10, PixelFormat::Rgb8),
        Err(Error::Frame(_))
    ));
}

#[test]
fn one_upload_one_download_and_no_allocation_after_warm_up() {
    if !gpu_available("one_upload_one_download_and_no_allocation_after_warm_up") {
        return;
    }
    let mut pipeline = pipeline(3840, 2160);
    let mut rng = Rng::new(11);
    let warm = rng.bytes(1920 * 1080 * 3);
    pipeline
        .process(&Frame::packed(&warm, 1920, 1080, PixelFormat::Rgb8))
        .unwrap();
    let start = pipeline.gpu().counters();
    let (free_before, _) = pipeline.gpu().memory_info().unwrap();
    let formats = [
        PixelFormat::Gray8,
        PixelFormat::Rgb8,
        PixelFormat::Bgr8,
        PixelFormat::Rgba8,
    ];
    for i in 0..24u32 {
        let (width, height) = (rng.range(1, 3841), rng.range(1, 2161));
        let format = formats[i as usize % 4];
        // Keep extreme aspect ratios out: their SAM extent is empty and they are rejected.
        if sam_extent(width, height).is_err() {
            continue;
        }
        let data = rng.bytes(width as usize * height as usize * format.bytes_per_pixel());
        let before = pipeline.gpu().counters();
        let packet = pipeline
            .process(&Frame::packed(&data, width, height, format))
            .unwrap();
        assert_eq!(
            (packet.header().frame_width, packet.header().frame_height),
            (width, height)
        );
        let cost = pipeline.gpu().counters().since(&before);
        assert_eq!(cost.uploads, 1, "frame {i}: {cost:?}");
        assert_eq!(cost.downloads, 1, "frame {i}: {cost:?}");
        assert_eq!(cost.device_allocations, 0, "frame {i}: {cost:?}");
        assert_eq!(
            cost.download_bytes as usize,
            pipeline.config().packet.total_bytes()
        );
    }
    let total = pipeline.gpu().counters().since(&start);
    let (free_after, _) = pipeline.gpu().memory_info().unwrap();
    assert_eq!(total.device_allocations, 0);
    assert_eq!(
        free_before, free_after,
        "device memory changed after warm-up"
    );
    println!(
        "frames after warm-up: {} uploads, {} downloads, 0 allocations; arena {} bytes",
        total.uploads,
        total.downloads,
        pipeline.arena_bytes()
    );
}

#[test]
fn packet_echoes_each_frame() {
    if !gpu_available("packet_echoes_each_frame") {
        return;
    }
    let mut pipeline = pipeline(2000, 2000);
    let data = Rng::new(5).bytes(1037 * 771 * 4);
    for sequence in 1..=3u32 {
        let packet = pipeline
            .process(&Frame::packed(&data, 1037, 771, PixelFormat::Rgba8))
            .unwrap();
        let h = packet.header();
        assert_eq!(h.sequence, sequence);
        assert_eq!(
            (h.frame_width, h.frame_height, h.frame_format),
            (1037, 771, 3)
        );
        assert_eq!((h.sam_width, h.sam_height), (1024, 761));
        assert_eq!((h.detection_count, h.mask_count, h.flags), (0, 0, 0));
        assert_eq!(h.detection_capacity, 300);
    }
}

#[test]
fn bad_frames_are_errors_and_the_pipeline_survives() {
    if !gpu_available("bad_frames_are_errors_and_the_pipeline_survives") {
        return;
    }
    let mut pipeline = pipeline(1000, 1000);
    let data = vec![7u8; 1001 * 10 * 3];
    let bad = [
        Frame::packed(&data, 0, 10, PixelFormat::Rgb8),
        Frame::packed(&data, 1001, 10, PixelFormat::Rgb8),
        Frame::packed(&data, 500, 500, PixelFormat::Rgb8),
        Frame {
            row_stride: 5,
            ..Frame::packed(&data, 100, 10, PixelFormat::Rgb8)
        },
    ];
    for frame in bad {
        let err = pipeline.process(&frame).unwrap_err();
        assert!(matches!(err, Error::Frame(_)), "{err:?}");
    }
    let packet = pipeline
        .process(&Frame::packed(&data, 100, 10, PixelFormat::Rgb8))
        .unwrap();
    assert_eq!(packet.header().frame_width, 100);
}

//! GPU tests of the MobileSAM prompt encoder + mask decoder against the official PyTorch code
//! (fixtures from tests/parity/gen_mobilesam.py): low-res logits (rel L2 <= 2e-2), IoU
//! predictions (abs <= 1e-2), and the final frame-resolution masks after mask decoding into a
//! packet; prompt sets with mask inputs (`boxes8_mask`) and boxes with points
//! (`boxpoints4_multi`) included. Also the fused `mask_downscaling` kernel against an f64
//! reference, graph replay == eager, no allocation per decode, typed prompt errors (these use
//! synthetic weights, so they run without fixtures). Skipped without a GPU.

mod common;
#[path = "common/dense.rs"]
mod dense;

use common::weights::{spec, temp_dir, write};
use common::{fixtures, gpu_available};
use finesam::frame::{sam_extent, FrameHeader, FRAME_PIXEL_OFFSET};
use finesam::gpu::{DeviceBuffer, Graph};
use finesam::models::mobilesam::decoder::{
    expected_tensors, upload_embedding_nchw, DecodeConfig, DecodePlan, MaskDecoder,
};
use finesam::models::mobilesam::prompt::{PromptKind, Prompts};
use finesam::ops::gemm::{GemmChoice, GemmTile};
use finesam::ops::mask::{
    launch_mask_decode, MaskDecodeIo, MaskDecodeParams, BOUNDS_BYTES_PER_MASK,
};
use finesam::ops::packet::launch_assemble_packet_header;
use finesam::ops::sam_decoder::{launch_mask_embed, mask_params, MaskEmbedArgs, MASK_INPUT_PIXELS};
use finesam::ops::DeviceRegion;
use finesam::weights::WeightsFile;
use finesam::{reference, Error, Frame, Gpu, PacketLayout, PixelFormat, ResultPacket};
use safetensors::SafeTensors;

const LOGIT_REL_L2: f64 = 2e-2;
const IOU_ABS: f64 = 1e-2;
const MASK_IOU: f64 = 0.98;
const LOW: usize = 256 * 256;

fn f32s(tensors: &SafeTensors<'_>, name: &str) -> Option<Vec<f32>> {
    tensors
        .tensor(name)
        .ok()
        .map(|t| bytemuck::pod_collect_to_vec(t.data()))
}

/// The frame header of a `width x height` frame, uploaded (mask decoding and the prompt
/// encoder read it; pixels are not needed).
fn header(gpu: &Gpu, width: u32, height: u32) -> DeviceBuffer {
    let h =
        FrameHeader::for_frame(&Frame::packed(&[], width, height, PixelFormat::Rgb8), 1).unwrap();
    let buffer = gpu.alloc(FRAME_PIXEL_OFFSET).unwrap();
    gpu.upload(buffer.ptr(), bytemuck::bytes_of(&h)).unwrap();
    buffer
}

/// One eager decode of `batch` prompts; its low-res logits and IoU predictions.
fn decode_and_read(
    gpu: &Gpu,
    decoder: &MaskDecoder,
    plan: &DecodePlan,
    embedding: &DeviceBuffer,
    header: &DeviceBuffer,
    batch: usize,
) -> (Vec<f32>, Vec<f32>) {
    decoder
        .decode(
            gpu,
            plan,
            DeviceRegion::of(embedding),
            DeviceRegion::of(header),
            batch,
        )
        .unwrap();
    plan.read_outputs(gpu, batch).unwrap()
}

fn rel_l2(ours: &[f32], reference: &[f32]) -> (f64, f64) {
    let (mut num, mut den, mut max) = (0f64, 0f64, 0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        let d = a as f64 - b as f64;
        num += d * d;
        den += (b as f64) * (b as f64);
        max = max.max(d.abs());
    }
    ((num / den.max(1e-30)).sqrt(), max)
}

/// Decodes `low` (the plan's outputs) into a packet and returns it.
fn decode_masks(
    gpu: &Gpu,
    plan: &DecodePlan,
    frame_header: &DeviceBuffer,
    prompts: usize,
) -> Vec<u8> {
    let c = plan.masks_per_prompt();
    let masks = prompts * c;
    let layout = PacketLayout {
        detection_capacity: masks as u32,
        mask_data_capacity: 64 << 20,
    };
    let bounds = gpu.alloc(masks * BOUNDS_BYTES_PER_MASK).unwrap();
    let packet = gpu.alloc(layout.total_bytes()).unwrap();
    let counts = gpu.alloc(16).unwrap();
    gpu.upload(
        counts.ptr(),
        bytemuck::cast_slice(&[prompts as u32, 0, 0, 0]),
    )
    .unwrap();
    gpu.memset(packet.ptr(), 0xAB, layout.total_bytes())
        .unwrap();
    launch_mask_decode(
        gpu,
        &MaskDecodeIo {
            low_res: plan.low_res().ptr,
            low_res_bytes: plan.low_res().bytes,
            mask_count: plan.mask_count().ptr,
            upload: frame_header.ptr(),
            bounds: bounds.ptr(),
            bounds_bytes: bounds.len(),
            packet: packet.ptr(),
            packet_bytes: packet.len(),
            counts: counts.ptr(),
        },
        &layout,
        &MaskDecodeParams {
            masks_per_detection: c as u32,
            max_masks: masks as u32,
            threshold: 0.0,
        },
    )
    .unwrap();
    launch_assemble_packet_header(
        gpu,
        frame_header.ptr(),
        Some(counts.ptr()),
        packet.ptr(),
        packet.len(),
        &layout,
    )
    .unwrap();
    let mut bytes = vec![0u8; layout.total_bytes()];
    gpu.download(&mut bytes, packet.ptr()).unwrap();
    gpu.synchronize().unwrap();
    bytes
}

#[test]
fn decoder_matches_pytorch() {
    if !gpu_available("decoder_matches_pytorch") {
        return;
    }
    let Some(dir) = fixtures("decoder_matches_pytorch", "mobilesam") else {
        return;
    };
    let gpu = Gpu::new(0).unwrap();
    let file = WeightsFile::open(dir.join("weights.safetensors")).unwrap();
    let decoder = MaskDecoder::load(&gpu, &file).unwrap();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "weights.safetensors"))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no image fixtures in {}", dir.display());
    println!(
        "{:<22} {:<14} {:>3} {:>3} {:>9} {:>8} {:>8} {:>7} {:>9} {:>8} {:>7} {:>5} {:>6} {:>6}",
        "image",
        "prompts",
        "K",
        "C",
        "rel L2",
        "max abs",
        "iou err",
        "flips",
        "worst|l|",
        "bound",
        "min IoU",
        "mask",
        "area%",
        "near%"
    );
    let mut failures = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let image = path.file_stem().unwrap().to_string_lossy().to_string();
        let shape = tensors.tensor("frame").unwrap().shape().to_vec();
        let (height, width) = (shape[0] as u32, shape[1] as u32);
        let extent = sam_extent(width, height).unwrap();
        let embedding = upload_embedding_nchw(&gpu, &f32s(&tensors, "embedding").unwrap()).unwrap();
        let frame_header = header(&gpu, width, height);
        for (set, multimask) in [
            ("boxes1", false),
            ("boxes8", false),
            ("boxes32", false),
            ("boxes8_multi", true),
            ("points3_multi", true),
            ("boxes8_mask", false),
            ("boxpoints4_multi", true),
        ] {
            let Some(reference_low) = f32s(&tensors, &format!("{set}.low_res_logits")) else {
                continue;
            };
            let reference_iou = f32s(&tensors, &format!("{set}.iou")).unwrap();
            let boxes: Vec<[f32; 4]> = f32s(&tensors, &format!("{set}.boxes"))
                .unwrap_or_default()
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect();
            let points: Vec<[f32; 2]> = f32s(&tensors, &format!("{set}.points"))
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|c| [c[0], c[1]])
                .collect();
            let labels = f32s(&tensors, &format!("{set}.point_labels")).unwrap_or_default();
            let prompts = match (boxes.is_empty(), points.is_empty()) {
                (false, true) => Prompts::Boxes(&boxes),
                // predict_torch got one prompt of all points.
                (true, false) => Prompts::Points {
                    coords: &points,
                    labels: &labels,
                    per_prompt: points.len(),
                },
                // [K, P, 2] points with [K, 4] boxes: each box prompt carries its P points.
                (false, false) => Prompts::BoxesWithPoints {
                    boxes: &boxes,
                    coords: &points,
                    labels: &labels,
                    per_prompt: points.len() / boxes.len(),
                },
                (true, true) => panic!("{image}/{set}: fixture has neither boxes nor points"),
            };
            // [K, 1, 256, 256] low-res logits of an earlier prediction (boxes8's own).
            let mask_input = f32s(&tensors, &format!("{set}.mask_input"));
            let k = prompts.count();
            let plan = decoder
                .plan(
                    &gpu,
                    DecodeConfig {
                        max_prompts: k,
                        kind: prompts.kind(),
                        multimask,
                        mask_input: mask_input.is_some(),
                    },
                )
                .unwrap();
            let c = plan.masks_per_prompt();
            assert_eq!(
                reference_low.len(),
                k * c * LOW,
                "{image}/{set}: fixture shape"
            );
            gpu.memset(plan.low_res().ptr, 0xFF, plan.low_res().bytes)
                .unwrap(); // poison
            plan.stage_prompts(&gpu, &prompts).unwrap();
            if let Some(masks) = &mask_input {
                assert_eq!(
                    plan.stage_mask_input(&gpu, masks).unwrap(),
                    k,
                    "{image}/{set}"
                );
            }
            let (low, iou) = decode_and_read(&gpu, &decoder, &plan, &embedding, &frame_header, k);
            let (rel, max_abs) = rel_l2(&low, &reference_low);
            let iou_err = iou
                .iter()
                .zip(&reference_iou)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .fold(0f64, f64::max);

            // Final masks: our logits through mask decoding vs the reference logits through
            // the f64 postprocess.
            let packet_bytes = decode_masks(&gpu, &plan, &frame_header, k);
            let packet = ResultPacket::parse(&packet_bytes).unwrap();
            assert_eq!(packet.header().mask_count as usize, k * c, "{image}/{set}");
            let bound = 3.0 * max_abs + 1e-4;
            let (mut flips, mut worst, mut min_iou) = (0u64, 0f64, 1f64);
            // The mask with the lowest IoU (of those counted): index, area (% of the frame) and
            // near-threshold pixels (|reference logit| <= bound, anywhere in the frame) per 100
            // pixels of its area. Every counted mask below MASK_IOU is also listed.
            let (mut worst_mask, mut worst_area, mut worst_near) = (0usize, 0f64, 0f64);
            let min_area = (width as u64 * height as u64) / 100;
            let mut below = Vec::new();
            for (m, mask) in packet.masks().enumerate() {
                let logits = &reference_low[m * LOW..(m + 1) * LOW];
                let (mut inter, mut union, mut area, mut near) = (0u64, 0u64, 0u64, 0u64);
                for y in 0..height {
                    for x in 0..width {
                        let l = reference::mask_logit(
                            logits,
                            (width as usize, height as usize),
                            (extent.0 as usize, extent.1 as usize),
                            (x as usize, y as usize),
                        );
                        let (want, got) = (l > 0.0, mask.contains(x, y));
                        area += want as u64;
                        near += (l.abs() <= bound) as u64;
                        inter += (want && got) as u64;
                        union += (want || got) as u64;
                        if want != got {
                            flips += 1;
                            worst = worst.max(l.abs());
                        }
                    }
                }
                let iou = inter as f64 / union.max(1) as f64;
                let area_pct = 100.0 * area as f64 / (width as f64 * height as f64);
                let near_pct = 100.0 * near as f64 / area.max(1) as f64;
                if area >= min_area && iou < MASK_IOU {
                    below.push(format!(
                        "mask {m}: IoU {iou:.4}, area {area_pct:.1} %, near-threshold {near_pct:.1} %"
                    ));
                }
                if area >= min_area && iou < min_iou {
                    min_iou = iou;
                    worst_mask = m;
                    worst_area = area_pct;
                    worst_near = near_pct;
                }
            }
            println!(
                "{image:<22} {set:<14} {k:>3} {c:>3} {rel:>9.2e} {max_abs:>8.3} {iou_err:>8.1e} {flips:>7} {worst:>9.2e} {bound:>8.3} {min_iou:>7.4} {worst_mask:>5} {:>6.1} {:>6.1}",
                worst_area,
                worst_near
            );
            for line in &below {
                println!("    {line}");
            }
            if rel > LOGIT_REL_L2 || iou_err > IOU_ABS || worst > bound || min_iou < MASK_IOU {
                failures.push(format!("{image}/{set}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "out of tolerance (rel L2 <= {LOGIT_REL_L2}, IoU abs <= {IOU_ABS}, flips within 3x the \
         low-res error, mask IoU >= {MASK_IOU}): {failures:?}"
    );
}

/// A full decoder state dict with small deterministic values (shapes from the official names).
fn synthetic_weights(test: &str) -> WeightsFile {
    let specs: Vec<_> = expected_tensors()
        .iter()
        .map(|(name, shape)| spec(name, shape))
        .collect();
    let path = write(&temp_dir(test), "decoder.safetensors", &specs);
    WeightsFile::open(path).unwrap()
}

#[test]
fn graph_replay_equals_eager_without_allocation() {
    if !gpu_available("graph_replay_equals_eager_without_allocation") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let file = synthetic_weights("decoder_graph");
    let decoder = MaskDecoder::load(&gpu, &file).unwrap();
    let mut rng = common::Rng::new(42);
    let nchw: Vec<f32> = (0..256 * 4096).map(|_| rng.normal() as f32).collect();
    let embedding = upload_embedding_nchw(&gpu, &nchw).unwrap();
    let frame_header = header(&gpu, 1920, 1080);
    let masks: Vec<f32> = (0..5 * MASK_INPUT_PIXELS)
        .map(|_| 4.0 * rng.normal() as f32)
        .collect();
    for (multimask, mask_input) in [(false, false), (true, false), (false, true)] {
        let plan = decoder
            .plan(
                &gpu,
                DecodeConfig {
                    max_prompts: 8,
                    kind: PromptKind::Boxes,
                    multimask,
                    mask_input,
                },
            )
            .unwrap();
        let boxes: Vec<[f32; 4]> = (0..5)
            .map(|i| {
                let x = 100.0 + 150.0 * i as f32;
                [x, 200.0, x + 300.0, 700.0]
            })
            .collect();
        plan.stage_prompts(&gpu, &Prompts::Boxes(&boxes)).unwrap();
        if mask_input {
            plan.stage_mask_input(&gpu, &masks).unwrap();
        }
        let (emb, hdr) = (
            DeviceRegion::of(&embedding),
            DeviceRegion::of(&frame_header),
        );
        decoder.decode(&gpu, &plan, emb, hdr, 8).unwrap();
        let (eager, eager_iou) = plan.read_outputs(&gpu, 5).unwrap();
        assert!(eager.iter().all(|v| v.is_finite()), "eager logits finite");
        let mut count = [0u8; 4];
        gpu.download(&mut count, plan.mask_count().ptr).unwrap();
        gpu.synchronize().unwrap();
        let c = plan.masks_per_prompt() as u32;
        assert_eq!(
            u32::from_le_bytes(count),
            5 * c,
            "mask count = prompts in use x C"
        );

        let graph = Graph::capture(&gpu, || decoder.decode(&gpu, &plan, emb, hdr, 8)).unwrap();
        let before = gpu.counters();
        for _ in 0..3 {
            gpu.memset(plan.low_res().ptr, 0xFF, plan.low_res().bytes)
                .unwrap();
            graph.replay().unwrap();
        }
        decoder.decode(&gpu, &plan, emb, hdr, 8).unwrap();
        graph.replay().unwrap();
        gpu.synchronize().unwrap();
        let after = gpu.counters();
        assert_eq!(
            after.since(&before).device_allocations,
            0,
            "no allocation per decode"
        );
        let (replayed, replayed_iou) = plan.read_outputs(&gpu, 5).unwrap();
        let differing = eager
            .iter()
            .zip(&replayed)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        println!(
            "multimask {multimask}, mask input {mask_input}: graph replay vs eager: {differing} \
             of {} logits differ",
            eager.len()
        );
        assert_eq!(differing, 0);
        assert_eq!(eager_iou, replayed_iou);
    }
}

/// A decoder on synthetic weights, a random embedding, a 1920x1080 header and a plan for
/// `max` boxes with `min(max, 5)` staged.
struct BatchCase {
    decoder: MaskDecoder,
    plan: DecodePlan,
    _buffers: (DeviceBuffer, DeviceBuffer),
    io: (DeviceRegion, DeviceRegion),
    count: usize,
    max: usize,
}

impl BatchCase {
    fn new(gpu: &Gpu, name: &str, seed: u64, max: usize) -> BatchCase {
        let decoder = MaskDecoder::load(gpu, &synthetic_weights(name)).unwrap();
        let mut rng = common::Rng::new(seed);
        let nchw: Vec<f32> = (0..256 * 4096).map(|_| rng.normal() as f32).collect();
        let embedding = upload_embedding_nchw(gpu, &nchw).unwrap();
        let frame_header = header(gpu, 1920, 1080);
        let io = (
            DeviceRegion::of(&embedding),
            DeviceRegion::of(&frame_header),
        );
        let plan = decoder
            .plan(
                gpu,
                DecodeConfig {
                    max_prompts: max,
                    kind: PromptKind::Boxes,
                    multimask: false,
                    mask_input: false,
                },
            )
            .unwrap();
        let count = max.min(5);
        let boxes: Vec<[f32; 4]> = (0..count)
            .map(|i| {
                let x = 100.0 + 150.0 * i as f32;
                [x, 200.0, x + 300.0, 700.0]
            })
            .collect();
        plan.stage_prompts(gpu, &Prompts::Boxes(&boxes)).unwrap();
        BatchCase {
            decoder,
            plan,
            _buffers: (embedding, frame_header),
            io,
            count,
            max,
        }
    }

    /// Decodes `batch` prompts (launch size) without reading anything back.
    fn decode(&self, gpu: &Gpu, batch: usize) -> Result<(), Error> {
        self.decoder
            .decode(gpu, &self.plan, self.io.0, self.io.1, batch)
    }

    /// Logit and IoU bits of a decode at the plan's maximum.
    fn bits(&self, gpu: &Gpu) -> Vec<u32> {
        self.decode(gpu, self.max).unwrap();
        let (logits, iou) = self.plan.read_outputs(gpu, self.count).unwrap();
        logits.iter().chain(&iou).map(|v| v.to_bits()).collect()
    }
}

/// Counts the values of `bits` that differ from `reference`, prints it, and records `what`
/// in `failures` when any do.
fn compare_bits(what: String, bits: &[u32], reference: &[u32], failures: &mut Vec<String>) {
    let differing = bits.iter().zip(reference).filter(|(a, b)| a != b).count();
    println!("{what}: {differing} of {} values differ", reference.len());
    if differing != 0 {
        failures.push(what);
    }
}

#[test]
fn every_gemm_tile_gives_the_same_decode() {
    if !gpu_available("every_gemm_tile_gives_the_same_decode") {
        return;
    }
    // The GEMM tiles accumulate every element in the same order, so forcing any tile for
    // every GEMM of a decode must leave its bits unchanged (the tuner relies on it).
    let gpu = Gpu::new(0).unwrap();
    let mut failures = Vec::new();
    for max in [1usize, 8] {
        let case = BatchCase::new(&gpu, "decoder_tiles", 43, max);
        let reference = case.bits(&gpu);
        for tile in GemmTile::ALL {
            gpu.gemm_tuner().force(Some(GemmChoice { tile, splits: 1 }));
            let bits = case.bits(&gpu);
            gpu.gemm_tuner().force(None);
            compare_bits(
                format!("{max} prompts, every GEMM on {tile:?}"),
                &bits,
                &reference,
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "decode bits changed: {failures:?}");
}

#[test]
fn smaller_decodes_and_tuning_leave_later_decodes_unchanged() {
    const TEST: &str = "smaller_decodes_and_tuning_leave_later_decodes_unchanged";
    if !gpu_available(TEST) {
        return;
    }
    // A plan serves decodes of any batch up to its maximum; state they leave behind (the
    // attention's arrival counters, which a smaller batch once overwrote with its partials;
    // the tuner's cache and its repeated in-place launches) must not change a later decode.
    let gpu = Gpu::new(0).unwrap();
    let case = BatchCase::new(&gpu, "decoder_batches", 44, 8);
    let reference = case.bits(&gpu);
    let mut failures = Vec::new();
    for b in [1usize, 2, 4] {
        case.decode(&gpu, b).unwrap();
        compare_bits(
            format!("after a decode of {b}"),
            &case.bits(&gpu),
            &reference,
            &mut failures,
        );
    }
    let tuner = gpu.gemm_tuner();
    for b in [1usize, 2, 4, 8] {
        tuner.clear(); // time every shape again
        tuner.tune(&gpu, || case.decode(&gpu, b)).unwrap();
        compare_bits(
            format!("after tuning a decode of {b}"),
            &case.bits(&gpu),
            &reference,
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "later decodes changed: {failures:?}");
}

#[test]
fn bad_prompts_are_typed_errors() {
    if !gpu_available("bad_prompts_are_typed_errors") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let file = synthetic_weights("decoder_errors");
    let decoder = MaskDecoder::load(&gpu, &file).unwrap();
    let plan = decoder
        .plan(
            &gpu,
            DecodeConfig {
                max_prompts: 2,
                kind: PromptKind::Boxes,
                multimask: false,
                mask_input: false,
            },
        )
        .unwrap();
    // Mask inputs: none accepted by a plan without them; bad ones rejected by one with them.
    let err = plan
        .stage_mask_input(&gpu, &vec![0.0; MASK_INPUT_PIXELS])
        .unwrap_err();
    assert!(matches!(err, Error::Prompt(_)), "{err:?}");
    let masked = decoder
        .plan(
            &gpu,
            DecodeConfig {
                max_prompts: 2,
                kind: PromptKind::Boxes,
                multimask: false,
                mask_input: true,
            },
        )
        .unwrap();
    let mut nan = vec![0.0f32; 2 * MASK_INPUT_PIXELS];
    nan[MASK_INPUT_PIXELS + 17] = f32::NAN;
    for masks in [
        Vec::new(),
        vec![0.0; MASK_INPUT_PIXELS - 1],
        vec![0.0; 3 * MASK_INPUT_PIXELS],
        nan,
    ] {
        let err = masked.stage_mask_input(&gpu, &masks).unwrap_err();
        assert!(matches!(err, Error::Prompt(_)), "{err:?}");
    }
    assert_eq!(
        masked
            .stage_mask_input(&gpu, &vec![1.0; 2 * MASK_INPUT_PIXELS])
            .unwrap(),
        2
    );
    let good = [[1.0, 2.0, 30.0, 40.0]];
    let too_many = [[1.0, 2.0, 30.0, 40.0]; 3];
    let nan = [[1.0, f32::NAN, 30.0, 40.0]];
    for prompts in [
        Prompts::Boxes(&[]),
        Prompts::Boxes(&too_many),
        Prompts::Boxes(&nan),
        Prompts::Points {
            coords: &[[1.0, 2.0]],
            labels: &[1.0],
            per_prompt: 1,
        },
    ] {
        let err = plan.stage_prompts(&gpu, &prompts).unwrap_err();
        assert!(matches!(err, Error::Prompt(_)), "{err:?}");
    }
    plan.stage_prompts(&gpu, &Prompts::Boxes(&good)).unwrap();
    let embedding = gpu.alloc(256 * 4096 * 2).unwrap();
    let hdr = header(&gpu, 640, 480);
    let err = decoder
        .decode(
            &gpu,
            &plan,
            DeviceRegion::of(&embedding),
            DeviceRegion::of(&hdr),
            3,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Plan(_)), "{err:?}");
    let small = gpu.alloc(1024).unwrap();
    let err = decoder
        .decode(
            &gpu,
            &plan,
            DeviceRegion::of(&small),
            DeviceRegion::of(&hdr),
            1,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Launch { .. }), "{err:?}");
}

/// Random packed `mask_downscaling` parameters at the official module's scales (weights
/// N(0, 1/fan_in), LayerNorm2d scales U(0.5, 1.5), biases and shifts N(0, 0.1)).
fn random_mask_params(rng: &mut common::Rng) -> Vec<f32> {
    let mut p = vec![0f32; mask_params::LEN];
    // (offset, values, fan-in of a weight; 0 for a bias or shift, -1 for a LayerNorm2d scale).
    for (at, n, fan_in) in [
        (mask_params::W1, 16, 4),
        (mask_params::B1, 4, 0),
        (mask_params::G1, 4, -1),
        (mask_params::BE1, 4, 0),
        (mask_params::W2, 256, 16),
        (mask_params::B2, 16, 0),
        (mask_params::G2, 16, -1),
        (mask_params::BE2, 16, 0),
        (mask_params::W3, 4096, 16),
        (mask_params::B3, 256, 0),
    ] {
        for v in &mut p[at..at + n] {
            *v = match fan_in {
                0 => 0.1 * rng.normal(),
                -1 => 0.5 + rng.unit(),
                f => rng.normal() / (f as f64).sqrt(),
            } as f32;
        }
    }
    p
}

#[test]
fn mask_embed_matches_the_f64_reference() {
    if !gpu_available("mask_embed_matches_the_f64_reference") {
        return;
    }
    // y[b] = embedding + mask_downscaling(mask[b]) (NHWC fp16) against the f64 reference, for
    // random parameters and logit-like masks (std 4), two prompts with different masks.
    let gpu = Gpu::new(0).unwrap();
    let mut rng = common::Rng::new(7);
    let params = random_mask_params(&mut rng);
    let masks: Vec<f32> = (0..2 * MASK_INPUT_PIXELS)
        .map(|_| 4.0 * rng.normal() as f32)
        .collect();
    let (embedding, embedding64) = dense::random_f16(&mut rng, 4096 * 256, -2.0, 2.0);
    let params_d = dense::upload(&gpu, &params);
    let masks_d = dense::upload(&gpu, &masks);
    let embedding_d = dense::upload(&gpu, &embedding);
    let y = dense::poisoned(&gpu, 2 * 4096 * 256);
    let args = |batch| MaskEmbedArgs {
        batch,
        mask: dense::region(&masks_d),
        params: dense::region(&params_d),
        embedding: dense::region(&embedding_d),
        y: dense::region(&y),
    };
    launch_mask_embed(&gpu, &args(2)).unwrap();
    let got: Vec<f64> = dense::download_f16(&gpu, &y)
        .iter()
        .map(|v| v.to_f64())
        .collect();
    let mut worst = 0f64;
    for b in 0..2 {
        let mask = &masks[b * MASK_INPUT_PIXELS..(b + 1) * MASK_INPUT_PIXELS];
        let dense_embedding = dense::mask_downscaling_reference(&params, mask);
        let want: Vec<f64> = dense_embedding
            .iter()
            .zip(&embedding64)
            .map(|(d, e)| d + e)
            .collect();
        let ours = &got[b * 4096 * 256..(b + 1) * 4096 * 256];
        let (rel, max_abs) = dense::errors(ours, &want);
        // Error relative to the value: one fp16 rounding is <= 2^-11 ~ 4.9e-4.
        let scaled = ours
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
            .fold(0f64, f64::max);
        println!("prompt {b}: rel L2 {rel:.2e}, max abs {max_abs:.2e}, max scaled {scaled:.2e}");
        worst = worst.max(scaled);
    }
    assert!(
        worst <= 1e-3,
        "mask embedding off the f64 reference: {worst:.2e}"
    );

    // A short mask buffer is a typed launch error.
    dense::expect_launch_error("short mask buffer", launch_mask_embed(&gpu, &args(3)));
}

#[test]
fn a_constant_mask_embedding_decodes_as_no_mask() {
    if !gpu_available("a_constant_mask_embedding_decodes_as_no_mask") {
        return;
    }
    // With mask_downscaling's last conv weight zero and its bias = no_mask_embed (the synthetic
    // ramp gives both the same values), the dense embedding of any mask is no_mask_embed: the
    // mask-input path (per-prompt keys, unfolded biases, in-place block 0) must then give the
    // no-mask path's logits up to fp16 rounding (it stores embedding + no_mask_embed in fp16,
    // where the no-mask path folds the constant into f32 biases).
    let gpu = Gpu::new(0).unwrap();
    let specs: Vec<_> = expected_tensors()
        .iter()
        .map(|(name, shape)| {
            let mut s = spec(name, shape);
            if name == "prompt_encoder.mask_downscaling.6.weight" {
                s.values = Some(vec![0.0; 256 * 16]);
            }
            s
        })
        .collect();
    let nme = &specs
        .iter()
        .find(|s| s.name == "prompt_encoder.no_mask_embed.weight")
        .unwrap();
    let bias = &specs
        .iter()
        .find(|s| s.name == "prompt_encoder.mask_downscaling.6.bias")
        .unwrap();
    assert_eq!(
        common::weights::values(nme),
        common::weights::values(bias),
        "same synthetic values"
    );
    let path = write(
        &temp_dir("decoder_constant_mask"),
        "decoder.safetensors",
        &specs,
    );
    let decoder = MaskDecoder::load(&gpu, &WeightsFile::open(path).unwrap()).unwrap();
    let mut rng = common::Rng::new(45);
    let nchw: Vec<f32> = (0..256 * 4096).map(|_| rng.normal() as f32).collect();
    let embedding = upload_embedding_nchw(&gpu, &nchw).unwrap();
    let frame_header = header(&gpu, 1920, 1080);
    let boxes: Vec<[f32; 4]> = (0..5)
        .map(|i| {
            let x = 100.0 + 150.0 * i as f32;
            [x, 200.0 + 40.0 * i as f32, x + 300.0, 700.0]
        })
        .collect();
    let masks: Vec<f32> = (0..5 * MASK_INPUT_PIXELS)
        .map(|_| 4.0 * rng.normal() as f32)
        .collect();
    let mut outputs = Vec::new();
    for mask_input in [false, true] {
        let plan = decoder
            .plan(
                &gpu,
                DecodeConfig {
                    max_prompts: 5,
                    kind: PromptKind::Boxes,
                    multimask: true,
                    mask_input,
                },
            )
            .unwrap();
        plan.stage_prompts(&gpu, &Prompts::Boxes(&boxes)).unwrap();
        if mask_input {
            plan.stage_mask_input(&gpu, &masks).unwrap();
        }
        gpu.memset(plan.low_res().ptr, 0xFF, plan.low_res().bytes)
            .unwrap();
        outputs.push(decode_and_read(
            &gpu,
            &decoder,
            &plan,
            &embedding,
            &frame_header,
            5,
        ));
    }
    let (rel, max_abs) = rel_l2(&outputs[1].0, &outputs[0].0);
    let iou_err = outputs[1]
        .1
        .iter()
        .zip(&outputs[0].1)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // The synthetic ramp weights are not a trained head: its IoU outputs are not in [0, 1], so
    // their error is judged relative to their scale (the fixture test bounds real ones at 1e-2).
    let iou_scale = outputs[0].1.iter().fold(1f32, |m, v| m.max(v.abs()));
    println!(
        "mask input (constant embedding) vs no mask: logits rel L2 {rel:.2e}, max abs {max_abs:.3}, \
         IoU max abs diff {iou_err:.1e} at IoU scale {iou_scale:.1}"
    );
    assert!(
        rel <= 1e-2 && iou_err <= 1e-2 * iou_scale,
        "rel L2 {rel}, IoU {iou_err} (scale {iou_scale})"
    );
}

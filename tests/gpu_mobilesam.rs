//! End to end through the `MobileSam` API: our preprocessing, image encoder, prompt encoder,
//! mask decoder and mask decoding into the packet, against the official pipeline's low-res
//! logits pushed through `Sam.postprocess_masks` (f64 reference). Also the copy and
//! allocation promises of `set_frame` / `predict`. Skipped without a GPU or fixtures.
//!
//! End-to-end bound (stated): every mask whose reference covers >= 1% of the frame has IoU
//! >= 0.95 with the reference; the per-model tests hold the tighter per-stage bounds.

mod common;

use common::{fixture_f32, fixture_format, fixtures, gpu_available};
use finesam::frame::sam_extent;
use finesam::models::mobilesam::{MobileSam, Prompts, SamConfig};
use finesam::{reference, Error, Frame, PacketLayout, ResultPacket};
use safetensors::SafeTensors;

const MIN_IOU: f64 = 0.95;

#[test]
fn mobilesam_end_to_end_matches_the_official_pipeline() {
    if !gpu_available("mobilesam_end_to_end_matches_the_official_pipeline") {
        return;
    }
    let Some(dir) = fixtures(
        "mobilesam_end_to_end_matches_the_official_pipeline",
        "mobilesam",
    ) else {
        return;
    };
    let mut sam = MobileSam::load(
        dir.join("weights.safetensors"),
        SamConfig {
            max_width: 1920,
            max_height: 1080,
            // Random-weight masks often cover the whole frame: room for 24 full 1080p masks.
            packet: PacketLayout {
                detection_capacity: 96,
                mask_data_capacity: 8 << 20,
            },
            ..SamConfig::default()
        },
    )
    .unwrap();
    let err = sam.predict(&Prompts::Boxes(&[[0.0, 0.0, 10.0, 10.0]]), false);
    assert!(
        matches!(err, Err(Error::Frame(_))),
        "predict before set_frame"
    );

    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("weights.safetensors"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty());
    let mut worst = 1.0f64;
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap_or_default();
        let t = SafeTensors::deserialize(&bytes).unwrap();
        let frame_view = t.tensor("frame").unwrap();
        let (height, width) = (frame_view.shape()[0] as u32, frame_view.shape()[1] as u32);
        let format = fixture_format(&meta["format"]);
        let frame = Frame::packed(frame_view.data(), width, height, format);
        let extent = sam_extent(width, height).unwrap();

        let before = sam.gpu().counters();
        sam.set_frame(&frame).unwrap();
        let cost = sam.gpu().counters().since(&before);
        assert_eq!(
            (cost.uploads, cost.downloads),
            (1, 0),
            "set_frame: {cost:?}"
        );

        for (set, multimask) in [("boxes8", false), ("boxes8_multi", true)] {
            let boxes: Vec<[f32; 4]> = fixture_f32(&t, &format!("{set}.boxes"))
                .chunks_exact(4)
                .map(|b| [b[0], b[1], b[2], b[3]])
                .collect();
            let low = fixture_f32(&t, &format!("{set}.low_res_logits"));
            // Warm the plan once, then check the steady-state copy and allocation counts.
            sam.predict(&Prompts::Boxes(&boxes), multimask).unwrap();
            let before = sam.gpu().counters();
            let packet_bytes = sam
                .predict(&Prompts::Boxes(&boxes), multimask)
                .unwrap()
                .as_bytes()
                .to_vec();
            let cost = sam.gpu().counters().since(&before);
            let packet = ResultPacket::parse(&packet_bytes).unwrap();
            assert_eq!(
                (cost.uploads, cost.downloads, cost.device_allocations),
                (1, 1, 0),
                "predict: {cost:?}"
            );
            assert_eq!(
                packet.header().flags,
                0,
                "masks truncated: raise the capacity"
            );
            let per = if multimask { 3 } else { 1 };
            let detections: Vec<_> = packet.detections().collect();
            assert_eq!(detections.len(), boxes.len());
            for (d, b) in detections.iter().zip(&boxes) {
                assert_eq!(d.bbox, *b);
                assert!(d.mask_quality.is_finite());
            }
            let masks: Vec<_> = packet.masks().collect();
            assert_eq!(masks.len(), boxes.len() * per);
            let plane = 256 * 256;
            let mut ious = Vec::new();
            for (k, mask) in masks.iter().enumerate() {
                assert_eq!(mask.record.detection as usize, k / per);
                let logits = &low[k * plane..(k + 1) * plane];
                let (mut inter, mut union, mut area) = (0u64, 0u64, 0u64);
                for y in 0..height {
                    for x in 0..width {
                        let r = reference::mask_logit(
                            logits,
                            (width as usize, height as usize),
                            (extent.0 as usize, extent.1 as usize),
                            (x as usize, y as usize),
                        ) > 0.0;
                        let g = mask.contains(x, y);
                        inter += (r && g) as u64;
                        union += (r || g) as u64;
                        area += r as u64;
                    }
                }
                if area * 100 >= width as u64 * height as u64 {
                    ious.push(inter as f64 / union.max(1) as f64);
                }
            }
            let min = ious.iter().cloned().fold(1.0, f64::min);
            let mean = ious.iter().sum::<f64>() / ious.len().max(1) as f64;
            println!(
                "{}: {set}: {} masks, {} with area >= 1%: mask IoU min {min:.4} mean {mean:.4} (bound {MIN_IOU})",
                path.file_name().unwrap().to_string_lossy(),
                masks.len(),
                ious.len()
            );
            worst = worst.min(min);
        }
    }
    assert!(worst >= MIN_IOU, "worst end-to-end mask IoU {worst}");
}

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

        for (set, multimask) in [
            ("boxes8", false),
            ("boxes8_multi", true),
            ("boxes8_mask", false),
        ] {
            if t.tensor(&format!("{set}.boxes")).is_err() {
                continue;
            }
            // boxes8_mask: boxes8's boxes refined with boxes8's low-res logits as mask input.
            let mask_input = t
                .tensor(&format!("{set}.mask_input"))
                .is_ok()
                .then(|| fixture_f32(&t, &format!("{set}.mask_input")));
            let boxes: Vec<[f32; 4]> = fixture_f32(&t, &format!("{set}.boxes"))
                .chunks_exact(4)
                .map(|b| [b[0], b[1], b[2], b[3]])
                .collect();
            let low = fixture_f32(&t, &format!("{set}.low_res_logits"));
            let prompts = Prompts::Boxes(&boxes);
            let predict = |sam: &mut MobileSam| -> Vec<u8> {
                match &mask_input {
                    Some(masks) => sam.predict_with_mask_input(&prompts, masks, multimask),
                    None => sam.predict(&prompts, multimask),
                }
                .unwrap()
                .as_bytes()
                .to_vec()
            };
            // Warm the plan once, then check the steady-state copy and allocation counts.
            predict(&mut sam);
            let before = sam.gpu().counters();
            let packet_bytes = predict(&mut sam);
            let cost = sam.gpu().counters().since(&before);
            let packet = ResultPacket::parse(&packet_bytes).unwrap();
            // The mask inputs are one more upload.
            let uploads = 1 + mask_input.is_some() as u64;
            assert_eq!(
                (cost.uploads, cost.downloads, cost.device_allocations),
                (uploads, 1, 0),
                "predict: {cost:?}"
            );
            let per = if multimask { 3 } else { 1 };
            let low_res = sam.read_low_res().unwrap();
            assert_eq!(low_res.len(), boxes.len() * per * 256 * 256);
            assert!(
                low_res.iter().all(|v| v.is_finite()),
                "{set}: low-res logits"
            );
            assert_eq!(
                packet.header().flags,
                0,
                "masks truncated: raise the capacity"
            );
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
    // One mask input per prompt, finite: typed errors otherwise.
    let two = [[10.0, 10.0, 200.0, 200.0], [50.0, 60.0, 300.0, 400.0]];
    let mut one = vec![0.0f32; 256 * 256];
    for masks in [one.clone(), vec![0.0; 3 * 256 * 256]] {
        let err = sam.predict_with_mask_input(&Prompts::Boxes(&two), &masks, false);
        assert!(matches!(err, Err(Error::Prompt(_))), "mask count");
    }
    one[77] = f32::INFINITY;
    let err = sam.predict_with_mask_input(&Prompts::Boxes(&two[..1]), &one, false);
    assert!(
        matches!(err, Err(Error::Prompt(_))),
        "non-finite mask input"
    );
    assert!(worst >= MIN_IOU, "worst end-to-end mask IoU {worst}");
}

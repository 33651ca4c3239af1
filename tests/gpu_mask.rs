//! GPU tests of mask decoding: low-res logits -> frame-resolution binary masks, bit-packed and
//! cropped into the packet. Checked pixel by pixel against the f64 reference of
//! `Sam.postprocess_masks` (and against PyTorch itself when fixtures exist): every pixel that
//! differs must have a reference logit within the float error bound of the threshold, and every
//! set pixel must lie inside its crop. Skipped without a GPU.

mod common;

use common::{fixture_f32, fixtures, gpu_available, Rng};
use finesam::frame::{sam_extent, FrameHeader, FRAME_PIXEL_OFFSET};
use finesam::gpu::DeviceBuffer;
use finesam::ops::mask::{
    launch_mask_decode, MaskDecodeIo, MaskDecodeParams, BOUNDS_BYTES_PER_MASK, LOW_RES_MASK_BYTES,
    LOW_RES_SIDE,
};
use finesam::ops::packet::launch_assemble_packet_header;
use finesam::{reference, Error, Frame, Gpu, PacketLayout, PixelFormat, ResultPacket};
use safetensors::SafeTensors;

/// |logit| below which float-vs-f64 rounding may flip a pixel (logits here are O(1)).
const FLIP_BOUND: f64 = 1e-4;

struct Buffers {
    upload: DeviceBuffer,
    low_res: DeviceBuffer,
    mask_count: DeviceBuffer,
    bounds: DeviceBuffer,
    packet: DeviceBuffer,
    counts: DeviceBuffer,
}

fn buffers(gpu: &Gpu, layout: &PacketLayout, max_masks: usize) -> Buffers {
    Buffers {
        upload: gpu.alloc(FRAME_PIXEL_OFFSET).unwrap(),
        low_res: gpu.alloc(max_masks * LOW_RES_MASK_BYTES).unwrap(),
        mask_count: gpu.alloc(4).unwrap(),
        bounds: gpu.alloc(max_masks * BOUNDS_BYTES_PER_MASK).unwrap(),
        packet: gpu.alloc(layout.total_bytes()).unwrap(),
        counts: gpu.alloc(16).unwrap(),
    }
}

/// GPU, a packet with room for 64 detections and 8 MiB of mask data, buffers for 8 masks.
fn frame_test_setup() -> (Gpu, PacketLayout, Buffers) {
    let gpu = Gpu::new(0).unwrap();
    let layout = PacketLayout {
        detection_capacity: 64,
        mask_data_capacity: 8 << 20,
    };
    let b = buffers(&gpu, &layout, 8);
    (gpu, layout, b)
}

/// Runs the decoder for `masks` (each 256x256 logits) on a `width x height` frame and returns
/// the downloaded packet bytes.
#[allow(clippy::too_many_arguments)]
fn decode(
    gpu: &Gpu,
    b: &Buffers,
    layout: &PacketLayout,
    (width, height): (u32, u32),
    masks: &[Vec<f32>],
    detections: u32,
    masks_per_detection: u32,
    max_masks: u32,
) -> Result<Vec<u8>, Error> {
    let header = FrameHeader::for_frame(&Frame::packed(&[], width, height, PixelFormat::Rgb8), 1)?;
    gpu.upload(b.upload.ptr(), bytemuck::bytes_of(&header))?;
    let flat: Vec<f32> = masks.iter().flatten().copied().collect();
    gpu.upload(b.low_res.ptr(), bytemuck::cast_slice(&flat))?;
    gpu.upload(b.mask_count.ptr(), &(masks.len() as u32).to_le_bytes())?;
    gpu.upload(
        b.counts.ptr(),
        bytemuck::cast_slice(&[detections, 0u32, 0, 0]),
    )?;
    gpu.memset(b.packet.ptr(), 0xAB, layout.total_bytes())?; // poison
    launch_mask_decode(
        gpu,
        &MaskDecodeIo {
            low_res: b.low_res.ptr(),
            low_res_bytes: b.low_res.len(),
            mask_count: b.mask_count.ptr(),
            upload: b.upload.ptr(),
            bounds: b.bounds.ptr(),
            bounds_bytes: b.bounds.len(),
            packet: b.packet.ptr(),
            packet_bytes: b.packet.len(),
            counts: b.counts.ptr(),
        },
        layout,
        &MaskDecodeParams {
            masks_per_detection,
            max_masks,
            threshold: 0.0,
        },
    )?;
    launch_assemble_packet_header(
        gpu,
        b.upload.ptr(),
        Some(b.counts.ptr()),
        b.packet.ptr(),
        b.packet.len(),
        layout,
    )?;
    let mut bytes = vec![0u8; layout.total_bytes()];
    gpu.download(&mut bytes, b.packet.ptr())?;
    gpu.synchronize()?;
    Ok(bytes)
}

/// Smooth blob-shaped logits inside the SAM extent, like a segmentation head's output.
fn blob_logits(rng: &mut Rng, (sam_w, sam_h): (u32, u32)) -> Vec<f32> {
    let (ew, eh) = ((sam_w as f32 / 4.0).max(2.0), (sam_h as f32 / 4.0).max(2.0));
    let blobs: Vec<(f32, f32, f32, f32)> = (0..rng.range(2, 6))
        .map(|_| {
            (
                rng.range(0, ew as u32) as f32,
                rng.range(0, eh as u32) as f32,
                rng.range(3, 40) as f32,
                rng.range(5, 40) as f32 / 10.0,
            )
        })
        .collect();
    let mut logits = vec![0f32; LOW_RES_SIDE * LOW_RES_SIDE];
    for (i, v) in logits.iter_mut().enumerate() {
        let (x, y) = ((i % LOW_RES_SIDE) as f32, (i / LOW_RES_SIDE) as f32);
        *v = blobs.iter().fold(-1.0, |acc, &(cx, cy, r, a)| {
            acc + a * (-((x - cx).powi(2) + (y - cy).powi(2)) / (2.0 * r * r)).exp()
        });
    }
    logits
}

/// Compares every frame pixel of every mask with `reference(k, x, y)`; returns (flipped
/// pixels, worst |logit| among them, set pixels).
fn compare(
    packet: &ResultPacket<'_>,
    frame: (u32, u32),
    reference: impl Fn(usize, u32, u32) -> f64,
) -> (u64, f64, u64) {
    compare_where(packet, frame, reference, |_, _, _| true)
}

/// As [`compare`], over the pixels where `include(k, x, y)`.
fn compare_where(
    packet: &ResultPacket<'_>,
    (width, height): (u32, u32),
    reference: impl Fn(usize, u32, u32) -> f64,
    include: impl Fn(usize, u32, u32) -> bool,
) -> (u64, f64, u64) {
    let (mut flipped, mut worst, mut set) = (0u64, 0f64, 0u64);
    for (k, mask) in packet.masks().enumerate() {
        for y in 0..height {
            for x in 0..width {
                if !include(k, x, y) {
                    continue;
                }
                let logit = reference(k, x, y);
                let expected = logit > 0.0;
                set += expected as u64;
                if mask.contains(x, y) != expected {
                    flipped += 1;
                    // A NaN reference is "not set": a set pixel there fails any bound.
                    worst = worst.max(if logit.is_nan() {
                        f64::INFINITY
                    } else {
                        logit.abs()
                    });
                }
            }
        }
    }
    (flipped, worst, set)
}

#[test]
fn masks_match_the_reference_at_frame_resolution() {
    if !gpu_available("masks_match_the_reference_at_frame_resolution") {
        return;
    }
    let (gpu, layout, b) = frame_test_setup();
    let mut rng = Rng::new(0xa5c);
    // 3840 wide: bands of fewer rows (a band's words must fit mask_encode's word buffer).
    for (width, height, count) in [
        (1920, 1080, 4),
        (1037, 771, 3),
        (333, 1999, 3),
        (64, 48, 8),
        (3840, 2160, 2),
    ] {
        let extent = sam_extent(width, height).unwrap();
        let masks: Vec<Vec<f32>> = (0..count).map(|_| blob_logits(&mut rng, extent)).collect();
        let bytes = decode(
            &gpu,
            &b,
            &layout,
            (width, height),
            &masks,
            count as u32,
            1,
            8,
        )
        .unwrap();
        let packet = ResultPacket::parse(&bytes).unwrap();
        assert_eq!(packet.header().mask_count, count as u32);
        assert_eq!(packet.header().flags, 0);
        let (flipped, worst, set) = compare(&packet, (width, height), |k, x, y| {
            reference::mask_logit(
                &masks[k],
                (width as usize, height as usize),
                (extent.0 as usize, extent.1 as usize),
                (x as usize, y as usize),
            )
        });
        let crop_area: u64 = packet
            .masks()
            .map(|m| m.record.width as u64 * m.record.height as u64)
            .sum();
        println!(
            "{width}x{height}, {count} masks: {set} set pixels, crops cover {crop_area} pixels \
             ({} bytes), {flipped} flipped (worst |logit| {worst:.1e}, bound {FLIP_BOUND:.0e})",
            packet.header().mask_data_bytes
        );
        assert!(set > 0, "the test masks must not be empty");
        assert!(worst <= FLIP_BOUND, "a pixel with |logit| {worst} differs");
    }
}

/// Logits with fine structure (a sign change every few cells, as the random-weight decoder
/// gives) and special values: zeros of both signs, tiny positives (1e-35, a subnormal),
/// infinities and NaN; plus a constant positive mask and a constant tiny positive one.
fn hard_logits(rng: &mut Rng, extent: (u32, u32), kind: usize) -> Vec<f32> {
    let n = LOW_RES_SIDE * LOW_RES_SIDE;
    match kind {
        0 => vec![2.0; n],
        1 => vec![1e-31; n],
        _ => {
            let mut logits = blob_logits(rng, extent);
            for (i, v) in logits.iter_mut().enumerate() {
                *v += (rng.range(0, 1201) as f32 - 600.0) / 1000.0;
                match i % 211 {
                    3 => *v = 0.0,
                    5 => *v = -0.0,
                    7 => *v = 1e-35,
                    11 => *v = 5e-39,
                    13 if i % 7 == 0 => *v = f32::INFINITY,
                    17 if i % 7 == 0 => *v = f32::NEG_INFINITY,
                    19 if i % 5 == 0 => *v = f32::NAN,
                    _ => {}
                }
            }
            logits
        }
    }
}

#[test]
fn noisy_and_special_logits_match_the_reference() {
    if !gpu_available("noisy_and_special_logits_match_the_reference") {
        return;
    }
    let (gpu, layout, b) = frame_test_setup();
    let mut rng = Rng::new(0x5eed);
    // Narrow crops (words wrapping rows) and wide ones, up- and downscaled.
    for (width, height) in [(1920, 1080), (777, 1333), (30, 17), (2500, 300)] {
        let extent = sam_extent(width, height).unwrap();
        let masks: Vec<Vec<f32>> = (0..4).map(|k| hard_logits(&mut rng, extent, k)).collect();
        let bytes = decode(&gpu, &b, &layout, (width, height), &masks, 4, 1, 8).unwrap();
        let packet = ResultPacket::parse(&bytes).unwrap();
        assert_eq!(packet.header().mask_count, 4);
        // Pixels within reach of a non-finite cell are not compared: the kernel weighs a 3x3
        // cell neighbourhood, ATen a 2x2 + 2x2 one, and 0 x inf is NaN in either (documented
        // as unspecified). Cells within 3 of one are marked; a pixel looks up its own cell.
        let near_bad: Vec<Vec<bool>> = masks
            .iter()
            .map(|m| {
                let side = LOW_RES_SIDE as i64;
                let mut near = vec![false; m.len()];
                for (i, v) in m.iter().enumerate() {
                    if v.is_finite() {
                        continue;
                    }
                    let (cx, cy) = (i as i64 % side, i as i64 / side);
                    for dy in -3..=3 {
                        for dx in -3..=3 {
                            let (x, y) = (cx + dx, cy + dy);
                            if (0..side).contains(&x) && (0..side).contains(&y) {
                                near[(y * side + x) as usize] = true;
                            }
                        }
                    }
                }
                near
            })
            .collect();
        let cell = |pixel: u32, frame: u32, sam: u32| {
            let low = (pixel as f64 + 0.5) * sam as f64 / frame as f64 / 4.0;
            (low as usize).min(LOW_RES_SIDE - 1)
        };
        let (flipped, worst, set) = compare_where(
            &packet,
            (width, height),
            |k, x, y| {
                reference::mask_logit(
                    &masks[k],
                    (width as usize, height as usize),
                    (extent.0 as usize, extent.1 as usize),
                    (x as usize, y as usize),
                )
            },
            |k, x, y| {
                !near_bad[k][cell(y, height, extent.1) * LOW_RES_SIDE + cell(x, width, extent.0)]
            },
        );
        let full = (width * height) as u64;
        println!(
            "{width}x{height}, 4 hard masks: {set} set pixels of {}, {flipped} flipped (worst |logit| {worst:.1e})",
            4 * full
        );
        // The constant masks: all set (2.0 and 1e-31 alike).
        for k in 0..2 {
            let mask = packet.masks().nth(k).unwrap();
            let ones = (0..height)
                .flat_map(|y| (0..width).map(move |x| (x, y)))
                .filter(|&(x, y)| mask.contains(x, y))
                .count() as u64;
            assert_eq!(ones, full, "constant positive mask {k}");
        }
        assert!(worst <= FLIP_BOUND, "a pixel with |logit| {worst} differs");
    }
}

#[test]
fn empty_masks_multimask_indices_and_capacity() {
    if !gpu_available("empty_masks_multimask_indices_and_capacity") {
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    let mut rng = Rng::new(77);
    let extent = sam_extent(640, 480).unwrap();
    let empty = vec![-3.0f32; LOW_RES_SIDE * LOW_RES_SIDE];
    let mut masks: Vec<Vec<f32>> = (0..5).map(|_| blob_logits(&mut rng, extent)).collect();
    masks.insert(2, empty);

    // Room for everything: 6 masks = 2 detections x 3 multimask outputs.
    let layout = PacketLayout {
        detection_capacity: 8,
        mask_data_capacity: 1 << 20,
    };
    let b = buffers(&gpu, &layout, 6);
    let bytes = decode(&gpu, &b, &layout, (640, 480), &masks, 2, 3, 6).unwrap();
    let packet = ResultPacket::parse(&bytes).unwrap();
    let records: Vec<_> = packet.masks().map(|m| m.record).collect();
    assert_eq!(
        records.iter().map(|r| r.detection).collect::<Vec<_>>(),
        vec![0, 0, 0, 1, 1, 1]
    );
    assert_eq!(
        (records[2].width, records[2].height, records[2].data_bytes),
        (0, 0, 0)
    );
    assert!(records.iter().all(|r| r.data_offset % 4 == 0));

    // A capacity too small for all: later masks are dropped and flagged, never overrun.
    let small = PacketLayout {
        detection_capacity: 8,
        mask_data_capacity: 64,
    };
    let b = buffers(&gpu, &small, 6);
    let bytes = decode(&gpu, &b, &small, (640, 480), &masks, 2, 3, 6).unwrap();
    let packet = ResultPacket::parse(&bytes).unwrap();
    assert_eq!(packet.header().flags & 2, 2, "truncation is flagged");
    assert!(packet.header().mask_data_bytes <= 64);

    // Bad arguments are typed errors.
    let err = decode(&gpu, &b, &small, (640, 480), &masks, 2, 0, 6).unwrap_err();
    assert!(matches!(err, Error::Launch { .. }), "{err:?}");
    let err = decode(&gpu, &b, &small, (640, 480), &masks, 2, 3, 9).unwrap_err();
    assert!(matches!(err, Error::Launch { .. }), "{err:?}");
}

#[test]
fn masks_match_pytorch_postprocess() {
    if !gpu_available("masks_match_pytorch_postprocess") {
        return;
    }
    let Some(dir) = fixtures("masks_match_pytorch_postprocess", "masks") else {
        return;
    };
    let gpu = Gpu::new(0).unwrap();
    let layout = PacketLayout {
        detection_capacity: 16,
        mask_data_capacity: 16 << 20,
    };
    let b = buffers(&gpu, &layout, 16);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty());
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let low = fixture_f32(&tensors, "low_res_logits");
        let logits_view = tensors.tensor("logits").unwrap();
        let shape = logits_view.shape().to_vec();
        let (count, height, width) = (shape[0], shape[1] as u32, shape[2] as u32);
        let logits = fixture_f32(&tensors, "logits");
        let masks: Vec<Vec<f32>> = low
            .chunks_exact(LOW_RES_SIDE * LOW_RES_SIDE)
            .map(<[f32]>::to_vec)
            .collect();
        let packet_bytes = decode(
            &gpu,
            &b,
            &layout,
            (width, height),
            &masks,
            count as u32,
            1,
            16,
        )
        .unwrap();
        let packet = ResultPacket::parse(&packet_bytes).unwrap();
        let plane = (width * height) as usize;
        let (flipped, worst, set) = compare(&packet, (width, height), |k, x, y| {
            logits[k * plane + (y * width + x) as usize] as f64
        });
        println!(
            "torch parity {}: {count} masks at {width}x{height}: {set} set pixels, {flipped} flipped (worst |torch logit| {worst:.1e})",
            path.file_name().unwrap().to_string_lossy()
        );
        assert!(
            worst <= FLIP_BOUND,
            "a pixel with torch logit {worst} differs"
        );
    }
}

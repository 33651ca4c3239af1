//! The result packet layout: a packet written by the host builder parses back to the same
//! detections and masks, and every kind of corruption is a typed error, never a panic.

use finesam::packet::{pack_mask_bits, PacketBuilder, PacketHeader, PACKET_MAGIC};
use finesam::{Detection, Error, PacketLayout, ResultPacket};

const LAYOUT: PacketLayout = PacketLayout {
    detection_capacity: 8,
    mask_data_capacity: 1024,
};

fn detection(i: i32) -> Detection {
    Detection {
        bbox: [i as f32, 2.0 * i as f32, 10.0 + i as f32, 20.0 + i as f32],
        score: 0.5 + 0.01 * i as f32,
        label: i,
        track_id: 100 + i,
        mask_quality: 0.9,
    }
}

fn sample_packet() -> (Vec<u8>, Vec<bool>) {
    let mut builder = PacketBuilder::new(LAYOUT, 7, 1920, 1080);
    for i in 0..3 {
        builder.push_detection(detection(i)).unwrap();
    }
    // A 5x3 crop with a diagonal pattern, 15 bits -> 2 bytes.
    let pixels: Vec<bool> = (0..15).map(|i| i % 4 == 0 || i == 14).collect();
    builder
        .push_mask(1, (100, 200, 5, 3), &pixels, 0.75)
        .unwrap();
    (builder.finish(), pixels)
}

#[test]
fn round_trip() {
    let (bytes, pixels) = sample_packet();
    assert_eq!(bytes.len(), LAYOUT.total_bytes());
    let packet = ResultPacket::parse(&bytes).unwrap();
    let h = packet.header();
    assert_eq!((h.sequence, h.frame_width, h.frame_height), (7, 1920, 1080));
    let detections: Vec<Detection> = packet.detections().collect();
    assert_eq!(detections, (0..3).map(detection).collect::<Vec<_>>());
    let masks: Vec<_> = packet.masks().collect();
    assert_eq!(masks.len(), 1);
    let mask = &masks[0];
    assert_eq!(mask.record.detection, 1);
    assert_eq!(mask.record.quality, 0.75);
    assert_eq!(mask.area(), pixels.iter().filter(|&&p| p).count() as u64);
    for y in 0..3 {
        for x in 0..5 {
            assert_eq!(
                mask.contains(100 + x, 200 + y),
                pixels[(y * 5 + x) as usize]
            );
        }
    }
    assert!(!mask.contains(99, 200) && !mask.contains(105, 200) && !mask.contains(100, 203));
}

#[test]
fn bits_are_lsb_first() {
    assert_eq!(
        pack_mask_bits(&[true, false, false, false, false, false, false, false, true]),
        vec![1, 1]
    );
    assert_eq!(pack_mask_bits(&[false, true, true]), vec![0b110]);
}

#[test]
fn header_is_96_bytes() {
    assert_eq!(std::mem::size_of::<PacketHeader>(), 96);
    assert_eq!(std::mem::size_of::<Detection>(), 32);
}

fn corrupt(edit: impl Fn(&mut Vec<u8>)) -> Error {
    let (mut bytes, _) = sample_packet();
    edit(&mut bytes);
    ResultPacket::parse(&bytes).unwrap_err()
}

fn set_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn corruption_is_reported() {
    let cases: Vec<(Error, &str)> = vec![
        (corrupt(|b| b.truncate(50)), "cannot hold"),
        (corrupt(|b| set_u32(b, 0, 0xdead_beef)), "magic"),
        (corrupt(|b| b[4] = 9), "version"),
        (corrupt(|b| b.truncate(LAYOUT.total_bytes() - 1)), "only"),
        // detections_offset
        (corrupt(|b| set_u32(b, 44, 12)), "offsets"),
        // detection_count above capacity
        (corrupt(|b| set_u32(b, 36, 9)), "exceed"),
        // mask data bytes in use shrunk below the mask's extent
        (corrupt(|b| set_u32(b, 60, 1)), "claims bytes"),
        // mask refers to a detection beyond the count
        (corrupt(|b| set_u32(b, 36, 1)), "refers to detection"),
    ];
    for (err, expected) in cases {
        assert!(matches!(err, Error::Packet(_)), "{err:?}");
        assert!(
            err.to_string().contains(expected),
            "'{err}' lacks '{expected}'"
        );
    }
    assert_eq!(
        u32::from_le_bytes(sample_packet().0[..4].try_into().unwrap()),
        PACKET_MAGIC
    );
}

#[test]
fn builder_enforces_capacities() {
    let mut builder = PacketBuilder::new(
        PacketLayout {
            detection_capacity: 1,
            mask_data_capacity: 1,
        },
        0,
        10,
        10,
    );
    builder.push_detection(detection(0)).unwrap();
    assert!(builder.push_detection(detection(1)).is_err());
    assert!(builder
        .push_mask(0, (0, 0, 4, 4), &[true; 16], 1.0)
        .is_err());
    assert!(builder.push_mask(0, (0, 0, 2, 2), &[true; 3], 1.0).is_err());
    assert!(builder.push_mask(5, (0, 0, 1, 1), &[true], 1.0).is_err());
}

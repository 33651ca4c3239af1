//! Frames: validation errors, the MobileSAM extent rule, the upload header, and the CPU
//! reference of the antialiased resize against values derived by hand from ATen's algorithm.

use finesam::frame::{sam_extent, stage_frame, FrameHeader, FRAME_MAGIC, FRAME_PIXEL_OFFSET};
use finesam::reference::{antialias_weights, resize_antialias};
use finesam::{Error, Frame, PixelFormat};

#[test]
fn sam_extent_matches_resize_longest_side() {
    // Values from ResizeLongestSide.get_preprocess_shape (int(x * 1024 / longest + 0.5)).
    for ((w, h), expected) in [
        ((1920, 1080), (1024, 576)),
        ((1037, 771), (1024, 761)),
        ((333, 1999), (171, 1024)),
        ((451, 300), (1024, 681)),
        ((1, 1), (1024, 1024)),
    ] {
        assert_eq!(sam_extent(w, h).unwrap(), expected, "{w}x{h}");
    }
    assert!(matches!(sam_extent(3000, 1), Err(Error::Frame(_))));
}

#[test]
fn invalid_frames_are_rejected_with_a_reason() {
    let data = vec![0u8; 100 * 50 * 3];
    let ok = Frame::packed(&data, 100, 50, PixelFormat::Rgb8);
    ok.validate(4096, 4096).unwrap();

    let cases: Vec<(Frame<'_>, &str)> = vec![
        (Frame::packed(&data, 0, 50, PixelFormat::Rgb8), "empty"),
        (Frame::packed(&data, 100, 0, PixelFormat::Rgb8), "empty"),
        (Frame::packed(&data, 101, 50, PixelFormat::Rgb8), "needs"),
        (
            Frame {
                row_stride: 200,
                ..ok
            },
            "smaller than a row",
        ),
        (
            Frame {
                row_stride: 400,
                ..ok
            },
            "needs",
        ),
        (Frame::packed(&data, 100, 50, PixelFormat::Rgba8), "needs"),
    ];
    for (frame, reason) in cases {
        let err = frame.validate(4096, 4096).unwrap_err();
        assert!(matches!(err, Error::Frame(_)), "{err:?}");
        assert!(err.to_string().contains(reason), "{err} lacks '{reason}'");
    }
    let err = ok.validate(64, 64).unwrap_err();
    assert!(
        err.to_string().contains("exceeds the configured maximum"),
        "{err}"
    );
}

#[test]
fn staged_upload_is_header_then_rows() {
    // Stride larger than the row: only the span up to the last pixel is staged.
    let data: Vec<u8> = (0..(3 * 10 + 4)).map(|i| i as u8).collect();
    let frame = Frame {
        data: &data,
        width: 4,
        height: 4,
        row_stride: 10,
        format: PixelFormat::Gray8,
    };
    let mut staging = vec![0u8; 256];
    let bytes = stage_frame(&frame, 42, &mut staging).unwrap();
    assert_eq!(bytes, FRAME_PIXEL_OFFSET + 34);
    let header: FrameHeader =
        bytemuck::pod_read_unaligned(&staging[..std::mem::size_of::<FrameHeader>()]);
    assert_eq!(header.magic, FRAME_MAGIC);
    assert_eq!(header.sequence, 42);
    assert_eq!((header.width, header.height, header.row_stride), (4, 4, 10));
    assert_eq!((header.sam_width, header.sam_height), (1024, 1024));
    assert_eq!(&staging[FRAME_PIXEL_OFFSET..bytes], &data[..]);

    let mut small = vec![0u8; 40];
    assert!(matches!(
        stage_frame(&frame, 0, &mut small),
        Err(Error::Frame(_))
    ));
}

#[test]
fn antialias_weights_follow_aten() {
    // Downscale 4 -> 2: scale 2, support 2. Output 0: centre 1, span [0, 3), triangle weights
    // (0.75, 0.75, 0.25) normalised by 1.75.
    let (start, w) = antialias_weights(0, 4, 2);
    assert_eq!(start, 0);
    approx::assert_abs_diff_eq!(
        w.as_slice(),
        [3.0 / 7.0, 3.0 / 7.0, 1.0 / 7.0].as_slice(),
        epsilon = 1e-12
    );
    // Output 1: centre 3, span [1, 4), weights (0.25, 0.75, 0.75) / 1.75.
    let (start, w) = antialias_weights(1, 4, 2);
    assert_eq!(start, 1);
    approx::assert_abs_diff_eq!(
        w.as_slice(),
        [1.0 / 7.0, 3.0 / 7.0, 3.0 / 7.0].as_slice(),
        epsilon = 1e-12
    );
    // Upscale 2 -> 4 is plain bilinear (align_corners=False) with edge clamping:
    // output 1 samples x = 0.25 -> 0.75 * p0 + 0.25 * p1.
    let (start, w) = antialias_weights(1, 2, 4);
    assert_eq!(start, 0);
    approx::assert_abs_diff_eq!(w.as_slice(), [0.75, 0.25].as_slice(), epsilon = 1e-12);
    // Same size is the identity.
    let (start, w) = antialias_weights(5, 9, 9);
    assert_eq!(start, 5);
    approx::assert_abs_diff_eq!(w[0], 1.0, epsilon = 1e-12);
    assert!(w[1..].iter().all(|&x| x == 0.0));
}

#[test]
fn reference_resize_of_a_ramp() {
    // 4x1 gray ramp (0, 70, 140, 210) -> 2x1: (0*3 + 70*3 + 140) / 7 = 50 and
    // (70 + 140*3 + 210*3) / 7 = 160.
    let data = [0u8, 70, 140, 210];
    let frame = Frame::packed(&data, 4, 1, PixelFormat::Gray8);
    let out = resize_antialias(&frame, 2, 1);
    for c in 0..3 {
        approx::assert_abs_diff_eq!(out[c * 2], 50.0, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(out[c * 2 + 1], 160.0, epsilon = 1e-9);
    }
}

#[test]
fn reference_reads_every_pixel_format_as_rgb() {
    let rgb = [10u8, 20, 30];
    let bgr = [30u8, 20, 10];
    let rgba = [10u8, 20, 30, 99];
    for (data, format) in [
        (&rgb[..], PixelFormat::Rgb8),
        (&bgr[..], PixelFormat::Bgr8),
        (&rgba[..], PixelFormat::Rgba8),
    ] {
        let out = resize_antialias(&Frame::packed(data, 1, 1, format), 1, 1);
        assert_eq!(out, vec![10.0, 20.0, 30.0], "{format:?}");
    }
}

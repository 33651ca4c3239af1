//! Camera frames as the runtime receives them, and the header that travels in front of the
//! pixels in the single upload (layout shared with `kernels/common.cuh`).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};

/// Side of the square D-FINE input.
pub const DFINE_INPUT_SIZE: u32 = 640;
/// Longest side of the MobileSAM input (padded to a square of this side).
pub const SAM_INPUT_SIZE: u32 = 1024;
/// MobileSAM pixel mean (0..255 scale, RGB), as `Sam.pixel_mean`.
pub const SAM_PIXEL_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// MobileSAM pixel standard deviation (0..255 scale, RGB), as `Sam.pixel_std`.
pub const SAM_PIXEL_STD: [f32; 3] = [58.395, 57.12, 57.375];
/// Bytes reserved for the [`FrameHeader`] before the pixels in the upload buffer.
pub const FRAME_PIXEL_OFFSET: usize = 64;

/// How the bytes of one pixel are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PixelFormat {
    /// One byte of luminance.
    Gray8 = 0,
    /// Red, green, blue.
    Rgb8 = 1,
    /// Blue, green, red (OpenCV's order).
    Bgr8 = 2,
    /// Red, green, blue, alpha (alpha ignored).
    Rgba8 = 3,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Gray8 => 1,
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Rgba8 => 4,
        }
    }
}

/// A borrowed frame: `height` rows of `row_stride` bytes, the first `width * bpp` of each used.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Pixel bytes.
    pub data: &'a [u8],
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes from the start of one row to the next.
    pub row_stride: usize,
    /// Pixel layout.
    pub format: PixelFormat,
}

impl<'a> Frame<'a> {
    /// A tightly packed frame (row stride = width * bytes per pixel).
    pub fn packed(data: &'a [u8], width: u32, height: u32, format: PixelFormat) -> Frame<'a> {
        Frame {
            data,
            width,
            height,
            row_stride: width as usize * format.bytes_per_pixel(),
            format,
        }
    }

    /// Bytes of `data` the frame spans (the last row need not be padded to the stride).
    pub fn span_bytes(&self) -> usize {
        if self.height == 0 {
            return 0;
        }
        (self.height as usize - 1) * self.row_stride
            + self.width as usize * self.format.bytes_per_pixel()
    }

    /// Checks the frame against itself and the runtime's configured maximum size.
    pub fn validate(&self, max_width: u32, max_height: u32) -> Result<()> {
        self.validate_geometry(max_width, max_height)?;
        let needed = self.span_bytes();
        if self.data.len() < needed {
            return Err(Error::Frame(format!(
                "buffer holds {} bytes but a {}x{} {:?} frame with stride {} needs {needed}",
                self.data.len(),
                self.width,
                self.height,
                self.format,
                self.row_stride
            )));
        }
        Ok(())
    }

    /// Checks size, stride and aspect ratio, but not the pixel buffer.
    pub fn validate_geometry(&self, max_width: u32, max_height: u32) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::Frame(format!(
                "empty frame ({}x{})",
                self.width, self.height
            )));
        }
        if self.width > max_width || self.height > max_height {
            return Err(Error::Frame(format!(
                "frame {}x{} exceeds the configured maximum {max_width}x{max_height}",
                self.width, self.height
            )));
        }
        let row_bytes = self.width as usize * self.format.bytes_per_pixel();
        if self.row_stride < row_bytes {
            return Err(Error::Frame(format!(
                "row stride {} is smaller than a row of {} {:?} pixels ({row_bytes} bytes)",
                self.row_stride, self.width, self.format
            )));
        }
        if self.row_stride > u32::MAX as usize {
            return Err(Error::Frame(format!(
                "row stride {} does not fit 32 bits",
                self.row_stride
            )));
        }
        sam_extent(self.width, self.height).map(|_| ())
    }
}

/// The (width, height) MobileSAM resizes a frame to before padding: longest side 1024, the
/// other rounded as `ResizeLongestSide.get_preprocess_shape` does (`int(x * scale + 0.5)` in
/// double precision).
pub fn sam_extent(width: u32, height: u32) -> Result<(u32, u32)> {
    let scale = SAM_INPUT_SIZE as f64 / width.max(height) as f64;
    let new_w = (width as f64 * scale + 0.5) as u32;
    let new_h = (height as f64 * scale + 0.5) as u32;
    if new_w == 0 || new_h == 0 {
        return Err(Error::Frame(format!(
            "frame {width}x{height} is too elongated: its MobileSAM extent would be {new_w}x{new_h}"
        )));
    }
    Ok((new_w, new_h))
}

/// Header the host writes in front of the pixels (mirrors `finesam::FrameHeader` in CUDA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct FrameHeader {
    /// `FRAME_MAGIC`.
    pub magic: u32,
    /// Frame counter.
    pub sequence: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes between rows.
    pub row_stride: u32,
    /// [`PixelFormat`] as u32.
    pub format: u32,
    /// MobileSAM resized width.
    pub sam_width: u32,
    /// MobileSAM resized height.
    pub sam_height: u32,
}

/// "FSFR" read as a little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"FSFR");

impl FrameHeader {
    /// The header for a validated frame.
    pub fn for_frame(frame: &Frame<'_>, sequence: u32) -> Result<FrameHeader> {
        let (sam_width, sam_height) = sam_extent(frame.width, frame.height)?;
        let row_stride = u32::try_from(frame.row_stride).map_err(|_| {
            Error::Frame(format!(
                "row stride {} does not fit 32 bits",
                frame.row_stride
            ))
        })?;
        Ok(FrameHeader {
            magic: FRAME_MAGIC,
            sequence,
            width: frame.width,
            height: frame.height,
            row_stride,
            format: frame.format as u32,
            sam_width,
            sam_height,
        })
    }
}

/// Writes header and pixels into an upload staging buffer; returns the bytes to upload.
pub fn stage_frame(frame: &Frame<'_>, sequence: u32, staging: &mut [u8]) -> Result<usize> {
    let header = FrameHeader::for_frame(frame, sequence)?;
    let span = frame.span_bytes();
    if frame.data.len() < span {
        return Err(Error::Frame(format!(
            "buffer holds {} bytes but the frame spans {span}",
            frame.data.len()
        )));
    }
    let total = FRAME_PIXEL_OFFSET + span;
    if staging.len() < total {
        return Err(Error::Frame(format!(
            "frame needs {total} staging bytes but only {} are configured",
            staging.len()
        )));
    }
    staging[..std::mem::size_of::<FrameHeader>()].copy_from_slice(bytemuck::bytes_of(&header));
    staging[FRAME_PIXEL_OFFSET..total].copy_from_slice(&frame.data[..span]);
    Ok(total)
}

//! The result packet: everything a frame produces, laid out in ONE device buffer and brought to
//! the host by ONE device-to-host copy. Layout version 1 (docs/PACKET.md has the same table):
//!
//! | offset | what |
//! |---|---|
//! | 0 | [`PacketHeader`], 96 bytes |
//! | `detections_offset` | `detection_capacity` x [`Detection`] (32 bytes), first `detection_count` valid |
//! | `mask_index_offset` | `detection_capacity` x [`MaskRecord`] (32 bytes), first `mask_count` valid |
//! | `mask_data_offset` | `mask_data_capacity` bytes, first `mask_data_bytes` used |
//!
//! Masks are bit-packed and cropped to their box: a mask covering `width x height` pixels at
//! (`x`, `y`) in the frame is `ceil(width * height / 8)` bytes, row-major, least significant bit
//! first. All integers are little-endian. The header mirrors `PacketHeader` in kernels/packet.cu.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};

/// "FSPK" read as a little-endian u32.
pub const PACKET_MAGIC: u32 = u32::from_le_bytes(*b"FSPK");
/// The layout version this crate writes and reads.
pub const PACKET_VERSION: u16 = 1;

/// Fixed header at the start of every packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct PacketHeader {
    /// [`PACKET_MAGIC`].
    pub magic: u32,
    /// [`PACKET_VERSION`].
    pub version: u16,
    /// Size of this header in bytes (96).
    pub header_bytes: u16,
    /// Size of the whole packet buffer.
    pub total_bytes: u32,
    /// Frame sequence number.
    pub sequence: u32,
    /// Frame width in pixels.
    pub frame_width: u32,
    /// Frame height in pixels.
    pub frame_height: u32,
    /// Frame pixel format (`PixelFormat as u32`).
    pub frame_format: u32,
    /// MobileSAM resized width.
    pub sam_width: u32,
    /// MobileSAM resized height.
    pub sam_height: u32,
    /// Valid detection records.
    pub detection_count: u32,
    /// Detection records the packet has room for.
    pub detection_capacity: u32,
    /// Byte offset of the detection table.
    pub detections_offset: u32,
    /// Valid mask records.
    pub mask_count: u32,
    /// Byte offset of the mask index.
    pub mask_index_offset: u32,
    /// Byte offset of the mask data.
    pub mask_data_offset: u32,
    /// Mask data bytes in use.
    pub mask_data_bytes: u32,
    /// Mask data bytes available.
    pub mask_data_capacity: u32,
    /// Bit 0: detections were truncated to capacity; bit 1: mask data was truncated.
    pub flags: u32,
    /// Zero.
    pub reserved: [u32; 6],
}

/// One detection: box in frame pixels (x0, y0, x1, y1), score, class, track and mask quality.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct Detection {
    /// Box corners in frame pixels.
    pub bbox: [f32; 4],
    /// Detection confidence (sigmoid of the class logit).
    pub score: f32,
    /// Class index.
    pub label: i32,
    /// Track id, or -1 if untracked.
    pub track_id: i32,
    /// MobileSAM's predicted IoU of the mask, or NaN without a mask.
    pub mask_quality: f32,
}

/// Where one mask's bits live and which pixels they cover.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct MaskRecord {
    /// Index of the detection this mask belongs to.
    pub detection: u32,
    /// Left edge of the crop in frame pixels.
    pub x: u32,
    /// Top edge of the crop.
    pub y: u32,
    /// Crop width.
    pub width: u32,
    /// Crop height.
    pub height: u32,
    /// Offset of the bits within the mask data section.
    pub data_offset: u32,
    /// Bytes of bits (`ceil(width * height / 8)`).
    pub data_bytes: u32,
    /// MobileSAM's predicted IoU of this mask (NaN when unknown).
    pub quality: f32,
}

/// Sizes of the packet sections, fixed when a pipeline is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketLayout {
    /// Detection (and mask) records the packet holds.
    pub detection_capacity: u32,
    /// Bytes for bit-packed mask crops.
    pub mask_data_capacity: u32,
}

impl PacketLayout {
    /// Offset of the detection table.
    pub fn detections_offset(&self) -> usize {
        std::mem::size_of::<PacketHeader>()
    }
    /// Offset of the mask index.
    pub fn mask_index_offset(&self) -> usize {
        self.detections_offset()
            + self.detection_capacity as usize * std::mem::size_of::<Detection>()
    }
    /// Offset of the mask data.
    pub fn mask_data_offset(&self) -> usize {
        self.mask_index_offset()
            + self.detection_capacity as usize * std::mem::size_of::<MaskRecord>()
    }
    /// Size of the whole packet.
    pub fn total_bytes(&self) -> usize {
        self.mask_data_offset() + self.mask_data_capacity as usize
    }
}

/// A parsed, validated packet borrowed from the bytes it was copied into.
#[derive(Debug, Clone, Copy)]
pub struct ResultPacket<'a> {
    header: PacketHeader,
    bytes: &'a [u8],
}

impl<'a> ResultPacket<'a> {
    /// Validates `bytes` against layout version 1 and borrows them.
    pub fn parse(bytes: &'a [u8]) -> Result<ResultPacket<'a>> {
        let header_size = std::mem::size_of::<PacketHeader>();
        let head = bytes.get(..header_size).ok_or_else(|| {
            Error::Packet(format!(
                "{} bytes cannot hold the {header_size}-byte header",
                bytes.len()
            ))
        })?;
        let header: PacketHeader = bytemuck::pod_read_unaligned(head);
        if header.magic != PACKET_MAGIC {
            return Err(Error::Packet(format!(
                "magic {:#010x} is not 'FSPK'",
                header.magic
            )));
        }
        if header.version != PACKET_VERSION || header.header_bytes as usize != header_size {
            return Err(Error::Packet(format!(
                "layout version {} with a {}-byte header; this build reads version {PACKET_VERSION} ({header_size} bytes)",
                header.version, header.header_bytes
            )));
        }
        if header.total_bytes as usize > bytes.len() {
            return Err(Error::Packet(format!(
                "header says {} bytes but only {} are present",
                header.total_bytes,
                bytes.len()
            )));
        }
        let layout = PacketLayout {
            detection_capacity: header.detection_capacity,
            mask_data_capacity: header.mask_data_capacity,
        };
        let expected = (
            layout.detections_offset(),
            layout.mask_index_offset(),
            layout.mask_data_offset(),
            layout.total_bytes(),
        );
        let found = (
            header.detections_offset as usize,
            header.mask_index_offset as usize,
            header.mask_data_offset as usize,
            header.total_bytes as usize,
        );
        if expected != found {
            return Err(Error::Packet(format!(
                "section offsets {found:?} do not match the layout for their capacities {expected:?}"
            )));
        }
        if header.detection_count > header.detection_capacity
            || header.mask_count > header.detection_capacity
            || header.mask_data_bytes > header.mask_data_capacity
        {
            return Err(Error::Packet(format!(
                "counts exceed capacities (detections {}/{}, masks {}/{}, mask bytes {}/{})",
                header.detection_count,
                header.detection_capacity,
                header.mask_count,
                header.detection_capacity,
                header.mask_data_bytes,
                header.mask_data_capacity
            )));
        }
        let packet = ResultPacket {
            header,
            bytes: &bytes[..header.total_bytes as usize],
        };
        for (i, record) in packet.mask_records().enumerate() {
            let end = record.data_offset as u64 + record.data_bytes as u64;
            let needed = (record.width as u64 * record.height as u64).div_ceil(8);
            if end > header.mask_data_bytes as u64 || (record.data_bytes as u64) < needed {
                return Err(Error::Packet(format!(
                    "mask {i} ({}x{}) claims bytes {}..{end} of {} used mask bytes",
                    record.width, record.height, record.data_offset, header.mask_data_bytes
                )));
            }
            if record.detection >= header.detection_count {
                return Err(Error::Packet(format!(
                    "mask {i} refers to detection {} of {}",
                    record.detection, header.detection_count
                )));
            }
        }
        Ok(packet)
    }

    /// The packet's bytes (exactly `total_bytes`).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The header.
    pub fn header(&self) -> &PacketHeader {
        &self.header
    }

    /// The valid detections.
    pub fn detections(&self) -> impl Iterator<Item = Detection> + '_ {
        let start = self.header.detections_offset as usize;
        (0..self.header.detection_count as usize).map(move |i| {
            let at = start + i * std::mem::size_of::<Detection>();
            bytemuck::pod_read_unaligned(&self.bytes[at..at + std::mem::size_of::<Detection>()])
        })
    }

    fn mask_records(&self) -> impl Iterator<Item = MaskRecord> + '_ {
        let start = self.header.mask_index_offset as usize;
        (0..self.header.mask_count as usize).map(move |i| {
            let at = start + i * std::mem::size_of::<MaskRecord>();
            bytemuck::pod_read_unaligned(&self.bytes[at..at + std::mem::size_of::<MaskRecord>()])
        })
    }

    /// The masks, each with its crop and bits.
    pub fn masks(&self) -> impl Iterator<Item = Mask<'a>> + '_ {
        let data_start = self.header.mask_data_offset as usize;
        let bytes = self.bytes;
        self.mask_records().map(move |record| {
            let at = data_start + record.data_offset as usize;
            Mask {
                record,
                bits: &bytes[at..at + record.data_bytes as usize],
            }
        })
    }
}

/// One bit-packed mask crop.
#[derive(Debug, Clone, Copy)]
pub struct Mask<'a> {
    /// Crop placement.
    pub record: MaskRecord,
    bits: &'a [u8],
}

impl Mask<'_> {
    /// Whether frame pixel (x, y) is inside the mask (false outside the crop).
    pub fn contains(&self, x: u32, y: u32) -> bool {
        let r = &self.record;
        if x < r.x || y < r.y || x >= r.x + r.width || y >= r.y + r.height {
            return false;
        }
        let i = (y - r.y) as usize * r.width as usize + (x - r.x) as usize;
        self.bits[i / 8] >> (i % 8) & 1 == 1
    }

    /// Number of pixels set.
    pub fn area(&self) -> u64 {
        let n = self.record.width as usize * self.record.height as usize;
        let full = n / 8;
        let mut area: u64 = self.bits[..full]
            .iter()
            .map(|b| b.count_ones() as u64)
            .sum();
        if n % 8 != 0 {
            area += (self.bits[full] & ((1u8 << (n % 8)) - 1)).count_ones() as u64;
        }
        area
    }
}

/// Host-side writer of the same layout: documents the format by construction, serialises
/// packets for replay and builds test packets. The GPU assembles packets itself.
#[derive(Debug, Clone)]
pub struct PacketBuilder {
    layout: PacketLayout,
    header: PacketHeader,
    detections: Vec<Detection>,
    masks: Vec<MaskRecord>,
    mask_data: Vec<u8>,
}

impl PacketBuilder {
    /// An empty packet for a `frame_width x frame_height` frame.
    pub fn new(layout: PacketLayout, sequence: u32, frame_width: u32, frame_height: u32) -> Self {
        let header = PacketHeader {
            magic: PACKET_MAGIC,
            version: PACKET_VERSION,
            header_bytes: std::mem::size_of::<PacketHeader>() as u16,
            total_bytes: layout.total_bytes() as u32,
            sequence,
            frame_width,
            frame_height,
            detection_capacity: layout.detection_capacity,
            detections_offset: layout.detections_offset() as u32,
            mask_index_offset: layout.mask_index_offset() as u32,
            mask_data_offset: layout.mask_data_offset() as u32,
            mask_data_capacity: layout.mask_data_capacity,
            ..PacketHeader::zeroed()
        };
        PacketBuilder {
            layout,
            header,
            detections: Vec::new(),
            masks: Vec::new(),
            mask_data: Vec::new(),
        }
    }

    /// Appends a detection; returns its index, or an error when the packet is full.
    pub fn push_detection(&mut self, detection: Detection) -> Result<u32> {
        if self.detections.len() >= self.layout.detection_capacity as usize {
            return Err(Error::Packet(format!(
                "detection capacity {} exceeded",
                self.layout.detection_capacity
            )));
        }
        self.detections.push(detection);
        Ok(self.detections.len() as u32 - 1)
    }

    /// Appends the mask of `detection`: a row-major `width x height` crop at (x, y) with its
    /// predicted quality.
    pub fn push_mask(
        &mut self,
        detection: u32,
        (x, y, width, height): (u32, u32, u32, u32),
        pixels: &[bool],
        quality: f32,
    ) -> Result<()> {
        if pixels.len() != width as usize * height as usize {
            return Err(Error::Packet(format!(
                "mask of {}x{} given {} pixels",
                width,
                height,
                pixels.len()
            )));
        }
        if detection as usize >= self.detections.len() {
            return Err(Error::Packet(format!(
                "mask for detection {detection} of {}",
                self.detections.len()
            )));
        }
        let bits = pack_mask_bits(pixels);
        if self.mask_data.len() + bits.len() > self.layout.mask_data_capacity as usize {
            return Err(Error::Packet(format!(
                "mask data capacity {} exceeded",
                self.layout.mask_data_capacity
            )));
        }
        self.masks.push(MaskRecord {
            detection,
            x,
            y,
            width,
            height,
            data_offset: self.mask_data.len() as u32,
            data_bytes: bits.len() as u32,
            quality,
        });
        self.mask_data.extend_from_slice(&bits);
        Ok(())
    }

    /// The packet's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header.detection_count = self.detections.len() as u32;
        self.header.mask_count = self.masks.len() as u32;
        self.header.mask_data_bytes = self.mask_data.len() as u32;
        let mut bytes = vec![0u8; self.layout.total_bytes()];
        let put = |bytes: &mut [u8], at: usize, src: &[u8]| {
            bytes[at..at + src.len()].copy_from_slice(src)
        };
        put(&mut bytes, 0, bytemuck::bytes_of(&self.header));
        put(
            &mut bytes,
            self.layout.detections_offset(),
            bytemuck::cast_slice(&self.detections),
        );
        put(
            &mut bytes,
            self.layout.mask_index_offset(),
            bytemuck::cast_slice(&self.masks),
        );
        put(&mut bytes, self.layout.mask_data_offset(), &self.mask_data);
        bytes
    }
}

/// Bit-packs a row-major boolean crop (LSB first), the encoding of the mask data section.
pub fn pack_mask_bits(mask: &[bool]) -> Vec<u8> {
    let mut bits = vec![0u8; mask.len().div_ceil(8)];
    for (i, _) in mask.iter().enumerate().filter(|(_, &on)| on) {
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

// Result packet assembly: writes the versioned packet header (layout documented in
// src/packet.rs and docs/PACKET.md) into the packet's device buffer, echoing the uploaded
// frame's header, so the host gets everything it needs from ONE device-to-host copy.
// Reference: the host-side decoder `ResultPacket::parse` in src/packet.rs (no PyTorch op).
// Sections filled by later stages (detections, masks) report their counts from device memory
// through `counts` (nullptr = nothing produced yet).
#include "common.cuh"

using namespace finesam;

struct PacketHeader {
    uint32_t magic;               // 'FSPK'
    uint16_t version;             // layout version
    uint16_t header_bytes;        // sizeof(PacketHeader)
    uint32_t total_bytes;         // size of the whole packet buffer
    uint32_t sequence;            // frame sequence number from the frame header
    uint32_t frame_width;
    uint32_t frame_height;
    uint32_t frame_format;
    uint32_t sam_width;           // MobileSAM resized extent
    uint32_t sam_height;
    uint32_t detection_count;
    uint32_t detection_capacity;
    uint32_t detections_offset;   // bytes from the packet start
    uint32_t mask_count;
    uint32_t mask_index_offset;
    uint32_t mask_data_offset;
    uint32_t mask_data_bytes;     // bytes of mask data in use
    uint32_t mask_data_capacity;
    uint32_t flags;               // bit 0: detections truncated, bit 1: mask data truncated
    uint32_t reserved[6];
};
static_assert(sizeof(PacketHeader) == 96, "PacketHeader layout is shared with src/packet.rs");

struct PacketGeometry {
    uint32_t total_bytes;
    uint32_t detection_capacity;
    uint32_t detections_offset;
    uint32_t mask_index_offset;
    uint32_t mask_data_offset;
    uint32_t mask_data_capacity;
};

// counts[0] = detections produced, counts[1] = masks, counts[2] = mask data bytes, counts[3] = flags.
extern "C" __global__ void assemble_packet_header(const uint8_t* __restrict__ upload,
                                                  const uint32_t* __restrict__ counts,
                                                  uint8_t* __restrict__ packet,
                                                  PacketGeometry geometry) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const FrameHeader f = *reinterpret_cast<const FrameHeader*>(upload);
    PacketHeader h = {};
    h.magic = 0x4b505346u;  // "FSPK"
    h.version = 1;
    h.header_bytes = sizeof(PacketHeader);
    h.total_bytes = geometry.total_bytes;
    h.sequence = f.sequence;
    h.frame_width = f.width;
    h.frame_height = f.height;
    h.frame_format = f.format;
    h.sam_width = f.sam_width;
    h.sam_height = f.sam_height;
    h.detection_capacity = geometry.detection_capacity;
    h.detections_offset = geometry.detections_offset;
    h.mask_index_offset = geometry.mask_index_offset;
    h.mask_data_offset = geometry.mask_data_offset;
    h.mask_data_capacity = geometry.mask_data_capacity;
    if (counts != nullptr) {
        h.detection_count = min(counts[0], geometry.detection_capacity);
        h.mask_count = min(counts[1], geometry.detection_capacity);
        h.mask_data_bytes = min(counts[2], geometry.mask_data_capacity);
        h.flags = counts[3] | (counts[0] > geometry.detection_capacity ? 1u : 0u) |
                  (counts[2] > geometry.mask_data_capacity ? 2u : 0u);
    }
    *reinterpret_cast<PacketHeader*>(packet) = h;
}

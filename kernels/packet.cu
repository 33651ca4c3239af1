// Result packet assembly: writes the versioned packet header (layout documented in
// src/packet.rs and docs/PACKET.md) into the packet's device buffer, echoing the uploaded
// frame's header, so the host gets everything it needs from ONE device-to-host copy; and the
// detection records of prompts given straight to MobileSAM (`prompt_detections`).
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

// Detection records for prompts given directly to MobileSAM (no detector): one record per
// prompt of the prompt block (u32 count at offset 0; from byte 16, [max_prompts, points, 3]
// f32 x, y, label in frame pixels; label -1 marks padding points). The box is the extent of
// the prompt's real points (for a box prompt: the box), score and class are unknown (NaN, -1),
// the mask quality is the best predicted IoU among the prompt's masks. Writes counts[0].
struct PromptDetectionParams {
    uint32_t points_per_prompt;
    uint32_t masks_per_prompt;
    uint32_t max_prompts;
    uint32_t detections_offset;
    uint32_t detection_capacity;
};

struct Detection {  // mirrors finesam::packet::Detection
    float bbox[4];
    float score;
    int32_t label;
    int32_t track_id;
    float mask_quality;
};

extern "C" __global__ void prompt_detections(const uint8_t* __restrict__ prompt_block,
                                             const float* __restrict__ iou,
                                             uint8_t* __restrict__ packet,
                                             uint32_t* __restrict__ counts,
                                             PromptDetectionParams p) {
    const uint32_t count = min(*reinterpret_cast<const uint32_t*>(prompt_block),
                               min(p.max_prompts, p.detection_capacity));
    const float* points = reinterpret_cast<const float*>(prompt_block + 16);
    Detection* out = reinterpret_cast<Detection*>(packet + p.detections_offset);
    for (uint32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += gridDim.x * blockDim.x) {
        float x0 = INFINITY, y0 = INFINITY, x1 = -INFINITY, y1 = -INFINITY;
        for (uint32_t j = 0; j < p.points_per_prompt; ++j) {
            const float* pt = points + (static_cast<size_t>(k) * p.points_per_prompt + j) * 3;
            if (pt[2] == -1.f) continue;  // padding point
            x0 = fminf(x0, pt[0]); y0 = fminf(y0, pt[1]);
            x1 = fmaxf(x1, pt[0]); y1 = fmaxf(y1, pt[1]);
        }
        float best = -INFINITY;
        for (uint32_t c = 0; c < p.masks_per_prompt; ++c)
            best = fmaxf(best, iou[static_cast<size_t>(k) * p.masks_per_prompt + c]);
        Detection d;
        d.bbox[0] = x0; d.bbox[1] = y0; d.bbox[2] = x1; d.bbox[3] = y1;
        d.score = __int_as_float(0x7fc00000);  // NaN: no detector score
        d.label = -1;
        d.track_id = -1;
        d.mask_quality = best;
        out[k] = d;
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) counts[0] = count;
}

// Shared definitions for every finesam kernel file: the layouts that Rust and CUDA both read
// (kept byte-for-byte in sync with src/frame.rs and src/packet.rs) and small device helpers.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

namespace finesam {

// Header written by the host in front of the frame's pixels, uploaded with them in ONE copy.
// Kernels read the geometry from here, so a captured CUDA graph serves frames of any size.
struct FrameHeader {
    uint32_t magic;       // 'FSFR'
    uint32_t sequence;    // frame counter, echoed into the packet
    uint32_t width;       // pixels
    uint32_t height;      // pixels
    uint32_t row_stride;  // bytes between rows
    uint32_t format;      // PixelFormat below
    uint32_t sam_width;   // MobileSAM resized extent (longest side 1024), computed by the host
    uint32_t sam_height;
};
constexpr uint32_t kFrameMagic = 0x52465346u;  // "FSFR" little-endian
constexpr uint32_t kFramePixelOffset = 64;     // pixels start here in the upload buffer

enum PixelFormat : uint32_t { kGray8 = 0, kRgb8 = 1, kBgr8 = 2, kRgba8 = 3 };

}  // namespace finesam

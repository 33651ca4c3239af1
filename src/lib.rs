//! finesam: D-FINE detection and MobileSAM segmentation on NVIDIA GPUs with hand-written CUDA
//! kernels, one upload per frame and one compact result packet back.
//!
//! Layout: [`gpu`] (device, stream, arena, graphs, counted copies), [`ops`] (typed kernel
//! launchers), [`frame`] (input frames and their upload header), [`pipeline`] (the per-frame
//! plan), [`packet`] (the result packet), [`weights`] (safetensors loading and validation),
//! [`reference`] (CPU references the GPU tests compare against).

pub mod assign;
pub mod error;
pub mod frame;
pub mod gpu;
pub mod models;
pub mod ops;
pub mod packet;
pub mod pipeline;
pub mod reference;
pub mod weights;

pub use error::{Error, Result};
pub use frame::{Frame, PixelFormat};
pub use gpu::{Gpu, GpuCounters};
pub use packet::{Detection, Mask, PacketLayout, ResultPacket};
pub use pipeline::{Pipeline, PipelineConfig, Stage, Timing};

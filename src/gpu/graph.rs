//! CUDA graph capture and replay: a plan's launches are recorded once and replayed per frame
//! with a single driver call.

use cudarc::driver::{sys, CudaGraph};

use super::Gpu;
use crate::error::{Error, Result};

/// A captured, instantiated CUDA graph bound to the GPU's stream.
pub struct Graph {
    inner: CudaGraph,
}

impl Graph {
    /// Records everything `body` issues on the stream into a graph. Nothing runs during capture;
    /// kernels must therefore read per-frame values from device memory, not from arguments.
    pub fn capture(gpu: &Gpu, body: impl FnOnce() -> Result<()>) -> Result<Graph> {
        let stream = gpu.stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(Error::cuda("cuStreamBeginCapture"))?;
        let issued = body();
        // End the capture even when `body` failed, so the stream is usable again.
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        issued?;
        let inner = ended
            .map_err(Error::cuda("cuStreamEndCapture / cuGraphInstantiate"))?
            .ok_or_else(|| Error::Plan("the stream was not capturing".into()))?;
        inner.upload().map_err(Error::cuda("cuGraphUpload"))?;
        Ok(Graph { inner })
    }

    /// Launches the graph on the stream it was captured on (asynchronous).
    pub fn replay(&self) -> Result<()> {
        self.inner.launch().map_err(Error::cuda("cuGraphLaunch"))
    }
}

//! The GPU core: one device, its stream (plus a side stream for work that may overlap, joined
//! back by [`Gpu::fork_join`]), the embedded kernel modules, counted device memory and counted
//! host<->device copies, CUDA graphs and event timers.
//!
//! Everything that touches device memory or moves bytes across PCIe goes through [`Gpu`], so the
//! runtime can prove its two promises: no device allocation after warm-up, and exactly one
//! upload and one download per frame ([`GpuCounters`]).

pub mod arena;
pub mod graph;
pub mod kernels;
pub mod memory;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaStream};

use crate::error::{Error, Result};
use crate::ops::gemm_tune::GemmTuner;
pub use arena::{Arena, ArenaPlan, ArenaPlanner, TensorId};
pub use graph::Graph;
pub use kernels::Kernels;
pub use memory::{DeviceBuffer, DevicePtr, PinnedBuffer};

/// Running totals of what the runtime asked of the device. Compare two snapshots
/// ([`GpuCounters::since`]) to see what one frame cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuCounters {
    /// Device allocations made (arena, weights, scratch).
    pub device_allocations: u64,
    /// Bytes of device memory allocated in total.
    pub device_bytes: u64,
    /// Host-to-device copies issued.
    pub uploads: u64,
    /// Bytes uploaded.
    pub upload_bytes: u64,
    /// Device-to-host copies issued.
    pub downloads: u64,
    /// Bytes downloaded.
    pub download_bytes: u64,
}

impl GpuCounters {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &GpuCounters) -> GpuCounters {
        GpuCounters {
            device_allocations: self.device_allocations - earlier.device_allocations,
            device_bytes: self.device_bytes - earlier.device_bytes,
            uploads: self.uploads - earlier.uploads,
            upload_bytes: self.upload_bytes - earlier.upload_bytes,
            downloads: self.downloads - earlier.downloads,
            download_bytes: self.download_bytes - earlier.download_bytes,
        }
    }
}

#[derive(Default)]
pub(crate) struct AtomicCounters {
    device_allocations: AtomicU64,
    device_bytes: AtomicU64,
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    downloads: AtomicU64,
    download_bytes: AtomicU64,
}

impl AtomicCounters {
    pub(crate) fn count_allocation(&self, bytes: usize) {
        self.device_allocations.fetch_add(1, Ordering::Relaxed);
        self.device_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// One CUDA device with its stream and loaded kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Where the `side` part of [`Gpu::fork_join`] is issued.
    side: Arc<CudaStream>,
    /// Whether launches go to `side` now (only inside `fork_join`).
    on_side: AtomicBool,
    kernels: Kernels,
    counters: Arc<AtomicCounters>,
    name: String,
    gemm_tuner: GemmTuner,
}

impl Gpu {
    /// Checks that a CUDA driver and at least one device are present, without keeping anything.
    /// Tests and benchmarks use it to skip with a printed reason on machines without a GPU.
    pub fn probe() -> Result<()> {
        // SAFETY: only tries to dlopen the driver library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoDriver);
        }
        result::init().map_err(|e| Error::NoDevice(e.to_string()))?;
        let count = CudaContext::device_count().map_err(|e| Error::NoDevice(e.to_string()))?;
        if count < 1 {
            return Err(Error::NoDevice("the driver reports 0 devices".into()));
        }
        Ok(())
    }

    /// Opens device `ordinal`, creates its stream and loads every kernel module.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        Self::probe()?;
        let count = CudaContext::device_count().map_err(Error::cuda("cuDeviceGetCount"))? as usize;
        if ordinal >= count {
            return Err(Error::NoDevice(format!(
                "device {ordinal} requested but only {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(Error::cuda("creating the context"))?;
        // We pass raw pointers into our own arena, so cudarc's per-slice event tracking would
        // only add work (and events inside graph captures).
        // SAFETY: no cudarc slices are shared between streams in this crate.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(Error::cuda("creating the stream"))?;
        let side = ctx
            .new_stream()
            .map_err(Error::cuda("creating the side stream"))?;
        let kernels = Kernels::load(&ctx)?;
        let name = ctx.name().unwrap_or_else(|_| "unknown CUDA device".into());
        Ok(Gpu {
            ctx,
            stream,
            side,
            on_side: AtomicBool::new(false),
            kernels,
            counters: Arc::new(AtomicCounters::default()),
            name,
            gemm_tuner: GemmTuner::from_env(),
        })
    }

    /// The device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loaded kernels.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// The measured GEMM choices (and split-K workspace) of this device.
    pub fn gemm_tuner(&self) -> &GemmTuner {
        &self.gemm_tuner
    }

    /// Whether the stream is recording a graph capture (nothing may be timed or allocated).
    pub fn is_capturing(&self) -> Result<bool> {
        let status = self
            .stream
            .capture_status()
            .map_err(Error::cuda("cuStreamIsCapturing"))?;
        Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    /// The stream work is issued on: the GPU's stream, or inside the `side` closure of
    /// [`Gpu::fork_join`] the side stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        if self.on_side.load(Ordering::Relaxed) {
            &self.side
        } else {
            &self.stream
        }
    }

    /// Issues `side` on the side stream and then `main` on the stream, so the two may run
    /// concurrently: the side work starts after everything issued before the call and the
    /// stream waits for it before anything issued after the call (two events; inside a graph
    /// capture they become the graph's fork and join edges). The two closures must not write
    /// memory the other reads or writes. The side stream is joined back even when a closure
    /// fails, so a capture stays well-formed. One `Gpu` issues from one thread at a time.
    pub fn fork_join<T>(
        &self,
        side: impl FnOnce() -> Result<()>,
        main: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if self.on_side.load(Ordering::Relaxed) {
            return Err(Error::Plan("fork_join inside a fork_join side".into()));
        }
        self.side
            .join(&self.stream)
            .map_err(Error::cuda("forking the side stream"))?;
        self.on_side.store(true, Ordering::Relaxed);
        let side_result = side();
        self.on_side.store(false, Ordering::Relaxed);
        let main_result = side_result.and_then(|()| main());
        self.stream
            .join(&self.side)
            .map_err(Error::cuda("joining the side stream"))?;
        main_result
    }

    /// A snapshot of the allocation and copy counters.
    pub fn counters(&self) -> GpuCounters {
        let c = &self.counters;
        GpuCounters {
            device_allocations: c.device_allocations.load(Ordering::Relaxed),
            device_bytes: c.device_bytes.load(Ordering::Relaxed),
            uploads: c.uploads.load(Ordering::Relaxed),
            upload_bytes: c.upload_bytes.load(Ordering::Relaxed),
            downloads: c.downloads.load(Ordering::Relaxed),
            download_bytes: c.download_bytes.load(Ordering::Relaxed),
        }
    }

    /// (free, total) device memory in bytes as the driver reports it.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(Error::cuda("cuMemGetInfo"))
    }

    /// Allocates `bytes` of device memory (counted).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        DeviceBuffer::new(&self.ctx, bytes, self.counters.clone())
    }

    /// Allocates page-locked host memory. `upload_only` buffers are write-combined: fast for
    /// the host to fill and the device to read, slow for the host to read back.
    pub fn alloc_pinned(&self, bytes: usize, upload_only: bool) -> Result<PinnedBuffer> {
        PinnedBuffer::new(&self.ctx, bytes, upload_only)
    }

    /// Copies `src` into device memory at `dst` on the stream (asynchronous, counted).
    pub fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(Error::cuda("binding the context"))?;
        // SAFETY: `dst` points into a live device allocation of at least src.len() bytes; the
        // callers (arena views, device buffers) check sizes before calling.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(Error::cuda("host-to-device copy"))?;
        self.counters.uploads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .upload_bytes
            .fetch_add(src.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Copies device memory at `src` into `dst` on the stream (asynchronous, counted). The
    /// host buffer is valid only after [`Gpu::synchronize`].
    pub fn download(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(Error::cuda("binding the context"))?;
        // SAFETY: `src` points into a live device allocation of at least dst.len() bytes.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(Error::cuda("device-to-host copy"))?;
        self.counters.downloads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .download_bytes
            .fetch_add(dst.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Fills `bytes` of device memory at `dst` with `value` on the stream.
    pub fn memset(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(Error::cuda("binding the context"))?;
        // SAFETY: as for `upload`.
        unsafe { result::memset_d8_async(dst, value, bytes, self.stream.cu_stream()) }
            .map_err(Error::cuda("memset"))
    }

    /// Waits until all work issued so far has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(Error::cuda("stream synchronize"))
    }

    /// Records a timing event on the stream.
    pub fn record_event(&self) -> Result<CudaEvent> {
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        self.stream
            .record_event(Some(flags))
            .map_err(Error::cuda("recording an event"))
    }

    /// GPU milliseconds per repetition of `work`, issued `reps` times back to back between two
    /// events (back-to-back issue keeps launch gaps out of the measurement).
    pub fn time_ms(&self, reps: usize, mut work: impl FnMut() -> Result<()>) -> Result<f64> {
        let reps = reps.max(1);
        let start = self.record_event()?;
        for _ in 0..reps {
            work()?;
        }
        let end = self.record_event()?;
        Ok(self.elapsed_ms(&start, &end)? as f64 / reps as f64)
    }

    /// Milliseconds of GPU time between two recorded events (synchronises on `end`).
    pub fn elapsed_ms(&self, start: &CudaEvent, end: &CudaEvent) -> Result<f32> {
        end.synchronize()
            .map_err(Error::cuda("event synchronize"))?;
        start
            .elapsed_ms(end)
            .map_err(Error::cuda("cuEventElapsedTime"))
    }
}

//! Owned device and pinned host allocations. Device allocations are counted so a test can
//! prove that none happens after warm-up.

use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};

use super::AtomicCounters;
use crate::error::{Error, Result};

/// A raw device address, as kernels take it.
pub type DevicePtr = sys::CUdeviceptr;

/// One device allocation, freed on drop.
pub struct DeviceBuffer {
    ptr: DevicePtr,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl DeviceBuffer {
    pub(crate) fn new(
        ctx: &Arc<CudaContext>,
        bytes: usize,
        counters: Arc<AtomicCounters>,
    ) -> Result<DeviceBuffer> {
        ctx.bind_to_thread()
            .map_err(Error::cuda("binding the context"))?;
        // cuMemAlloc rejects 0 bytes; keep one byte so every buffer has a valid address.
        let size = bytes.max(1);
        // SAFETY: plain synchronous allocation; freed exactly once in Drop.
        let ptr = unsafe { result::malloc_sync(size) }.map_err(|e| Error::Cuda {
            op: "cuMemAlloc",
            message: format!("{e} (asked for {size} bytes)"),
        })?;
        counters.count_allocation(size);
        Ok(DeviceBuffer {
            ptr,
            bytes,
            ctx: ctx.clone(),
        })
    }

    /// The device address of the first byte.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; the context records them for later calls.
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by malloc_sync in `new`, freed once.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Page-locked host memory: the staging area for the frame upload and the packet download.
pub struct PinnedBuffer {
    ptr: *mut u8,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the buffer is plain host memory owned by this value.
unsafe impl Send for PinnedBuffer {}

impl PinnedBuffer {
    pub(crate) fn new(
        ctx: &Arc<CudaContext>,
        bytes: usize,
        write_combined: bool,
    ) -> Result<PinnedBuffer> {
        ctx.bind_to_thread()
            .map_err(Error::cuda("binding the context"))?;
        let flags = if write_combined {
            sys::CU_MEMHOSTALLOC_WRITECOMBINED
        } else {
            0
        };
        let size = bytes.max(1);
        // SAFETY: freed once in Drop.
        let ptr = unsafe { result::malloc_host(size, flags) }.map_err(|e| Error::Cuda {
            op: "cuMemHostAlloc",
            message: format!("{e} (asked for {size} pinned bytes)"),
        })? as *mut u8;
        // SAFETY: fresh allocation of `size` bytes; zeroing makes every byte initialised.
        unsafe { std::ptr::write_bytes(ptr, 0, size) };
        Ok(PinnedBuffer {
            ptr,
            bytes,
            ctx: ctx.clone(),
        })
    }

    /// The bytes, for reading. Only meaningful after the stream that wrote them synchronised.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live allocation of at least `bytes` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }

    /// The bytes, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by malloc_host in `new`, freed once.
            let _ = unsafe { result::free_host(self.ptr as *mut std::ffi::c_void) };
        }
    }
}

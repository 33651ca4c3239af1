//! The activation arena: every intermediate tensor of a plan gets an offset in ONE device
//! allocation, decided once by a liveness pass, so a frame never allocates.
//!
//! Planning is pure host logic (tested on CPU): each request carries its size and the first and
//! last plan step that touches it; two tensors may share bytes only if their step ranges are
//! disjoint. Placement is greedy, largest first, at the lowest aligned offset that collides with
//! no already-placed tensor whose lifetime overlaps (the usual "greedy by size" planner of
//! inference runtimes, within a few percent of optimal on real graphs).

use super::{DeviceBuffer, DevicePtr, Gpu};
use crate::error::{Error, Result};

/// Every tensor starts at a multiple of this many bytes (full 128-byte lines for any access
/// width, and room for 16-byte vector loads).
pub const ARENA_ALIGNMENT: usize = 256;

/// Handle to a tensor requested from an [`ArenaPlanner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorId(usize);

#[derive(Debug, Clone)]
struct Request {
    name: String,
    bytes: usize,
    first_step: usize,
    last_step: usize,
}

/// Collects tensor requests, then assigns offsets.
#[derive(Debug, Default)]
pub struct ArenaPlanner {
    requests: Vec<Request>,
}

impl ArenaPlanner {
    /// An empty planner.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests `bytes` for a tensor live from `first_step` to `last_step` (inclusive).
    pub fn request(
        &mut self,
        name: impl Into<String>,
        bytes: usize,
        first_step: usize,
        last_step: usize,
    ) -> Result<TensorId> {
        let name = name.into();
        if last_step < first_step {
            return Err(Error::Plan(format!(
                "tensor '{name}': last step {last_step} before first step {first_step}"
            )));
        }
        self.requests.push(Request {
            name,
            bytes,
            first_step,
            last_step,
        });
        Ok(TensorId(self.requests.len() - 1))
    }

    /// Assigns every request an offset; the plan's peak is the arena size.
    pub fn plan(self) -> ArenaPlan {
        let mut order: Vec<usize> = (0..self.requests.len()).collect();
        // Largest first; ties by earlier start so the result does not depend on request order.
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&self.requests[a], &self.requests[b]);
            rb.bytes
                .cmp(&ra.bytes)
                .then(ra.first_step.cmp(&rb.first_step))
                .then(a.cmp(&b))
        });
        let mut offsets = vec![0usize; self.requests.len()];
        let mut placed: Vec<usize> = Vec::new();
        let mut peak = 0usize;
        for &i in &order {
            let r = &self.requests[i];
            let size = align_up(r.bytes.max(1));
            // Byte ranges of placed tensors alive at the same time as `r`, by offset.
            let mut busy: Vec<(usize, usize)> = placed
                .iter()
                .filter(|&&j| {
                    let o = &self.requests[j];
                    o.first_step <= r.last_step && r.first_step <= o.last_step
                })
                .map(|&j| {
                    (
                        offsets[j],
                        offsets[j] + align_up(self.requests[j].bytes.max(1)),
                    )
                })
                .collect();
            busy.sort_unstable();
            let mut candidate = 0usize;
            for (start, end) in busy {
                if candidate + size <= start {
                    break;
                }
                candidate = candidate.max(end);
            }
            offsets[i] = candidate;
            peak = peak.max(candidate + size);
            placed.push(i);
        }
        ArenaPlan {
            requests: self.requests,
            offsets,
            peak,
        }
    }
}

/// The outcome of planning: an offset per tensor and the arena's size.
#[derive(Debug, Clone)]
pub struct ArenaPlan {
    requests: Vec<Request>,
    offsets: Vec<usize>,
    peak: usize,
}

impl ArenaPlan {
    /// Bytes the arena needs.
    pub fn peak_bytes(&self) -> usize {
        self.peak
    }

    /// Sum of all requested sizes, i.e. what one allocation per tensor would take.
    pub fn unshared_bytes(&self) -> usize {
        self.requests.iter().map(|r| align_up(r.bytes.max(1))).sum()
    }

    /// Offset and size of a tensor.
    pub fn placement(&self, id: TensorId) -> (usize, usize) {
        (self.offsets[id.0], self.requests[id.0].bytes)
    }

    /// Name, byte range and live steps of every tensor (for reports and tests).
    pub fn entries(&self) -> impl Iterator<Item = (&str, usize, usize, usize, usize)> + '_ {
        self.requests
            .iter()
            .zip(&self.offsets)
            .map(|(r, &o)| (r.name.as_str(), o, r.bytes, r.first_step, r.last_step))
    }
}

/// A planned arena backed by one device allocation.
pub struct Arena {
    plan: ArenaPlan,
    buffer: DeviceBuffer,
}

impl Arena {
    /// Allocates the arena for `plan` (the only activation allocation of a pipeline).
    pub fn allocate(gpu: &Gpu, plan: ArenaPlan) -> Result<Arena> {
        let buffer = gpu.alloc(plan.peak_bytes())?;
        Ok(Arena { plan, buffer })
    }

    /// Device address of a tensor.
    pub fn ptr(&self, id: TensorId) -> DevicePtr {
        self.buffer.ptr() + self.plan.placement(id).0 as DevicePtr
    }

    /// Size in bytes of a tensor.
    pub fn bytes(&self, id: TensorId) -> usize {
        self.plan.placement(id).1
    }

    /// Bytes allocated for the whole arena.
    pub fn peak_bytes(&self) -> usize {
        self.plan.peak_bytes()
    }

    /// The plan the arena was built from.
    pub fn plan(&self) -> &ArenaPlan {
        &self.plan
    }
}

fn align_up(bytes: usize) -> usize {
    bytes.div_ceil(ARENA_ALIGNMENT) * ARENA_ALIGNMENT
}

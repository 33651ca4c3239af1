//! Frame-to-frame tracker on the GPU. Each frame: the live tracks and the frame's detections
//! get a `1 - IoU` cost with a gate (pairs below `iou_gate`, or of different classes when
//! `match_class`, are forbidden), the auction finds the maximum-cardinality minimum-cost
//! matching, matched tracks follow their detection, unmatched tracks age and are dropped after
//! `max_age` frames, and unmatched detections open new tracks with fresh ids (1, 2, ...; 0
//! means "no id", e.g. when every slot is taken). State, cost and ids stay on the device.
//!
//! [`CpuTracker`] is the CPU model of the same logic (same f32 IoU bit for bit, same auction,
//! same slot and id order); the CI tests exercise it and the GPU tests compare against it.

use bytemuck::{Pod, Zeroable};
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::solver::{download_into, launch_solve, AssignInfo, AssignProblem, SolveLaunch};
use super::{AssignConfig, AssignError};
use crate::error::{Error, Result};
use crate::gpu::{DeviceBuffer, DevicePtr, Gpu};

/// Tracker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// Track slots (live tracks at most).
    pub capacity: usize,
    /// Detections per frame at most.
    pub max_detections: usize,
    /// Minimum IoU for a track and a detection to match.
    pub iou_gate: f32,
    /// Frames a track survives without a match.
    pub max_age: u32,
    /// Only detections of the track's label match it (when labels are given).
    pub match_class: bool,
    /// The auction's settings.
    pub assign: AssignConfig,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            capacity: 256,
            max_detections: 300,
            iou_gate: 0.3,
            max_age: 30,
            match_class: true,
            assign: AssignConfig::default(),
        }
    }
}

impl TrackerConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), AssignError> {
        if self.capacity == 0 || self.capacity > super::MAX_SIDE {
            return Err(AssignError::Config(format!(
                "tracker capacity {} outside 1..={}",
                self.capacity,
                super::MAX_SIDE
            )));
        }
        if self.max_detections > super::MAX_SIDE {
            return Err(AssignError::Config(format!(
                "max_detections {} above {}",
                self.max_detections,
                super::MAX_SIDE
            )));
        }
        if !(self.iou_gate > 0.0 && self.iou_gate <= 1.0) {
            return Err(AssignError::Config(format!(
                "iou_gate {} outside (0, 1]",
                self.iou_gate
            )));
        }
        self.assign.validate()
    }
}

/// Mirrors `TrackSlot` in kernels/assign.cu.
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct TrackSlot {
    /// x0, y0, x1, y1 of the last matched detection.
    pub bbox: [f32; 4],
    /// Persistent id (>= 1).
    pub id: u32,
    /// Consecutive frames without a match.
    pub age: u32,
    /// Class label (-1 when detections carry none).
    pub label: i32,
    /// 1 while the track lives.
    pub active: u32,
}

/// Mirrors `TrackerHeader`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct TrackerHeader {
    next_id: u32,
    live: u32,
    frame: u32,
    rows: u32,
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct TrackerParams {
    capacity: u32,
    max_detections: u32,
    max_age: u32,
    match_class: u32,
    iou_gate: f32,
    pad: u32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for TrackerParams {}

/// A live track, as read back for inspection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Track {
    /// Persistent id.
    pub id: u32,
    /// Slot it occupies.
    pub slot: usize,
    /// Last matched box, xyxy.
    pub bbox: [f32; 4],
    /// Frames since its last match.
    pub age: u32,
    /// Class label or -1.
    pub label: i32,
}

fn live_tracks(slots: &[TrackSlot]) -> Vec<Track> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.active != 0)
        .map(|(slot, s)| Track {
            id: s.id,
            slot,
            bbox: s.bbox,
            age: s.age,
            label: s.label,
        })
        .collect()
}

/// One frame's detections in device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerDetections {
    /// f32 `[max_detections, 4]` xyxy boxes.
    pub boxes: DevicePtr,
    /// i32 `[max_detections]` labels, or 0 for none.
    pub labels: DevicePtr,
    /// Device u32: how many detections this frame has (clamped to max_detections).
    pub count: DevicePtr,
}

/// The GPU tracker: state and workspace on the device.
pub struct GpuTracker {
    cfg: TrackerConfig,
    slots: DeviceBuffer,
    header: DeviceBuffer,
    live: DeviceBuffer,
    costs: DeviceBuffer,
    problem: DeviceBuffer,
    scratch: DeviceBuffer,
    row_to_col: DeviceBuffer,
    col_to_row: DeviceBuffer,
    info: DeviceBuffer,
}

impl GpuTracker {
    /// Allocates the tracker and starts it empty.
    pub fn new(gpu: &Gpu, cfg: TrackerConfig) -> Result<GpuTracker> {
        cfg.validate()?;
        let pairs = cfg.capacity * cfg.max_detections;
        let tracker = GpuTracker {
            cfg,
            slots: gpu.alloc(cfg.capacity * std::mem::size_of::<TrackSlot>())?,
            header: gpu.alloc(std::mem::size_of::<TrackerHeader>())?,
            live: gpu.alloc(cfg.capacity * 4)?,
            costs: gpu.alloc(pairs * 4)?,
            problem: gpu.alloc(std::mem::size_of::<AssignProblem>())?,
            scratch: gpu.alloc(pairs * 4)?,
            row_to_col: gpu.alloc(cfg.capacity * 4)?,
            col_to_row: gpu.alloc(cfg.max_detections * 4)?,
            info: gpu.alloc(std::mem::size_of::<AssignInfo>())?,
        };
        tracker.reset(gpu)?;
        Ok(tracker)
    }

    /// Drops every track; ids start again at 1.
    pub fn reset(&self, gpu: &Gpu) -> Result<()> {
        gpu.memset(self.slots.ptr(), 0, self.slots.len())?;
        let header = TrackerHeader {
            next_id: 1,
            ..Default::default()
        };
        gpu.upload(self.header.ptr(), bytemuck::bytes_of(&header))
    }

    fn params(&self) -> TrackerParams {
        TrackerParams {
            capacity: self.cfg.capacity as u32,
            max_detections: self.cfg.max_detections as u32,
            max_age: self.cfg.max_age,
            match_class: self.cfg.match_class as u32,
            iou_gate: self.cfg.iou_gate,
            pad: 0,
        }
    }

    /// Enqueues one frame: cost, auction, update. `ids` receives u32 `[max_detections]`: the
    /// track id of each detection (0 = none). No allocation, no synchronisation.
    pub fn update(&self, gpu: &Gpu, dets: &TrackerDetections, ids: DevicePtr) -> Result<()> {
        let params = self.params();
        let one_block = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (slots, header, live) = (self.slots.ptr(), self.header.ptr(), self.live.ptr());
        let (costs, problem) = (self.costs.ptr(), self.problem.ptr());
        let mut launch = gpu.stream().launch_builder(&gpu.kernels().tracker_cost);
        launch
            .arg(&slots)
            .arg(&header)
            .arg(&dets.boxes)
            .arg(&dets.labels)
            .arg(&dets.count)
            .arg(&params)
            .arg(&live)
            .arg(&costs)
            .arg(&problem);
        // SAFETY: argument order and types match the kernel; buffers sized in `new` for
        // capacity x max_detections, which the kernel never exceeds.
        unsafe { launch.launch(one_block) }.map_err(|e| Error::Launch {
            kernel: "tracker_cost",
            message: e.to_string(),
        })?;
        launch_solve(
            gpu,
            &self.cfg.assign,
            &SolveLaunch {
                costs,
                problems: problem,
                count: 1,
                rows: 0,
                cols: 0,
                ld: 0,
                stride: 0,
                scratch: self.scratch.ptr(),
                row_to_col: self.row_to_col.ptr(),
                col_to_row: self.col_to_row.ptr(),
                info: self.info.ptr(),
                capacity: self.cfg.capacity.max(self.cfg.max_detections),
                persons: self.cfg.capacity.min(self.cfg.max_detections),
            },
        )?;
        let (r2c, c2r) = (self.row_to_col.ptr(), self.col_to_row.ptr());
        let mut launch = gpu.stream().launch_builder(&gpu.kernels().tracker_update);
        launch
            .arg(&slots)
            .arg(&header)
            .arg(&dets.boxes)
            .arg(&dets.labels)
            .arg(&dets.count)
            .arg(&params)
            .arg(&live)
            .arg(&r2c)
            .arg(&c2r)
            .arg(&ids);
        // SAFETY: as above; `ids` holds max_detections u32 (the caller's contract).
        unsafe { launch.launch(one_block) }.map_err(|e| Error::Launch {
            kernel: "tracker_update",
            message: e.to_string(),
        })?;
        Ok(())
    }

    /// Downloads the live tracks (synchronises).
    pub fn read_tracks(&self, gpu: &Gpu) -> Result<Vec<Track>> {
        let mut slots = vec![TrackSlot::default(); self.cfg.capacity];
        download_into(gpu, &mut slots, self.slots.ptr())?;
        gpu.synchronize()?;
        Ok(live_tracks(&slots))
    }

    /// Status of the last frame's solve (synchronises): Ok, or why it failed (then no track
    /// matched that frame).
    pub fn last_solve(&self, gpu: &Gpu) -> Result<()> {
        let mut info = [AssignInfo::default()];
        download_into(gpu, &mut info, self.info.ptr())?;
        gpu.synchronize()?;
        let status =
            super::Status::from_code(info[0].status).ok_or(AssignError::UnknownStatus {
                matrix: 0,
                code: info[0].status,
            })?;
        match super::status_error(0, status, info[0].rounds, self.cfg.capacity) {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// IoU of two xyxy boxes, the same f32 operations as `iou_exact` in kernels/assign.cu.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area_a = (a[2] - a[0]).max(0.0) * (a[3] - a[1]).max(0.0);
    let area_b = (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0);
    let union = area_a + area_b - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// CPU model of [`GpuTracker`].
#[derive(Debug, Clone)]
pub struct CpuTracker {
    cfg: TrackerConfig,
    slots: Vec<TrackSlot>,
    next_id: u32,
}

impl CpuTracker {
    /// An empty tracker.
    pub fn new(cfg: TrackerConfig) -> Result<CpuTracker, AssignError> {
        cfg.validate()?;
        Ok(CpuTracker {
            cfg,
            slots: vec![TrackSlot::default(); cfg.capacity],
            next_id: 1,
        })
    }

    /// The live tracks.
    pub fn tracks(&self) -> Vec<Track> {
        live_tracks(&self.slots)
    }

    /// One frame: returns each detection's track id (0 = none), like `GpuTracker::update`.
    pub fn update(
        &mut self,
        boxes: &[[f32; 4]],
        labels: Option<&[i32]>,
    ) -> Result<Vec<u32>, AssignError> {
        let dets = boxes.len().min(self.cfg.max_detections);
        if labels.is_some_and(|l| l.len() < dets) {
            return Err(AssignError::Shape(format!(
                "{dets} detections but fewer labels"
            )));
        }
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&s| self.slots[s].active != 0)
            .collect();
        let rows = live.len();
        let mut cost = Vec::with_capacity(rows * dets);
        for &s in &live {
            let t = &self.slots[s];
            for (c, d) in boxes.iter().take(dets).enumerate() {
                let v = iou(&t.bbox, d);
                let same = !self.cfg.match_class || labels.is_none_or(|l| l[c] == t.label);
                cost.push(if same && v >= self.cfg.iou_gate {
                    1.0 - v
                } else {
                    f32::INFINITY
                });
            }
        }
        // A failed solve leaves everything unmatched, as on the GPU.
        let (row_to_col, col_to_row) =
            match super::cpu::solve(&cost, rows, dets, dets, &self.cfg.assign) {
                Ok(a) => (a.row_to_col, a.col_to_row),
                Err(_) => (vec![-1; rows], vec![-1; dets]),
            };
        let mut ids = vec![0u32; dets];
        for (r, &s) in live.iter().enumerate() {
            let t = &mut self.slots[s];
            if let Ok(c) = usize::try_from(row_to_col[r]) {
                t.bbox = boxes[c];
                t.age = 0;
                if let Some(l) = labels {
                    t.label = l[c];
                }
                ids[c] = t.id;
            } else {
                t.age += 1;
                if t.age > self.cfg.max_age {
                    t.active = 0;
                }
            }
        }
        let free: Vec<usize> = (0..self.slots.len())
            .filter(|&s| self.slots[s].active == 0)
            .collect();
        let open = (0..dets).filter(|&c| col_to_row[c] < 0);
        let mut opened = 0u32;
        for (k, c) in open.enumerate() {
            let Some(&s) = free.get(k) else { break };
            self.slots[s] = TrackSlot {
                bbox: boxes[c],
                id: self.next_id + k as u32,
                age: 0,
                label: labels.map_or(-1, |l| l[c]),
                active: 1,
            };
            ids[c] = self.slots[s].id;
            opened += 1;
        }
        self.next_id += opened;
        Ok(ids)
    }
}

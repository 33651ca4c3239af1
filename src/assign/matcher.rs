//! D-FINE's `HungarianMatcher` on the GPU: the matching cost (`matcher_cost` in
//! kernels/assign.cu) is written straight into the auction's ragged batch, then solved per
//! image without leaving the device. `return_topk` (one-to-many matching) repeats the solve
//! with the queries matched so far forbidden.
//!
//! Semantics follow `zoo/dfine/matcher.py` of d-fine-project 1.0.0 with `use_focal_loss=True`:
//! cost = w_bbox * L1(cxcywh) + w_class * focal + w_giou * (-GIoU(xyxy)), then
//! `nan_to_num(nan=1.0)` (so +-inf become +-FLT_MAX). Top-k: the official code writes
//! `c[:, np.stack((rows, cols))] = 1e6` on the `[bs, queries, t]` chunk, which masks query rows
//! indexed by the matched rows *and* by the matched target indices (and raises IndexError once
//! a target index reaches the number of queries). We implement the intent: the queries matched
//! in earlier rounds are excluded (+inf) from later rounds. Whenever at least `t` queries remain
//! this has the same optimum as masking with 1e6; otherwise the surplus targets stay unmatched
//! in that round instead of being paired with arbitrary masked queries.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::solver::{
    assemble, download_into, launch_solve, AssignInfo, AssignProblem, SolveLaunch, SolvedShape,
};
use super::{AssignConfig, AssignError, Assignment};
use crate::error::{Error, Result};
use crate::gpu::{DeviceBuffer, DevicePtr, Gpu};

/// Matcher weights and focal-loss parameters (defaults: D-FINE's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatcherConfig {
    /// Weight of the focal class cost.
    pub cost_class: f32,
    /// Weight of the L1 box cost.
    pub cost_bbox: f32,
    /// Weight of the -GIoU cost.
    pub cost_giou: f32,
    /// Focal alpha.
    pub alpha: f32,
    /// Focal gamma.
    pub gamma: f32,
    /// The auction's settings.
    pub assign: AssignConfig,
}

impl Default for MatcherConfig {
    fn default() -> Self {
        MatcherConfig {
            cost_class: 2.0,
            cost_bbox: 5.0,
            cost_giou: 2.0,
            alpha: 0.25,
            gamma: 2.0,
            assign: AssignConfig::default(),
        }
    }
}

impl MatcherConfig {
    /// The official matcher asserts that not all weights are 0.
    pub fn validate(&self) -> Result<(), AssignError> {
        if self.cost_class == 0.0 && self.cost_bbox == 0.0 && self.cost_giou == 0.0 {
            return Err(AssignError::Config("all matcher costs are 0".into()));
        }
        let all = [
            self.cost_class,
            self.cost_bbox,
            self.cost_giou,
            self.alpha,
            self.gamma,
        ];
        if all.iter().any(|v| !v.is_finite()) {
            return Err(AssignError::Config(format!(
                "non-finite matcher setting in {all:?}"
            )));
        }
        self.assign.validate()
    }
}

/// Device inputs of one batch, the layout of the official `outputs` / `targets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatcherInputs {
    /// `pred_logits`, f32 `[batch, queries, classes]`.
    pub logits: DevicePtr,
    /// `pred_boxes`, f32 `[batch, queries, 4]` cxcywh.
    pub boxes: DevicePtr,
    /// Target labels of all images concatenated, i32 `[total]`.
    pub labels: DevicePtr,
    /// Target boxes of all images concatenated, f32 `[total, 4]` cxcywh.
    pub target_boxes: DevicePtr,
    /// i32 `[batch + 1]`: image b's targets are `offsets[b]..offsets[b + 1]`.
    pub target_offsets: DevicePtr,
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct MatcherParams {
    alpha: f32,
    gamma: f32,
    w_class: f32,
    w_bbox: f32,
    w_giou: f32,
    queries: u32,
    classes: u32,
    max_targets: u32,
    max_total: u32,
    pad: u32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for MatcherParams {}

/// Matches of every round: `rounds[r][b]` is image b's assignment in round r (queries are
/// rows, targets columns).
#[derive(Debug, Clone, PartialEq)]
pub struct TopKMatches {
    /// Per round, per image.
    pub rounds: Vec<Vec<Assignment>>,
}

impl TopKMatches {
    /// Image b's (query, target) indices over all rounds, round after round and in query
    /// order within a round: the official `indices` / `indices_o2m` entry.
    pub fn indices(&self, image: usize) -> (Vec<i64>, Vec<i64>) {
        let mut queries = Vec::new();
        let mut targets = Vec::new();
        for round in &self.rounds {
            if let Some(a) = round.get(image) {
                for (q, t) in a.pairs() {
                    queries.push(q as i64);
                    targets.push(t as i64);
                }
            }
        }
        (queries, targets)
    }
}

/// Sizes a [`Matcher`] is allocated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatcherShape {
    /// Images per batch.
    pub batch: usize,
    /// Predictions (queries) per image.
    pub queries: usize,
    /// Classes of the logits.
    pub classes: usize,
    /// Targets per image at most.
    pub max_targets: usize,
    /// Targets over the whole batch at most.
    pub max_total: usize,
    /// Rounds of top-k matching at most (1 = plain matching).
    pub max_k: usize,
}

/// The matcher's device workspace for batches up to the sizes given to [`Matcher::new`].
pub struct Matcher {
    cfg: MatcherConfig,
    batch: usize,
    queries: usize,
    classes: usize,
    max_targets: usize,
    max_total: usize,
    max_k: usize,
    costs: DeviceBuffer,
    problems: DeviceBuffer,
    scratch: DeviceBuffer,
    row_to_col: DeviceBuffer,
    col_to_row: DeviceBuffer,
    info: DeviceBuffer,
    offsets: DevicePtr,
    last_k: usize,
}

impl Matcher {
    /// Allocates for batches up to `shape`.
    pub fn new(gpu: &Gpu, cfg: MatcherConfig, shape: &MatcherShape) -> Result<Matcher> {
        cfg.validate()?;
        let MatcherShape {
            batch,
            queries,
            classes,
            max_targets,
            max_total,
            max_k,
        } = *shape;
        if batch == 0 || queries == 0 || classes == 0 || max_k == 0 {
            return Err(AssignError::Shape(format!(
                "matcher needs batch, queries, classes and k > 0 (got {batch}, {queries}, {classes}, {max_k})"
            ))
            .into());
        }
        let elems = queries * max_total;
        Ok(Matcher {
            cfg,
            batch,
            queries,
            classes,
            max_targets,
            max_total,
            max_k,
            costs: gpu.alloc(elems * 4)?,
            problems: gpu.alloc(batch * std::mem::size_of::<AssignProblem>())?,
            scratch: gpu.alloc(elems * 4)?,
            row_to_col: gpu.alloc(max_k * batch * queries * 4)?,
            col_to_row: gpu.alloc(max_k * max_total * 4)?,
            info: gpu.alloc(max_k * batch * std::mem::size_of::<AssignInfo>())?,
            offsets: 0,
            last_k: 0,
        })
    }

    /// Device cost matrices of the last batch: image b's `queries x t_b` matrix starts at
    /// element `queries * offsets[b]` (f32, row-major, +inf where top-k masked a query).
    pub fn costs(&self) -> DevicePtr {
        self.costs.ptr()
    }

    /// Enqueues the cost kernel only.
    pub fn compute_cost(&mut self, gpu: &Gpu, inputs: &MatcherInputs) -> Result<()> {
        let c = &self.cfg;
        let params = MatcherParams {
            alpha: c.alpha,
            gamma: c.gamma,
            w_class: c.cost_class,
            w_bbox: c.cost_bbox,
            w_giou: c.cost_giou,
            queries: self.queries as u32,
            classes: self.classes as u32,
            max_targets: self.max_targets as u32,
            max_total: self.max_total as u32,
            pad: 0,
        };
        let per_image = (self.queries * self.max_targets)
            .div_ceil(256)
            .clamp(1, 1024);
        let launch_cfg = LaunchConfig {
            grid_dim: (per_image as u32, self.batch as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let costs = self.costs.ptr();
        let problems = self.problems.ptr();
        let mut launch = gpu.stream().launch_builder(&gpu.kernels().matcher_cost);
        launch
            .arg(&inputs.logits)
            .arg(&inputs.boxes)
            .arg(&inputs.labels)
            .arg(&inputs.target_boxes)
            .arg(&inputs.target_offsets)
            .arg(&params)
            .arg(&costs)
            .arg(&problems);
        // SAFETY: argument order and types match the kernel; the kernel bounds every write by
        // max_targets / max_total, which size the buffers allocated in `new`.
        unsafe { launch.launch(launch_cfg) }.map_err(|e| Error::Launch {
            kernel: "matcher_cost",
            message: e.to_string(),
        })?;
        self.offsets = inputs.target_offsets;
        Ok(())
    }

    /// Enqueues cost construction and `k` rounds of matching (k = 1: the plain matcher).
    pub fn run(&mut self, gpu: &Gpu, inputs: &MatcherInputs, k: usize) -> Result<()> {
        if k == 0 || k > self.max_k {
            return Err(AssignError::Shape(format!(
                "k = {k} outside 1..={} of this matcher",
                self.max_k
            ))
            .into());
        }
        self.compute_cost(gpu, inputs)?;
        for round in 0..k {
            if round > 0 {
                self.mask_matched(gpu, round - 1)?;
            }
            launch_solve(
                gpu,
                &self.cfg.assign,
                &SolveLaunch {
                    costs: self.costs.ptr(),
                    problems: self.problems.ptr(),
                    count: self.batch,
                    rows: 0,
                    cols: 0,
                    ld: 0,
                    stride: 0,
                    scratch: self.scratch.ptr(),
                    row_to_col: self.row_to_col.ptr()
                        + (round * self.batch * self.queries * 4) as u64,
                    col_to_row: self.col_to_row.ptr() + (round * self.max_total * 4) as u64,
                    info: self.info.ptr()
                        + (round * self.batch * std::mem::size_of::<AssignInfo>()) as u64,
                    capacity: self.queries.max(self.max_targets),
                    persons: self.queries.min(self.max_targets),
                },
            )?;
        }
        self.last_k = k;
        Ok(())
    }

    fn mask_matched(&self, gpu: &Gpu, round: usize) -> Result<()> {
        let blocks = (self.queries * self.max_targets)
            .div_ceil(256)
            .clamp(1, 1024);
        let launch_cfg = LaunchConfig {
            grid_dim: (blocks as u32, self.batch as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let costs = self.costs.ptr();
        let problems = self.problems.ptr();
        let r2c = self.row_to_col.ptr() + (round * self.batch * self.queries * 4) as u64;
        let max_targets = self.max_targets as u32;
        let mut launch = gpu
            .stream()
            .launch_builder(&gpu.kernels().matcher_mask_rows);
        launch
            .arg(&costs)
            .arg(&problems)
            .arg(&r2c)
            .arg(&max_targets);
        // SAFETY: argument order and types match the kernel; descriptors come from matcher_cost.
        unsafe { launch.launch(launch_cfg) }.map_err(|e| Error::Launch {
            kernel: "matcher_mask_rows",
            message: e.to_string(),
        })?;
        Ok(())
    }

    fn read_offsets(&self, gpu: &Gpu) -> Result<Vec<i32>> {
        if self.offsets == 0 {
            return Err(AssignError::Shape("the matcher has not run".into()).into());
        }
        let mut offsets = vec![0i32; self.batch + 1];
        download_into(gpu, &mut offsets, self.offsets)?;
        Ok(offsets)
    }

    /// Per-image matrix shapes from offsets, rejecting what the kernel rejected.
    fn shapes(&self, offsets: &[i32]) -> Result<Vec<SolvedShape>> {
        (0..self.batch)
            .map(|b| {
                let (t0, t1) = (offsets[b], offsets[b + 1]);
                let valid = 0 <= t0
                    && t0 <= t1
                    && t1 as usize <= self.max_total
                    && (t1 - t0) as usize <= self.max_targets;
                if !valid {
                    return Err(AssignError::Shape(format!(
                        "image {b}: target offsets {t0}..{t1} outside the matcher's capacity ({} per image, {} total)",
                        self.max_targets, self.max_total
                    ))
                    .into());
                }
                Ok(SolvedShape {
                    rows: self.queries,
                    cols: (t1 - t0) as usize,
                    row_offset: b * self.queries,
                    col_offset: t0 as usize,
                })
            })
            .collect()
    }

    /// Downloads the cost matrices of the last run (synchronises), one `queries x t_b`
    /// row-major matrix per image.
    pub fn read_costs(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        let offsets = self.read_offsets(gpu)?;
        gpu.synchronize()?;
        let shapes = self.shapes(&offsets)?;
        let total = offsets[self.batch] as usize;
        let mut all = vec![0f32; self.queries * total];
        download_into(gpu, &mut all, self.costs.ptr())?;
        gpu.synchronize()?;
        Ok(shapes
            .iter()
            .map(|s| {
                let start = self.queries * s.col_offset;
                all[start..start + self.queries * s.cols].to_vec()
            })
            .collect())
    }

    /// Downloads the matches of the last [`Matcher::run`] (synchronises).
    pub fn read(&self, gpu: &Gpu) -> Result<TopKMatches> {
        let offsets = self.read_offsets(gpu)?;
        let k = self.last_k;
        let mut info = vec![AssignInfo::default(); k * self.batch];
        let mut r2c = vec![0i32; k * self.batch * self.queries];
        let mut c2r = vec![0i32; k * self.max_total];
        download_into(gpu, &mut info, self.info.ptr())?;
        download_into(gpu, &mut r2c, self.row_to_col.ptr())?;
        download_into(gpu, &mut c2r, self.col_to_row.ptr())?;
        gpu.synchronize()?;
        let shapes = self.shapes(&offsets)?;
        let mut rounds = Vec::with_capacity(k);
        for round in 0..k {
            let info = &info[round * self.batch..(round + 1) * self.batch];
            let r2c =
                &r2c[round * self.batch * self.queries..(round + 1) * self.batch * self.queries];
            let c2r = &c2r[round * self.max_total..(round + 1) * self.max_total];
            let solved: Result<Vec<Assignment>, AssignError> =
                assemble(&shapes, info, r2c, c2r).into_iter().collect();
            rounds.push(solved?);
        }
        Ok(TopKMatches { rounds })
    }
}

/// CPU reference of the matching cost of one image, following the official op order in f32:
/// `queries x targets`, row-major. Used by the CI tests; the GPU tests compare the kernel
/// with the official PyTorch matcher's output instead.
pub fn cost_cpu(
    cfg: &MatcherConfig,
    logits: &[f32],
    boxes: &[[f32; 4]],
    classes: usize,
    labels: &[i32],
    targets: &[[f32; 4]],
) -> Vec<f32> {
    let focal_pow = |x: f32| {
        if cfg.gamma == 2.0 {
            x * x
        } else {
            (x as f64).powf(cfg.gamma as f64) as f32
        }
    };
    // exp and ln in f64, rounded to f32 once (the kernel does the same: fast math must not
    // move p by an ulp, which log(1 - p + 1e-8) would amplify near p = 1).
    let exp32 = |x: f32| (x as f64).exp() as f32;
    let ln32 = |x: f32| (x as f64).ln() as f32;
    let xyxy = |b: &[f32; 4]| {
        let (hw, hh) = (0.5 * b[2].max(0.0), 0.5 * b[3].max(0.0));
        [b[0] - hw, b[1] - hh, b[0] + hw, b[1] + hh]
    };
    let mut out = Vec::with_capacity(boxes.len() * targets.len());
    for (qi, a) in boxes.iter().enumerate() {
        for (t, g) in targets.iter().enumerate() {
            let label = labels[t];
            let logit = if label >= 0 && (label as usize) < classes {
                logits[qi * classes + label as usize]
            } else {
                f32::NAN
            };
            let prob = 1.0 / (1.0 + exp32(-logit));
            let neg = (1.0 - cfg.alpha) * focal_pow(prob) * -ln32(1.0 - prob + 1e-8);
            let pos = cfg.alpha * focal_pow(1.0 - prob) * -ln32(prob + 1e-8);
            let class_cost = pos - neg;
            let l1 = (a[0] - g[0]).abs()
                + (a[1] - g[1]).abs()
                + (a[2] - g[2]).abs()
                + (a[3] - g[3]).abs();
            let (x, y) = (xyxy(a), xyxy(g));
            let area1 = (x[2] - x[0]) * (x[3] - x[1]);
            let area2 = (y[2] - y[0]) * (y[3] - y[1]);
            let iw = (x[2].min(y[2]) - x[0].max(y[0])).max(0.0);
            let ih = (x[3].min(y[3]) - x[1].max(y[1])).max(0.0);
            let inter = iw * ih;
            let union = area1 + area2 - inter;
            let iou = inter / union;
            let ew = (x[2].max(y[2]) - x[0].min(y[0])).max(0.0);
            let eh = (x[3].max(y[3]) - x[1].min(y[1])).max(0.0);
            let area = ew * eh;
            let giou = iou - (area - union) / area;
            let c = cfg.cost_bbox * l1 + cfg.cost_class * class_cost + cfg.cost_giou * (-giou);
            out.push(if c.is_nan() {
                1.0
            } else if c == f32::INFINITY {
                f32::MAX
            } else if c == f32::NEG_INFINITY {
                f32::MIN
            } else {
                c
            });
        }
    }
    out
}

/// CPU reference of the whole matcher for one image: cost, then `k` rounds with matched
/// queries forbidden (the intended top-k semantics above), solved by the CPU auction model.
pub fn match_cpu(
    cost: &[f32],
    queries: usize,
    targets: usize,
    k: usize,
    cfg: &AssignConfig,
) -> Result<Vec<Assignment>, AssignError> {
    let mut c = cost.to_vec();
    let mut rounds = Vec::with_capacity(k);
    for _ in 0..k {
        let a = super::cpu::solve(&c, queries, targets, targets, cfg)?;
        for (q, _) in a.pairs() {
            c[q * targets..(q + 1) * targets].fill(f32::INFINITY);
        }
        rounds.push(a);
    }
    Ok(rounds)
}

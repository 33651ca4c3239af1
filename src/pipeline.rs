//! The per-frame pipeline: frame in (one upload), every stage on the GPU as one CUDA graph,
//! result packet out (one download). Stages so far: preprocessing and packet assembly; the
//! detector and segmenter plug in between them as they land.

use std::time::Instant;

use half::f16;

use crate::error::{Error, Result};
use crate::frame::{
    stage_frame, Frame, FrameHeader, PixelFormat, DFINE_INPUT_SIZE, FRAME_PIXEL_OFFSET,
    SAM_INPUT_SIZE,
};
use crate::gpu::{Arena, ArenaPlanner, Gpu, Graph, PinnedBuffer, TensorId};
use crate::ops::packet::launch_assemble_packet_header;
use crate::ops::preprocess::{input_bytes, launch_preprocess, PreprocessIo};
use crate::packet::{PacketLayout, ResultPacket};

/// What a pipeline is built for; fixed for its lifetime.
#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    /// CUDA device ordinal.
    pub device: usize,
    /// Widest frame accepted (sizes the upload staging buffers).
    pub max_width: u32,
    /// Tallest frame accepted.
    pub max_height: u32,
    /// Sections of the result packet.
    pub packet: PacketLayout,
}

/// Largest frame side a pipeline accepts: keeps every resampling span within the kernel's
/// weight tables (kMaxTaps in kernels/preprocess.cu).
pub const MAX_FRAME_SIDE: u32 = 16384;

/// Checks a configured maximum frame size (sizes the staging buffers and the upload tensor).
pub fn check_max_frame(max_width: u32, max_height: u32) -> Result<()> {
    if max_width == 0
        || max_height == 0
        || max_width > MAX_FRAME_SIDE
        || max_height > MAX_FRAME_SIDE
    {
        return Err(Error::Plan(format!(
            "maximum frame size {max_width}x{max_height} must be between 1x1 and {MAX_FRAME_SIDE}x{MAX_FRAME_SIDE}"
        )));
    }
    Ok(())
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            device: 0,
            max_width: 3840,
            max_height: 2160,
            packet: PacketLayout {
                detection_capacity: 300,
                mask_data_capacity: 256 * 1024,
            },
        }
    }
}

/// The plan's stages in execution order (also the rows of the `bench` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Frame -> D-FINE and MobileSAM inputs.
    Preprocess,
    /// Packet header and sections.
    AssemblePacket,
}

impl Stage {
    /// All stages, in order.
    pub const ALL: [Stage; 2] = [Stage::Preprocess, Stage::AssemblePacket];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Preprocess => "preprocess (D-FINE 640 + SAM 1024)",
            Stage::AssemblePacket => "packet assembly",
        }
    }
}

/// The arena tensors of the plan.
struct Tensors {
    upload: TensorId,
    dfine_input: TensorId,
    sam_input: TensorId,
    packet: TensorId,
}

/// Everything a stage launch needs: where its tensors live and the packet layout.
struct Plan {
    arena: Arena,
    tensors: Tensors,
    layout: PacketLayout,
}

impl Plan {
    fn launch_stage(&self, gpu: &Gpu, stage: Stage) -> Result<()> {
        let (arena, t) = (&self.arena, &self.tensors);
        match stage {
            Stage::Preprocess => launch_preprocess(
                gpu,
                &PreprocessIo {
                    upload: arena.ptr(t.upload),
                    upload_bytes: arena.bytes(t.upload),
                    dfine_input: arena.ptr(t.dfine_input),
                    dfine_bytes: arena.bytes(t.dfine_input),
                    sam_input: arena.ptr(t.sam_input),
                    sam_bytes: arena.bytes(t.sam_input),
                },
            ),
            Stage::AssemblePacket => launch_assemble_packet_header(
                gpu,
                arena.ptr(t.upload),
                None,
                arena.ptr(t.packet),
                arena.bytes(t.packet),
                &self.layout,
            ),
        }
    }
}

/// Median and minimum of repeated timings of one piece of work, in milliseconds.
#[derive(Debug, Clone)]
pub struct Timing {
    /// What was timed.
    pub name: String,
    /// Median over the timed repetitions.
    pub median_ms: f64,
    /// Fastest repetition.
    pub min_ms: f64,
}

impl Timing {
    /// Summarises samples (milliseconds); `samples` must not be empty.
    pub fn from_samples(name: impl Into<String>, mut samples: Vec<f64>) -> Timing {
        samples.sort_by(f64::total_cmp);
        Timing {
            name: name.into(),
            median_ms: samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN),
            min_ms: samples.first().copied().unwrap_or(f64::NAN),
        }
    }
}

/// A built pipeline: arena, staging buffers and the captured graph, ready for frames.
pub struct Pipeline {
    gpu: Gpu,
    config: PipelineConfig,
    plan: Plan,
    staging: PinnedBuffer,
    packet_host: PinnedBuffer,
    graph: Graph,
    sequence: u32,
    /// Geometry of a frame the caller wrote straight into the staging buffer.
    pending: Option<(u32, u32, PixelFormat)>,
}

impl Pipeline {
    /// Opens the GPU, plans and allocates the arena, captures the frame graph. After this no
    /// device memory is allocated again.
    pub fn new(config: PipelineConfig) -> Result<Pipeline> {
        check_max_frame(config.max_width, config.max_height)?;
        let packet_bytes = config.packet.total_bytes();
        if packet_bytes > u32::MAX as usize {
            return Err(Error::Plan(format!(
                "packet of {packet_bytes} bytes exceeds the 4 GiB the layout can address"
            )));
        }
        let gpu = Gpu::new(config.device)?;
        let upload_bytes =
            FRAME_PIXEL_OFFSET + config.max_width as usize * config.max_height as usize * 4;

        // Steps: 0 upload, 1 preprocess, 2 packet assembly, 3 download. Network inputs stay
        // live to the end so tests and later stages can read them.
        let mut planner = ArenaPlanner::new();
        let tensors = Tensors {
            upload: planner.request("frame upload", upload_bytes, 0, 2)?,
            dfine_input: planner.request("D-FINE input", input_bytes(DFINE_INPUT_SIZE), 1, 3)?,
            sam_input: planner.request("SAM input", input_bytes(SAM_INPUT_SIZE), 1, 3)?,
            packet: planner.request("result packet", packet_bytes, 2, 3)?,
        };
        let plan = Plan {
            arena: Arena::allocate(&gpu, planner.plan())?,
            tensors,
            layout: config.packet,
        };
        let staging = gpu.alloc_pinned(upload_bytes, true)?;
        let packet_host = gpu.alloc_pinned(packet_bytes, false)?;
        let graph = Graph::capture(&gpu, || {
            Stage::ALL
                .iter()
                .try_for_each(|&stage| plan.launch_stage(&gpu, stage))
        })?;
        Ok(Pipeline {
            gpu,
            config,
            plan,
            staging,
            packet_host,
            graph,
            sequence: 0,
            pending: None,
        })
    }

    /// The GPU the pipeline runs on (for counters and timing).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Bytes of the activation arena.
    pub fn arena_bytes(&self) -> usize {
        self.plan.arena.peak_bytes()
    }

    /// Writes the frame's header and pixels into the pinned staging buffer (host work only);
    /// returns the bytes to upload.
    pub fn stage_frame(&mut self, frame: &Frame<'_>) -> Result<usize> {
        frame.validate(self.config.max_width, self.config.max_height)?;
        self.sequence = self.sequence.wrapping_add(1);
        stage_frame(frame, self.sequence, self.staging.as_mut_slice())
    }

    /// Uploads the first `bytes` of the staging buffer: the frame's one host-to-device copy.
    pub fn upload_staged(&self, bytes: usize) -> Result<()> {
        let staged = self.staging.as_slice().get(..bytes).ok_or_else(|| {
            Error::Frame(format!(
                "{bytes} bytes requested from a {}-byte staging buffer",
                self.staging.len()
            ))
        })?;
        let upload = self.plan.arena.ptr(self.plan.tensors.upload);
        self.gpu.upload(upload, staged)
    }

    /// Stages and uploads a frame (the frame's only host-to-device copy).
    pub fn upload_frame(&mut self, frame: &Frame<'_>) -> Result<()> {
        let bytes = self.stage_frame(frame)?;
        self.upload_staged(bytes)
    }

    /// Launches one stage on the stream (eagerly, outside the graph).
    pub fn launch_stage(&self, stage: Stage) -> Result<()> {
        self.plan.launch_stage(&self.gpu, stage)
    }

    fn download_packet(&mut self) -> Result<()> {
        let packet = self.plan.arena.ptr(self.plan.tensors.packet);
        self.gpu.download(self.packet_host.as_mut_slice(), packet)
    }

    /// Runs one frame: one upload, the graph, one download; returns the parsed packet.
    pub fn process(&mut self, frame: &Frame<'_>) -> Result<ResultPacket<'_>> {
        self.upload_frame(frame)?;
        self.graph.replay()?;
        self.download_packet()?;
        self.gpu.synchronize()?;
        ResultPacket::parse(self.packet_host.as_slice())
    }

    /// Pinned memory for the caller to write a tightly packed `width x height` frame into
    /// directly (e.g. a camera or decoder), saving the host copy of [`Pipeline::process`];
    /// follow with [`Pipeline::process_staged`].
    pub fn staged_frame_mut(
        &mut self,
        width: u32,
        height: u32,
        format: PixelFormat,
    ) -> Result<&mut [u8]> {
        let bytes = width as usize * height as usize * format.bytes_per_pixel();
        Frame::packed(&[], width, height, format)
            .validate_geometry(self.config.max_width, self.config.max_height)?;
        self.pending = Some((width, height, format));
        let region = FRAME_PIXEL_OFFSET..FRAME_PIXEL_OFFSET + bytes;
        Ok(&mut self.staging.as_mut_slice()[region])
    }

    /// Runs the frame written through [`Pipeline::staged_frame_mut`]: no host copy, one upload,
    /// the graph, one download.
    pub fn process_staged(&mut self) -> Result<ResultPacket<'_>> {
        let (width, height, format) = self
            .pending
            .take()
            .ok_or_else(|| Error::Frame("process_staged called without staged_frame_mut".into()))?;
        let packed = Frame::packed(&[], width, height, format);
        self.sequence = self.sequence.wrapping_add(1);
        let header = FrameHeader::for_frame(&packed, self.sequence)?;
        let staging = self.staging.as_mut_slice();
        staging[..std::mem::size_of::<FrameHeader>()].copy_from_slice(bytemuck::bytes_of(&header));
        self.upload_staged(FRAME_PIXEL_OFFSET + packed.span_bytes())?;
        self.graph.replay()?;
        self.download_packet()?;
        self.gpu.synchronize()?;
        ResultPacket::parse(self.packet_host.as_slice())
    }

    /// Runs one frame stage by stage without the graph (same result; for checking the graph
    /// and for per-stage timing).
    pub fn process_eager(&mut self, frame: &Frame<'_>) -> Result<ResultPacket<'_>> {
        self.upload_frame(frame)?;
        for stage in Stage::ALL {
            self.plan.launch_stage(&self.gpu, stage)?;
        }
        self.download_packet()?;
        self.gpu.synchronize()?;
        ResultPacket::parse(self.packet_host.as_slice())
    }

    /// Reads the D-FINE input of the last frame (1x3x640x640). A counted debug download.
    pub fn read_dfine_input(&self) -> Result<Vec<f16>> {
        self.read_f16(self.plan.tensors.dfine_input)
    }

    /// Reads the MobileSAM input of the last frame (1x3x1024x1024). A counted debug download.
    pub fn read_sam_input(&self) -> Result<Vec<f16>> {
        self.read_f16(self.plan.tensors.sam_input)
    }

    fn read_f16(&self, id: TensorId) -> Result<Vec<f16>> {
        let mut out = vec![f16::ZERO; self.plan.arena.bytes(id) / 2];
        self.gpu
            .download(bytemuck::cast_slice_mut(&mut out), self.plan.arena.ptr(id))?;
        self.gpu.synchronize()?;
        Ok(out)
    }

    /// Fills the network inputs with a byte pattern (tests poison outputs before a run).
    pub fn poison_inputs(&self, byte: u8) -> Result<()> {
        for id in [self.plan.tensors.dfine_input, self.plan.tensors.sam_input] {
            self.gpu
                .memset(self.plan.arena.ptr(id), byte, self.plan.arena.bytes(id))?;
        }
        self.gpu.synchronize()
    }

    /// Times the per-frame work on `frame` over `iterations` samples after a warm-up: host
    /// staging and the whole frame by wall clock, the upload, each stage, the download and the
    /// graph replay in GPU time (CUDA events around 10 back-to-back repetitions).
    pub fn time_stages(&mut self, frame: &Frame<'_>, iterations: usize) -> Result<Vec<Timing>> {
        const REPS: usize = 10;
        for _ in 0..3 {
            self.process(frame)?;
        }
        let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
        let mut row = |name: String, sample: f64| match rows.iter_mut().find(|(n, _)| *n == name) {
            Some((_, samples)) => samples.push(sample),
            None => rows.push((name, vec![sample])),
        };
        let upload_name = format!(
            "upload {}x{} {:?} (pinned)",
            frame.width, frame.height, frame.format
        );
        let download_name = format!(
            "download packet ({} bytes)",
            self.config.packet.total_bytes()
        );
        for _ in 0..iterations.max(1) {
            let wall = Instant::now();
            let bytes = self.stage_frame(frame)?;
            row(
                "stage frame into pinned memory (host)".into(),
                ms_since(wall),
            );
            row(
                upload_name.clone(),
                self.gpu.time_ms(REPS, || self.upload_staged(bytes))?,
            );
            for stage in Stage::ALL {
                let ms = self
                    .gpu
                    .time_ms(REPS, || self.plan.launch_stage(&self.gpu, stage))?;
                row(stage.name().into(), ms);
            }
            let packet = self.plan.arena.ptr(self.plan.tensors.packet);
            let (gpu, host) = (&self.gpu, &mut self.packet_host);
            row(
                download_name.clone(),
                gpu.time_ms(REPS, || gpu.download(host.as_mut_slice(), packet))?,
            );
            row(
                "graph replay (all stages)".into(),
                self.gpu.time_ms(REPS, || self.graph.replay())?,
            );
            let wall = Instant::now();
            self.process(frame)?;
            row("whole frame, host wall clock".into(), ms_since(wall));
            if frame.row_stride == frame.width as usize * frame.format.bytes_per_pixel() {
                let pixels = self.staged_frame_mut(frame.width, frame.height, frame.format)?;
                pixels.copy_from_slice(&frame.data[..frame.span_bytes()]);
                let wall = Instant::now();
                self.process_staged()?;
                row(
                    "whole frame written in place (process_staged), wall".into(),
                    ms_since(wall),
                );
            }
        }
        Ok(rows
            .into_iter()
            .map(|(name, samples)| Timing::from_samples(name, samples))
            .collect())
    }
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

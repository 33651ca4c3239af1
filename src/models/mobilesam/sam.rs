//! `MobileSam`: the segmenter as a library user sees it. `set_frame` uploads a frame once and
//! runs preprocessing and the image encoder (one CUDA graph); `predict` runs the prompt
//! encoder, the mask decoder and mask decoding straight into the result packet and brings the
//! packet back in one copy.
//!
//! Copies: `set_frame` = one upload (the frame); `predict` = one small upload (the prompts,
//! 16 bytes + 12 per point) and one download (the packet); `predict_with_mask_input` one more
//! upload (the low-res masks, 256 KiB each). No device allocation after the first `predict` of
//! each prompt kind and mask mode (its decode plan is built then).

use std::path::Path;

use crate::error::{Error, Result};
use crate::frame::{stage_frame, Frame, DFINE_INPUT_SIZE, FRAME_PIXEL_OFFSET, SAM_INPUT_SIZE};
use crate::gpu::{Arena, ArenaPlanner, Gpu, Graph, PinnedBuffer, TensorId};
use crate::ops::mask::{
    launch_mask_decode_with_quality, MaskDecodeIo, MaskDecodeParams, BOUNDS_BYTES_PER_MASK,
};
use crate::ops::packet::{
    launch_assemble_packet_header, launch_prompt_detections, PromptDetectionsIo,
};
use crate::ops::preprocess::{input_bytes, launch_preprocess, PreprocessIo};
use crate::ops::sam_decoder::MASK_INPUT_PIXELS;
use crate::ops::DeviceRegion;
use crate::packet::{PacketLayout, ResultPacket};
use crate::pipeline::check_max_frame;
use crate::weights::WeightsFile;

use super::decoder::{DecodeConfig, DecodePlan, MaskDecoder};
use super::encoder::ImageEncoder;
use super::prompt::Prompts;

/// What a `MobileSam` is built for.
#[derive(Debug, Clone, Copy)]
pub struct SamConfig {
    /// CUDA device ordinal.
    pub device: usize,
    /// Widest frame accepted.
    pub max_width: u32,
    /// Tallest frame accepted.
    pub max_height: u32,
    /// Most prompts per `predict`.
    pub max_prompts: usize,
    /// Packet sections: one detection record per prompt, one mask record per mask.
    pub packet: PacketLayout,
}

impl Default for SamConfig {
    fn default() -> Self {
        SamConfig {
            device: 0,
            max_width: 3840,
            max_height: 2160,
            max_prompts: 32,
            packet: PacketLayout {
                detection_capacity: 96,
                // Room for 32 masks of a 1920x1080 frame that each cover a third of it; a
                // packet whose masks do not fit says so (header flag bit 1).
                mask_data_capacity: 8 << 20,
            },
        }
    }
}

struct Tensors {
    upload: TensorId,
    dfine_input: TensorId,
    sam_input: TensorId,
    packet: TensorId,
    counts: TensorId,
    bounds: TensorId,
}

/// MobileSAM on one GPU: weights, the frame graph and one decode plan per prompt mode.
pub struct MobileSam {
    gpu: Gpu,
    config: SamConfig,
    encoder: ImageEncoder,
    decoder: MaskDecoder,
    plans: Vec<DecodePlan>,
    arena: Arena,
    tensors: Tensors,
    staging: PinnedBuffer,
    packet_host: PinnedBuffer,
    frame_graph: Graph,
    sequence: u32,
    frame_set: bool,
    /// The plan and prompt count of the last `predict` (for [`MobileSam::read_low_res`]).
    last: Option<(usize, usize)>,
}

fn region(arena: &Arena, id: TensorId) -> DeviceRegion {
    DeviceRegion::new(arena.ptr(id), arena.bytes(id))
}

impl MobileSam {
    /// Loads an official `vit_t` checkpoint converted to safetensors (weights/convert.py) and
    /// builds everything a frame needs.
    pub fn load(path: impl AsRef<Path>, config: SamConfig) -> Result<MobileSam> {
        check_max_frame(config.max_width, config.max_height)?;
        let masks = config.max_prompts * 3;
        if config.max_prompts == 0 || masks > config.packet.detection_capacity as usize {
            return Err(Error::Plan(format!(
                "max_prompts {} needs 1..={} (three masks per prompt must fit the packet's {} mask records)",
                config.max_prompts,
                config.packet.detection_capacity / 3,
                config.packet.detection_capacity
            )));
        }
        let file = WeightsFile::open(path)?;
        let gpu = Gpu::new(config.device)?;
        let encoder = ImageEncoder::load(&gpu, &file)?;
        let decoder = MaskDecoder::load(&gpu, &file)?;

        let upload_bytes =
            FRAME_PIXEL_OFFSET + config.max_width as usize * config.max_height as usize * 4;
        // Everything lives for the whole frame: the frame graph writes these, predict reads them.
        let mut planner = ArenaPlanner::new();
        let tensors = Tensors {
            upload: planner.request("frame upload", upload_bytes, 0, 1)?,
            dfine_input: planner.request("D-FINE input", input_bytes(DFINE_INPUT_SIZE), 0, 1)?,
            sam_input: planner.request("SAM input", input_bytes(SAM_INPUT_SIZE), 0, 1)?,
            packet: planner.request("result packet", config.packet.total_bytes(), 0, 1)?,
            counts: planner.request("packet counts", 16, 0, 1)?,
            bounds: planner.request("mask bounds", masks * BOUNDS_BYTES_PER_MASK, 0, 1)?,
        };
        let arena = Arena::allocate(&gpu, planner.plan())?;
        let staging = gpu.alloc_pinned(upload_bytes, true)?;
        let packet_host = gpu.alloc_pinned(config.packet.total_bytes(), false)?;
        let sam_input = region(&arena, tensors.sam_input);
        let frame_graph = Graph::capture(&gpu, || {
            launch_preprocess(
                &gpu,
                &PreprocessIo {
                    upload: arena.ptr(tensors.upload),
                    upload_bytes: arena.bytes(tensors.upload),
                    dfine_input: arena.ptr(tensors.dfine_input),
                    dfine_bytes: arena.bytes(tensors.dfine_input),
                    sam_input: sam_input.ptr,
                    sam_bytes: sam_input.bytes,
                },
            )?;
            encoder.encode(&gpu, sam_input)
        })?;
        Ok(MobileSam {
            gpu,
            config,
            encoder,
            decoder,
            plans: Vec::new(),
            arena,
            tensors,
            staging,
            packet_host,
            frame_graph,
            sequence: 0,
            frame_set: false,
            last: None,
        })
    }

    /// The GPU (counters, timing).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Uploads the frame (one copy) and runs preprocessing and the image encoder. Asynchronous:
    /// `predict` orders after it on the same stream.
    pub fn set_frame(&mut self, frame: &Frame<'_>) -> Result<()> {
        frame.validate(self.config.max_width, self.config.max_height)?;
        self.sequence = self.sequence.wrapping_add(1);
        let bytes = stage_frame(frame, self.sequence, self.staging.as_mut_slice())?;
        self.gpu.upload(
            self.arena.ptr(self.tensors.upload),
            &self.staging.as_slice()[..bytes],
        )?;
        self.frame_graph.replay()?;
        self.frame_set = true;
        Ok(())
    }

    /// The image embedding of the current frame (fp16 NHWC `[64, 64, 256]`).
    pub fn embedding(&self) -> DeviceRegion {
        self.encoder.embedding()
    }

    fn plan_index(&mut self, config: DecodeConfig) -> Result<usize> {
        if let Some(i) = self.plans.iter().position(|p| p.config() == config) {
            return Ok(i);
        }
        self.plans.push(self.decoder.plan(&self.gpu, config)?);
        Ok(self.plans.len() - 1)
    }

    /// Segments the current frame for `prompts` (frame pixels): one detection record per
    /// prompt and one (or, with `multimask`, three) bit-packed masks per prompt in the returned
    /// packet. A detection's box is the extent of its prompt's points and box corners.
    pub fn predict(&mut self, prompts: &Prompts<'_>, multimask: bool) -> Result<ResultPacket<'_>> {
        self.predict_masked(prompts, None, multimask)
    }

    /// [`MobileSam::predict`] with a low-res mask input per prompt (`SamPredictor.predict`'s
    /// `mask_input`, e.g. a previous prediction's logits from [`MobileSam::read_low_res`] for
    /// iterative refinement): `masks` is `[count, 256, 256]` f32 with `count` = the number of
    /// prompts. Typed [`Error::Prompt`] for a count mismatch, a length that is not whole masks
    /// or a non-finite value.
    pub fn predict_with_mask_input(
        &mut self,
        prompts: &Prompts<'_>,
        masks: &[f32],
        multimask: bool,
    ) -> Result<ResultPacket<'_>> {
        self.predict_masked(prompts, Some(masks), multimask)
    }

    /// Downloads the low-res mask logits of the last `predict` (`[prompts, C, 256, 256]` f32,
    /// C = 1 or 3 with multimask; one extra copy): the `mask_input` of a refining
    /// [`MobileSam::predict_with_mask_input`] (pick one of C per prompt).
    pub fn read_low_res(&self) -> Result<Vec<f32>> {
        let Some((index, count)) = self.last else {
            return Err(Error::Frame("read_low_res called before predict".into()));
        };
        Ok(self.plans[index].read_outputs(&self.gpu, count)?.0)
    }

    fn predict_masked(
        &mut self,
        prompts: &Prompts<'_>,
        masks: Option<&[f32]>,
        multimask: bool,
    ) -> Result<ResultPacket<'_>> {
        if !self.frame_set {
            return Err(Error::Frame("predict called before set_frame".into()));
        }
        let config = DecodeConfig {
            max_prompts: self.config.max_prompts,
            kind: prompts.kind(),
            multimask,
            mask_input: masks.is_some(),
        };
        // One mask per prompt (`stage_mask_input` checks the values).
        if let Some(masks) = masks {
            if masks.len() != prompts.count() * MASK_INPUT_PIXELS {
                return Err(Error::Prompt(format!(
                    "{} mask input values for {} prompts: expected one 256 x 256 mask per prompt",
                    masks.len(),
                    prompts.count()
                )));
            }
        }
        let index = self.plan_index(config)?;
        self.last = None;
        let (gpu, plan, layout) = (&self.gpu, &self.plans[index], self.config.packet);
        let count = plan.stage_prompts(gpu, prompts)?;
        if let Some(masks) = masks {
            plan.stage_mask_input(gpu, masks)?;
        }
        let packet = region(&self.arena, self.tensors.packet);
        let counts = region(&self.arena, self.tensors.counts);
        let header = DeviceRegion::new(
            self.arena.ptr(self.tensors.upload),
            std::mem::size_of::<crate::frame::FrameHeader>(),
        );
        gpu.memset(counts.ptr, 0, counts.bytes)?;
        self.decoder
            .decode(gpu, plan, self.encoder.embedding(), header, count)?;
        let masks_per_prompt = plan.masks_per_prompt() as u32;
        launch_mask_decode_with_quality(
            gpu,
            &MaskDecodeIo {
                low_res: plan.low_res().ptr,
                low_res_bytes: plan.low_res().bytes,
                mask_count: plan.mask_count().ptr,
                upload: header.ptr,
                bounds: self.arena.ptr(self.tensors.bounds),
                bounds_bytes: self.arena.bytes(self.tensors.bounds),
                packet: packet.ptr,
                packet_bytes: packet.bytes,
                counts: counts.ptr,
            },
            &layout,
            &MaskDecodeParams {
                masks_per_detection: masks_per_prompt,
                max_masks: count as u32 * masks_per_prompt,
                threshold: 0.0,
            },
            Some(plan.iou().ptr),
        )?;
        launch_prompt_detections(
            gpu,
            &PromptDetectionsIo {
                prompt_block: plan.prompt_block().ptr,
                prompt_block_bytes: plan.prompt_block().bytes,
                points_per_prompt: config.kind.points() as u32,
                max_prompts: config.max_prompts as u32,
                iou: plan.iou().ptr,
                masks_per_prompt,
            },
            packet.ptr,
            packet.bytes,
            counts.ptr,
            &layout,
        )?;
        launch_assemble_packet_header(
            gpu,
            header.ptr,
            Some(counts.ptr),
            packet.ptr,
            packet.bytes,
            &layout,
        )?;
        gpu.download(self.packet_host.as_mut_slice(), packet.ptr)?;
        gpu.synchronize()?;
        self.last = Some((index, count));
        ResultPacket::parse(self.packet_host.as_slice())
    }
}

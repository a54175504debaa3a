//! The convolutions where tract's matrix-product kernel choice is slowest, each as one matrix product through
//! `matrixmultiply`, with the bias and the clamp that follow folded in: the classifier's expansion layers (1×1
//! from few channels to many, on many pixels) and its first layer (3×3 on the RGB image).
//!
//! tract lowers a convolution to its own matrix-product kernels: a 1×1 one, which decluttering has turned into
//! an `EinSum` (the image, pixels by input channels, times the weights) and a bias `Add`, directly; others
//! through patches gathered as it packs them (`LazyIm2col`). On an AVX-512 Xeon, tract 0.23's fitted cost model
//! picks an AVX2 kernel of 40×2 for the products with few values per row (the student's 16→96 expansion at
//! 56×56: 0.29 ms against onnxruntime's 0.095), and tract has no hook for choosing another. `matrixmultiply`
//! (already in the tree under tract's ndarray, reached here through ndarray's safe `general_mat_mul`) runs those
//! products faster; on products with longer rows or fewer pixels, and where a residual add follows (which
//! tract's kernels fuse), tract's own ran faster, layer by layer and in the whole plan (`BENCHMARKS.md`).
//!
//! So `rewrite`, on the decluttered channel-last model, takes the f32 products of at least `MIN_PIXELS` pixels
//! with constant weights that are either an `EinSum` with at most `MAX_INPUT_CHANNELS` input channels whose
//! pixel axes merge into one stride on both sides (the student's 16→96 and two 24→144 expansions), or a
//! channel-first `Conv` of one group whose patches hold at most `MAX_PATCH_VALUES` values (the student's 3×3
//! stride-2 first layer), whose patches the op gathers a block of pixels at a time. It folds in what follows
//! while each step has that one successor: an `Add` of a constant per output channel (an `EinSum`'s bias; a
//! `Conv` has its own), a `Max` and a `Min` with a constant (ReLU6), and a move of a channel-first output's
//! channels last (the student's first layer feeds a channel-last depthwise layer). The op sets a block of
//! pixels' outputs to the bias, adds the product and clamps them while they are in cache. `layout::choose`
//! checks the plan against the channel-first one on the test pattern before using it (the bundled student's
//! outputs are bit-identical to tract's plan).
//!
//! Used on x86_64 only (`layout::OwnOps::RUNTIME`): on aarch64 tract keeps its own hand-written NEON kernels,
//! whose choice there is not known to be poor and whose speed on a board cannot be measured here.

use anyhow::Result;
use std::ops::Range;
use tract_onnx::prelude::tract_ndarray::{linalg::general_mat_mul, ArrayView2, ArrayViewMut2, ShapeBuilder};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;

/// The products taken: on at least `MIN_PIXELS` pixels; a 1×1 convolution's with at most this many input
/// channels.
const MAX_INPUT_CHANNELS: usize = 24;
const MIN_PIXELS: usize = 784;

/// Outputs computed per block (pixels × output channels): 64 KiB, which the second-level cache holds while a
/// block's bias, product and clamp are written.
const BLOCK_VALUES: usize = 16 * 1024;

/// A matrix product of an f32 image (`pixels` × `k` input channels, with strides) with constant weights
/// (`k` × `n`), plus a bias per output channel, clamped.
#[derive(Debug, Clone)]
pub struct ConvProduct {
    input_shape: TVec<usize>,
    output_shape: TVec<usize>,
    pixels: usize,
    /// Where a pixel's row of the product comes from.
    rows: Rows,
    /// Whether the output's channels are its innermost axis (channel-last); otherwise its pixels are.
    channel_last: bool,
    /// The output's channel axis.
    channel_axis: usize,
    /// Input channels `k` and output channels `n`.
    channels: (usize, usize),
    /// `k` rows of `n`.
    weights: Vec<f32>,
    bias: Vec<f32>,
    /// `max` with `lower` then `min` with `upper`, each where present (tract's f32 `Max` and `Min`).
    lower: Option<f32>,
    upper: Option<f32>,
}

/// Equal when every weight, bias and bound has the same bits (so that tract's `Eq` holds, NaN included).
impl PartialEq for ConvProduct {
    fn eq(&self, other: &Self) -> bool {
        use super::layout::same_bits;
        same_bits(&self.weights, &other.weights)
            && same_bits(&self.bias, &other.bias)
            && self.lower.map(f32::to_bits) == other.lower.map(f32::to_bits)
            && self.upper.map(f32::to_bits) == other.upper.map(f32::to_bits)
            && (&self.input_shape, &self.output_shape, &self.rows, self.channel_last)
                == (&other.input_shape, &other.output_shape, &other.rows, other.channel_last)
        // pixels, channel_axis and channels follow from the fields compared.
    }
}

impl Eq for ConvProduct {}

/// Where each pixel's row of a product (its `k` values) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rows {
    /// The image itself (a 1×1 convolution): the strides of its pixel and channel axes, in values.
    Image { strides: (usize, usize) },
    /// The patch under a convolution's kernel at each output pixel, gathered per block.
    Patches(Patches),
}

/// A convolution's patches: one channel-first image (`[c, h, w]`, a batch axis of one allowed), its kernel,
/// strides and padding. A patch lists its values in the order of the weights' rows (channel, kernel row,
/// kernel column); taps in the padding read zero.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Patches {
    channels: usize,
    input: (usize, usize),
    output_width: usize,
    kernel: (usize, usize),
    strides: (usize, usize),
    /// Rows above and columns left of the input that the first output pixel's kernel reaches.
    pad: (usize, usize),
}

impl Patches {
    /// Writes the patches of output pixels `pixels` into `taps` transposed: one run of `pixels.len()` values
    /// per patch value (tap), so that each run reads one input row at the column stride, a loop the compiler
    /// vectorises.
    fn gather(&self, input: &[f32], taps: &mut [f32], pixels: Range<usize>) {
        let ((height, width), (kh, kw), (sy, sx)) = (self.input, self.kernel, self.strides);
        let count = pixels.len();
        for (tap, run) in taps.chunks_exact_mut(count).take(self.channels * kh * kw).enumerate() {
            let (channel, ky, kx) = (tap / (kh * kw), tap / kw % kh, tap % kw);
            let plane = &input[channel * height * width..][..height * width];
            // Output row by output row, within the block.
            let mut pixel = pixels.start;
            while pixel < pixels.end {
                let (oy, ox) = (pixel / self.output_width, pixel % self.output_width);
                let row_end = (pixel - ox + self.output_width).min(pixels.end);
                let out = &mut run[pixel - pixels.start..row_end - pixels.start];
                let y = (oy * sy + ky).checked_sub(self.pad.0).filter(|&y| y < height);
                match y {
                    None => out.fill(0.0),
                    Some(y) => {
                        // Output columns from `ox` whose tap falls inside the input row: `inside`, at input
                        // columns `x0`, `x0 + sx`, ...; the ones before and after read the padding.
                        let line = &plane[y * width..][..width];
                        let first = (self.pad.1.saturating_sub(kx)).div_ceil(sx).max(ox);
                        let end = (width + self.pad.1)
                            .saturating_sub(kx)
                            .div_ceil(sx)
                            .min(ox + out.len())
                            .max(first);
                        let (before, rest) = out.split_at_mut(first - ox);
                        let (inside, after) = rest.split_at_mut(end - first);
                        before.fill(0.0);
                        after.fill(0.0);
                        let x0 = (first * sx + kx).saturating_sub(self.pad.1);
                        for (value, &sample) in
                            inside.iter_mut().zip(line[x0.min(width)..].iter().step_by(sx))
                        {
                            *value = sample;
                        }
                    }
                }
                pixel = row_end;
            }
        }
    }
}

impl ConvProduct {
    /// The runs of output values that hold `pixels`, each with its channel: the whole block for a channel-last
    /// output (channel None: every channel in turn), one run per channel for a channel-first one.
    fn runs(&self, pixels: &Range<usize>) -> impl Iterator<Item = (Range<usize>, Option<usize>)> {
        let (n, count, (first, end)) = (self.channels.1, self.pixels, (pixels.start, pixels.end));
        let channel_last = self.channel_last;
        (0..if channel_last { 1 } else { n }).map(move |channel| {
            if channel_last {
                (first * n..end * n, None)
            } else {
                (channel * count + first..channel * count + end, Some(channel))
            }
        })
    }

    /// The outputs of `pixels`: the bias, plus the product, clamped.
    fn block(
        &self,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut [f32],
        pixels: Range<usize>,
    ) -> TractResult<()> {
        let (k, n) = self.channels;
        for (run, channel) in self.runs(&pixels) {
            match channel {
                None => output[run].chunks_exact_mut(n).for_each(|row| row.copy_from_slice(&self.bias)),
                Some(channel) => output[run].fill(self.bias[channel]),
            }
        }
        let count = pixels.len();
        let image = match &self.rows {
            Rows::Image { strides: (row_stride, column_stride) } => ArrayView2::from_shape(
                (count, k).strides((*row_stride, *column_stride)),
                &input[pixels.start * row_stride..],
            )?,
            Rows::Patches(patches) => {
                let scratch = &mut scratch[..count * k];
                patches.gather(input, scratch, pixels.clone());
                ArrayView2::from_shape((count, k).strides((1, count)), &*scratch)?
            }
        };
        let weights = ArrayView2::from_shape((k, n), &self.weights)?;
        let mut product = if self.channel_last {
            ArrayViewMut2::from_shape((count, n), &mut output[pixels.start * n..pixels.end * n])?
        } else {
            ArrayViewMut2::from_shape((count, n).strides((1, self.pixels)), &mut output[pixels.start..])?
        };
        general_mat_mul(1.0, &image, &weights, 1.0, &mut product);
        for (run, _) in self.runs(&pixels) {
            let values = &mut output[run];
            match (self.lower, self.upper) {
                (Some(lower), Some(upper)) => values.iter_mut().for_each(|v| *v = v.max(lower).min(upper)),
                (Some(lower), None) => values.iter_mut().for_each(|v| *v = v.max(lower)),
                (None, Some(upper)) => values.iter_mut().for_each(|v| *v = v.min(upper)),
                (None, None) => {}
            }
        }
        Ok(())
    }
}

impl Op for ConvProduct {
    fn name(&self) -> StaticName {
        "ConvProduct".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let (k, n) = self.channels;
        Ok(vec![format!(
            "{} pixels, {k} -> {n} channels, {}, clamp {:?}..{:?}",
            self.pixels,
            if self.channel_last { "channel-last" } else { "channel-first" },
            self.lower,
            self.upper
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for ConvProduct {
    op_out_of_plan!();

    fn eval(&self, _context: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs.first().context("ConvProduct takes one input")?;
        let input = input.try_as_plain_ram()?;
        let input = input.as_slice::<f32>()?;
        let expected: usize = self.input_shape.iter().product();
        ensure!(input.len() == expected, "ConvProduct: input of {} values, expected {expected}", input.len());
        let mut output = Tensor::zero::<f32>(&self.output_shape)?;
        {
            let mut plain = output.try_as_plain_ram_mut()?;
            let values = plain.as_slice_mut::<f32>()?;
            // A block of pixels at a time, so that its outputs stay in cache from the bias to the clamp.
            let block = (BLOCK_VALUES / self.channels.1).clamp(8, self.pixels);
            let mut scratch = match self.rows {
                Rows::Patches(_) => vec![0f32; block * self.channels.0],
                Rows::Image { .. } => vec![],
            };
            for first in (0..self.pixels).step_by(block) {
                self.block(input, values, &mut scratch, first..(first + block).min(self.pixels))?;
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for ConvProduct {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        super::layout::own_op_input("ConvProduct", inputs, &self.input_shape)?;
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    as_op!();
}

/// Replaces each matrix product of `model` (decluttered) that `ConvProduct` computes, with the bias and clamp
/// that follow it, by one `ConvProduct` node; a product followed by a residual add stays tract's. Returns how
/// many it replaced.
pub fn rewrite(model: &mut TypedModel) -> Result<usize> {
    let candidates: Vec<usize> = model
        .nodes
        .iter()
        .filter(|node| node.op_is::<EinSum>() || node.op_is::<Conv>())
        .map(|node| node.id)
        .collect();
    let mut replaced = 0;
    'products: for id in candidates {
        let node = model.node(id);
        let (mut op, image, mut stage) = match (product(model, node)?, convolution(model, node)?) {
            (Some((op, image)), _) => (op, image, Stage::Bias),
            // A convolution's bias is its own input.
            (None, Some((op, image))) => (op, image, Stage::Lower),
            (None, None) => continue,
        };
        let mut last = id;
        // What follows the product, folded in while each step has one successor and comes in this order.
        while let Some(next) = single_successor(model, last) {
            match (step(model, next, last, &op)?, stage) {
                (Some(Step::Bias(bias)), Stage::Bias) => {
                    op.bias = bias;
                    stage = Stage::Lower;
                }
                (Some(Step::Residual), _) => continue 'products,
                (Some(Step::Max(value)), Stage::Bias | Stage::Lower) => {
                    op.lower = Some(value);
                    stage = Stage::Upper;
                }
                (Some(Step::Min(value)), Stage::Bias | Stage::Lower | Stage::Upper) => {
                    op.upper = Some(value);
                    stage = Stage::Done;
                }
                (Some(Step::ChannelLast), _) => {
                    let channel = op.output_shape.remove(op.channel_axis);
                    op.output_shape.push(channel);
                    op.channel_axis = op.output_shape.len() - 1;
                    op.channel_last = true;
                }
                _ => break,
            }
            last = next;
        }
        let name = format!("{}.pointwise", model.node(id).name);
        super::layout::replace_span(model, image, last, name, op)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// What `rewrite` may fold in next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Bias,
    Lower,
    Upper,
    Done,
}

/// A step that can follow a product.
enum Step {
    Bias(Vec<f32>),
    /// An add of a computed tensor of the output's shape.
    Residual,
    Max(f32),
    Min(f32),
    /// A move of a channel-first output's channels to the last axis.
    ChannelLast,
}

/// The one node reading node `id`'s output, where exactly one input of one node does and it is no model output.
fn single_successor(model: &TypedModel, id: usize) -> Option<usize> {
    let node = model.node(id);
    let outlet = OutletId::new(id, 0);
    match node.outputs.first()?.successors.as_slice() {
        [only] if node.outputs.len() == 1 && !model.output_outlets().ok()?.contains(&outlet) => {
            Some(only.node)
        }
        _ => None,
    }
}

/// What node `next` does to the output of node `previous` (the product `op` computes, or a step folded into
/// it), where it is one of the steps `rewrite` knows.
fn step(model: &TypedModel, next: usize, previous: usize, op: &ConvProduct) -> Result<Option<Step>> {
    let node = model.node(next);
    if let Some(&AxisOp::Move(from, to)) = node.op_as::<AxisOp>() {
        let last = op.output_shape.len() - 1;
        return Ok((!op.channel_last && from == op.channel_axis && to == last).then_some(Step::ChannelLast));
    }
    let Some(binary) = node.op_as::<TypedBinOp>() else { return Ok(None) };
    let [a, b] = node.inputs.as_slice() else { return Ok(None) };
    let other = if a.node == previous { *b } else { *a };
    let output = model.outlet_fact(OutletId::new(next, 0))?;
    if binary.1.is_some() || output.shape.as_concrete() != Some(&op.output_shape[..]) {
        return Ok(None);
    }
    let fact = model.outlet_fact(other)?;
    if fact.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let Some(konst) = &fact.konst else {
        return Ok((binary.0.name() == "Add").then_some(Step::Residual));
    };
    let values = konst.try_as_plain_ram()?;
    let values = values.as_slice::<f32>()?;
    let n = op.channels.1;
    Ok(match (binary.0.name(), values.len()) {
        ("Add", len) if len == 1 || len == n => {
            // Broadcast over everything but the output channels, as one value or one per channel.
            let shape = fact.shape.as_concrete().unwrap_or_default();
            let per_channel = shape.len() == op.output_shape.len()
                && shape
                    .iter()
                    .enumerate()
                    .all(|(axis, &size)| size == 1 || (axis == op.channel_axis && size == n));
            per_channel.then(|| Step::Bias(if len == 1 { vec![values[0]; n] } else { values.to_vec() }))
        }
        ("Max", 1) => Some(Step::Max(values[0])),
        ("Min", 1) => Some(Step::Min(values[0])),
        _ => None,
    })
}

/// The `ConvProduct` computing `node` (with a zero bias and nothing folded in yet) and its image input, or None
/// when the node is not a product it covers.
fn product(model: &TypedModel, node: &TypedNode) -> Result<Option<(ConvProduct, OutletId)>> {
    let Some(einsum) = node.op_as::<EinSum>() else { return Ok(None) };
    let [image, weights] = node.inputs.as_slice() else { return Ok(None) };
    if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() || node.outputs.len() != 1 {
        return Ok(None);
    }
    let (image_fact, weights_fact) = (model.outlet_fact(*image)?, model.outlet_fact(*weights)?);
    let output_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    let (Some(input_shape), Some(output_shape), Some(konst)) =
        (image_fact.shape.as_concrete(), output_fact.shape.as_concrete(), weights_fact.konst.as_ref())
    else {
        return Ok(None);
    };
    if image_fact.datum_type != f32::datum_type()
        || konst.datum_type() != f32::datum_type()
        || konst.rank() != 2
    {
        return Ok(None);
    }
    // Each axis by the slots it occurs in: the summed one (image and weights), the output channels (weights and
    // output), pixel axes (image and output), and axes of one value elsewhere.
    let (mut summed, mut channels, mut pixel_axes) = (None, None, vec![]);
    for axis in einsum.axes.iter_all_axes() {
        let (in_image, in_weights, in_output) = (&axis.inputs[0], &axis.inputs[1], &axis.outputs[0]);
        if in_image.len() > 1 || in_weights.len() > 1 || in_output.len() > 1 {
            return Ok(None);
        }
        match (in_image.first(), in_weights.first(), in_output.first()) {
            (Some(&i), Some(&w), None) if summed.is_none() => summed = Some((i, w)),
            (None, Some(&w), Some(&o)) if channels.is_none() => channels = Some((w, o)),
            (Some(&i), None, Some(&o)) => {
                if input_shape[i] > 1 {
                    pixel_axes.push((i, o));
                }
            }
            (Some(&i), None, None) if input_shape[i] == 1 => {}
            (None, None, Some(&o)) if output_shape[o] == 1 => {}
            _ => return Ok(None),
        }
    }
    let (Some((k_axis, k_weights)), Some((n_weights, n_axis))) = (summed, channels) else { return Ok(None) };
    // Pixel axes in the same order on both sides, each merging with the next into one stride.
    pixel_axes.sort();
    if pixel_axes.windows(2).any(|pair| pair[0].1 > pair[1].1) {
        return Ok(None);
    }
    let (Some(input_pixel_stride), Some(output_pixel_stride)) = (
        merged_stride(input_shape, pixel_axes.iter().map(|&(i, _)| i)),
        merged_stride(output_shape, pixel_axes.iter().map(|&(_, o)| o)),
    ) else {
        return Ok(None);
    };
    let pixels: usize = pixel_axes.iter().map(|&(i, _)| input_shape[i]).product();
    let (k, n) = (input_shape[k_axis], output_shape[n_axis]);
    let output_channel_stride = strides(output_shape)[n_axis];
    let channel_last = output_pixel_stride == n && output_channel_stride == 1;
    let channel_first = output_pixel_stride == 1 && output_channel_stride == pixels;
    if pixels < MIN_PIXELS || k > MAX_INPUT_CHANNELS || !(channel_last || channel_first) {
        return Ok(None);
    }
    // The weights as k rows of n, from the constant's [k, n] or [n, k].
    let values = konst.try_as_plain_ram()?;
    let values = values.as_slice::<f32>()?;
    if values.len() != k * n || k_weights == n_weights {
        return Ok(None);
    }
    let weights = (0..k * n)
        .map(|index| {
            let (row, column) = (index / n, index % n);
            if k_weights == 0 {
                values[row * n + column]
            } else {
                values[column * k + row]
            }
        })
        .collect();
    let op = ConvProduct {
        input_shape: input_shape.into(),
        output_shape: output_shape.into(),
        pixels,
        rows: Rows::Image { strides: (input_pixel_stride, strides(input_shape)[k_axis]) },
        channel_last,
        channel_axis: n_axis,
        channels: (k, n),
        weights,
        bias: vec![0.0; n],
        lower: None,
        upper: None,
    };
    Ok(Some((op, *image)))
}

/// Most values in a patch of a convolution taken: a 3×3 kernel on an RGB image (the student's first layer).
/// Larger patches run faster in tract's own kernels (BlazeFace's 5×5 on RGB, 75 values: 0.33 ms both ways).
const MAX_PATCH_VALUES: usize = 27;

/// The `ConvProduct` computing convolution `node` from its patches (with its bias, nothing folded in yet) and its
/// image input, or None when the node is not a convolution it covers: f32, one group, undilated, a kernel of
/// more than one tap on an image of at most `MAX_PATCH_CHANNELS` channels (a batch of one), constant weights.
fn convolution(model: &TypedModel, node: &TypedNode) -> Result<Option<(ConvProduct, OutletId)>> {
    let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
    let spec = &conv.pool_spec;
    let [image, kernel, bias] = node.inputs.as_slice() else { return Ok(None) };
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.kernel_shape.len() != 2
        || spec.kernel_shape.iter().product::<usize>() < 2
        || spec.dilations().iter().any(|&d| d != 1)
        || conv.input_channels() * spec.kernel_shape.iter().product::<usize>() > MAX_PATCH_VALUES
    {
        return Ok(None);
    }
    let input = model.outlet_fact(*image)?;
    let output = model.outlet_fact(OutletId::new(node.id, 0))?;
    let (Some(input_shape), Some(output_shape)) = (input.shape.as_concrete(), output.shape.as_concrete())
    else {
        return Ok(None);
    };
    let (Some(kernel), Some(bias)) =
        (model.outlet_fact(*kernel)?.konst.clone(), model.outlet_fact(*bias)?.konst.clone())
    else {
        return Ok(None);
    };
    if input.datum_type != f32::datum_type() || kernel.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let batch = match spec.data_format {
        DataFormat::NCHW => true,
        DataFormat::CHW => false,
        DataFormat::NHWC | DataFormat::HWC => return Ok(None),
    };
    // The image's height, width and channels, and the output's channel axis and height and width.
    let axes = |shape: &[usize]| -> Option<(usize, usize, usize, usize)> {
        let shape = if batch { shape.split_first().filter(|(n, _)| **n == 1)?.1 } else { shape };
        match shape {
            [c, h, w] => Some((*h, *w, *c, batch as usize)),
            _ => None,
        }
    };
    let (Some((height, width, c, _)), Some((out_height, out_width, n, channel_axis))) =
        (axes(input_shape), axes(output_shape))
    else {
        return Ok(None);
    };
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    if kernel.shape() != [n, c, kh, kw] {
        return Ok(None);
    }
    let padding = spec.computed_padding(&[height, width]);
    let [rows, columns] = padding.as_slice() else { return Ok(None) };
    if (rows.convoluted, columns.convoluted) != (out_height, out_width) || out_height * out_width < MIN_PIXELS
    {
        return Ok(None);
    }
    let kernel = kernel.try_as_plain_ram()?;
    let kernel = kernel.as_slice::<f32>()?;
    let k = c * kh * kw;
    // Row r of the weights is patch value r (channel, ky, kx): the kernel's [n, k] transposed.
    let weights = (0..k * n).map(|index| kernel[(index % n) * k + index / n]).collect();
    let bias = bias.try_as_plain_ram()?;
    let bias = bias.as_slice::<f32>()?;
    let bias = match bias.len() {
        1 => vec![bias[0]; n],
        len if len == n => bias.to_vec(),
        _ => return Ok(None),
    };
    let strides = spec.strides();
    let patches = Patches {
        channels: c,
        input: (height, width),
        output_width: out_width,
        kernel: (kh, kw),
        strides: (strides[0], strides[1]),
        pad: (rows.pad_before, columns.pad_before),
    };
    let op = ConvProduct {
        input_shape: input_shape.into(),
        output_shape: output_shape.into(),
        pixels: out_height * out_width,
        rows: Rows::Patches(patches),
        channel_last: false,
        channel_axis,
        channels: (k, n),
        weights,
        bias,
        lower: None,
        upper: None,
    };
    Ok(Some((op, *image)))
}

/// Row-major strides of `shape`, in values.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}

/// The one stride that walks `axes` of `shape` (in order, each of more than one value) as a single axis, where
/// each axis's stride is the next one's times its size; 1 for no axes.
fn merged_stride(shape: &[usize], axes: impl Iterator<Item = usize>) -> Option<usize> {
    let strides = strides(shape);
    let axes: Vec<usize> = axes.collect();
    if axes.windows(2).any(|pair| strides[pair[0]] != strides[pair[1]] * shape[pair[1]]) {
        return None;
    }
    Some(axes.last().map_or(1, |&last| strides[last]))
}

#[cfg(test)]
mod tests;

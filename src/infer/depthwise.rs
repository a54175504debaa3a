//! A channel-last 3×3 depthwise convolution for the CPU plan, in place of tract's where it is faster.
//!
//! tract 0.23 runs a channel-last depthwise convolution output point by output point through a generic loop
//! (`eval_c_inner_generic`) with per-tap bookkeeping: on the bundled models 0.57 ms of BlazeFace's 1.7 and
//! 0.42 ms of the student's 2.0 (Intel Xeon with AVX-512, one thread), against onnxruntime's 0.17 and 0.22
//! (`BENCHMARKS.md`). This op works a whole output row at a time instead: the row starts as the bias, then
//! each of the nine taps in row order adds its input row, shifted, times its weights repeated along the row,
//! over the columns where the tap falls inside the input (the padding adds nothing, as tract's zeros). At
//! stride 1 that is one contiguous multiply-add per tap and row, which the compiler vectorises whatever the
//! channel count. Measured against tract's on the bundled layers, it wins at stride 1 on rows of up to
//! `MAX_ROW` values (BlazeFace's 64×64×24 layers: 0.08 ms against 0.16) and loses on stride 2 and on long
//! rows, so `rewrite` takes exactly those convolutions (3×3, undilated, stride 1, rows up to `MAX_ROW`) and
//! leaves every other one to tract.
//!
//! `rewrite` puts the op in place of a channel-first convolution between the same moves to and from
//! channel-last that tract's `conv_nhwc` transform wires, so decluttering cancels the moves between
//! neighbouring layers as it does for tract's own. It sums in another order than tract, so the plans differ
//! by rounding only; `layout::choose` checks the channel-last plan against the channel-first one on the test
//! pattern before using it, as it always has.

use anyhow::{Context, Result};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Longest output row (columns × channels) given to `Depthwise3x3`: its tiled weights (nine rows of it) stay
/// in the first-level cache. Longer rows ran slower than tract's own on the student's 28×144 layer.
const MAX_ROW: usize = 2048;

/// A 3×3 depthwise convolution of a channel-last f32 image (`[n, h, w, c]`, or `[h, w, c]` without a batch
/// axis), with its bias.
#[derive(Debug, Clone)]
pub struct Depthwise3x3 {
    channels: usize,
    /// Images in the batch, or None for an input without a batch axis.
    batch: Option<usize>,
    input: (usize, usize),
    output: (usize, usize),
    /// Rows above and columns left of the input that the first output point's taps reach (they read zeros).
    pad: (usize, usize),
    /// Per tap column kx, the output columns `first..end` whose tap falls inside the input.
    columns: [(usize, usize); 3],
    /// The bias repeated for each output column.
    bias_row: Vec<f32>,
    /// Each tap's weights repeated for each output column, `tiled[tap * ow * c + column * c + ch]`.
    tiled: Vec<f32>,
}

/// Equal when every (tiled) weight and bias has the same bits (so that tract's `Eq` holds, NaN included).
impl PartialEq for Depthwise3x3 {
    fn eq(&self, other: &Self) -> bool {
        use super::layout::same_bits;
        same_bits(&self.tiled, &other.tiled)
            && same_bits(&self.bias_row, &other.bias_row)
            && (self.channels, self.batch, self.input, self.output, self.pad)
                == (other.channels, other.batch, other.input, other.output, other.pad)
        // columns follow from the fields compared.
    }
}

impl Eq for Depthwise3x3 {}

impl Depthwise3x3 {
    /// `weights[(ky * 3 + kx) * channels + c]`; stride 1.
    fn new(
        weights: &[f32],
        bias: &[f32],
        batch: Option<usize>,
        input: (usize, usize),
        output: (usize, usize),
        pad: (usize, usize),
    ) -> Depthwise3x3 {
        let channels = bias.len();
        let out_width = output.1;
        // Output column `column` reads input column `column + kx - pad` for tap column kx.
        let columns = std::array::from_fn(|kx| {
            let inside = |column: usize| {
                let x = (column + kx) as isize - pad.1 as isize;
                x >= 0 && (x as usize) < input.1
            };
            let first = (0..out_width).find(|&column| inside(column)).unwrap_or(out_width);
            let end = (first..out_width).find(|&column| !inside(column)).unwrap_or(out_width);
            (first, end)
        });
        let bias_row = bias.repeat(out_width);
        let tiled = weights.chunks_exact(channels).flat_map(|tap| tap.repeat(out_width)).collect();
        Depthwise3x3 { channels, batch, input, output, pad, columns, bias_row, tiled }
    }

    /// The shape of an image of `height` × `width` in this op's batch and channels.
    fn shape(&self, (height, width): (usize, usize)) -> TVec<usize> {
        let mut shape: TVec<usize> = self.batch.into_iter().collect();
        shape.extend([height, width, self.channels]);
        shape
    }

    /// One image: `input` is `[h, w, c]`, `output` `[oh, ow, c]`. Per output row: the bias, then each of the
    /// nine taps in row order added over the columns whose tap falls inside the input (a tap outside adds
    /// nothing, as tract's zero padding). At stride 1 a tap's columns are one contiguous run of input and
    /// output, weighed by the tap's weights repeated per column (`tiled`): one loop the compiler
    /// vectorises, whatever the channel count.
    fn run_image(&self, input: &[f32], output: &mut [f32]) {
        let c = self.channels;
        let (height, width) = self.input;
        let (out_height, out_width) = self.output;
        let (row_len, out_len) = (width * c, out_width * c);
        for (oy, out_row) in output.chunks_exact_mut(out_len).take(out_height).enumerate() {
            out_row.copy_from_slice(&self.bias_row);
            for ky in 0..3 {
                let y = (oy + ky) as isize - self.pad.0 as isize;
                if y < 0 || y as usize >= height {
                    continue;
                }
                let row = &input[y as usize * row_len..][..row_len];
                for kx in 0..3 {
                    let tap = ky * 3 + kx;
                    let (first, end) = self.columns[kx];
                    if first >= end {
                        continue;
                    }
                    // Input column of output column `first` (inside, so not below 0).
                    let x = first + kx - self.pad.1;
                    let count = (end - first) * c;
                    let sums = &mut out_row[first * c..][..count];
                    let values = &row[x * c..][..count];
                    let weights = &self.tiled[tap * out_len + first * c..][..count];
                    for ((sum, &value), &weight) in sums.iter_mut().zip(values).zip(weights) {
                        *sum += value * weight;
                    }
                }
            }
        }
    }
}

impl Op for Depthwise3x3 {
    fn name(&self) -> StaticName {
        "Depthwise3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} channels, {:?} -> {:?}, stride 1, pad {:?}",
            self.channels, self.input, self.output, self.pad
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Depthwise3x3 {
    op_out_of_plan!();

    fn eval(&self, _context: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs.first().context("Depthwise3x3 takes one input")?;
        let input = input.try_as_plain_ram()?;
        let input = input.as_slice::<f32>()?;
        let (height, width) = self.input;
        let image_in = height * width * self.channels;
        let image_out = self.output.0 * self.output.1 * self.channels;
        let images = self.batch.unwrap_or(1);
        ensure!(
            input.len() == images * image_in,
            "Depthwise3x3: input of {} values, expected {}",
            input.len(),
            images * image_in
        );
        let mut output = Tensor::zero::<f32>(&self.shape(self.output))?;
        {
            let mut plain = output.try_as_plain_ram_mut()?;
            let values = plain.as_slice_mut::<f32>()?;
            for (image, out) in input.chunks_exact(image_in).zip(values.chunks_exact_mut(image_out)) {
                self.run_image(image, out);
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Depthwise3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        super::layout::own_op_input("Depthwise3x3", inputs, &self.shape(self.input))?;
        Ok(tvec!(f32::fact(self.shape(self.output))))
    }

    as_op!();
}

/// Replaces each channel-first 3×3 depthwise convolution of `model` that `Depthwise3x3` computes (f32, not
/// quantised, undilated, constant kernel and bias, concrete shape) with moves to channel-last, the op, and a
/// move back. Returns how many it replaced.
pub fn rewrite(model: &mut TypedModel) -> Result<usize> {
    let candidates: Vec<usize> =
        model.nodes.iter().filter(|node| node.op_as::<Conv>().is_some()).map(|node| node.id).collect();
    let mut replaced = 0;
    for id in candidates {
        let node = model.node(id);
        let Some(op) = depthwise_op(model, node)? else { continue };
        // Channels are the axis before height and width, with or without a batch axis.
        let channel_axis = model.outlet_fact(node.inputs[0])?.rank() - 3;
        super::layout::replace_channel_last(model, id, channel_axis, op, "depthwise3x3")?;
        replaced += 1;
    }
    Ok(replaced)
}

/// The `Depthwise3x3` computing `node`, or None when the node is not a convolution it covers.
fn depthwise_op(model: &TypedModel, node: &TypedNode) -> Result<Option<Depthwise3x3>> {
    let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
    let spec = &conv.pool_spec;
    let channels = conv.group;
    if conv.q_params.is_some()
        || node.inputs.len() != 3
        || channels < 2
        || conv.input_channels() != channels
        || conv.output_channels() != channels
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || spec.kernel_shape.as_slice() != [3, 3]
        || spec.dilations().iter().any(|&d| d != 1)
    {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = input.shape.as_concrete() else { return Ok(None) };
    let (batch, c, height, width) = match *shape {
        [n, c, h, w] if spec.data_format == DataFormat::NCHW => (Some(n), c, h, w),
        [c, h, w] if spec.data_format == DataFormat::CHW => (None, c, h, w),
        _ => return Ok(None),
    };
    let (Some(kernel), Some(bias)) =
        (model.outlet_fact(node.inputs[1])?.konst.clone(), model.outlet_fact(node.inputs[2])?.konst.clone())
    else {
        return Ok(None);
    };
    if c != channels || input.datum_type != f32::datum_type() || kernel.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let kernel_values = kernel.try_as_plain_ram()?;
    let kernel_values = kernel_values.as_slice::<f32>()?;
    // ONNX's layout, [c, 1, 3, 3] for a depthwise kernel (the only one tract's ONNX front end makes).
    if conv.kernel_fmt != KernelFormat::OIHW || kernel.shape() != [c, 1, 3, 3] {
        return Ok(None);
    }
    let mut weights = vec![0f32; 9 * c];
    for tap in 0..9 {
        for channel in 0..c {
            weights[tap * c + channel] = kernel_values[channel * 9 + tap];
        }
    }
    let bias_values = bias.try_as_plain_ram()?;
    let bias_values = bias_values.as_slice::<f32>()?;
    let bias = match bias_values.len() {
        1 => vec![bias_values[0]; c],
        n if n == c => bias_values.to_vec(),
        _ => return Ok(None),
    };
    if spec.strides().as_ref() != [1, 1] || width * c > MAX_ROW {
        return Ok(None);
    }
    let padding = spec.computed_padding(&[height, width]);
    let [rows, columns] = padding.as_slice() else { return Ok(None) };
    Ok(Some(Depthwise3x3::new(
        &weights,
        &bias,
        batch,
        (height, width),
        (rows.convoluted, columns.convoluted),
        (rows.pad_before, columns.pad_before),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    /// A channel-first model holding one depthwise convolution with a deterministic kernel and bias.
    fn model(shape: &[usize], strides: [usize; 2], padding: PaddingSpec) -> TypedModel {
        let (c, rank) = (shape[shape.len() - 3], shape.len());
        let kernel_shape = [c, 1, 3, 3];
        let kernel: Vec<f32> = (0..9 * c).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let bias: Vec<f32> = (0..c).map(|i| (i as f32 - 3.0) / 5.0).collect();
        let mut model = TypedModel::default();
        let source = model.add_source("x", f32::fact(shape)).unwrap();
        let kernel = model.add_const("kernel", Tensor::from_shape(&kernel_shape, &kernel).unwrap()).unwrap();
        let bias = model.add_const("bias", Tensor::from_shape(&[c], &bias).unwrap()).unwrap();
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: if rank == 4 { DataFormat::NCHW } else { DataFormat::CHW },
                kernel_shape: tvec!(3, 3),
                padding,
                dilations: None,
                strides: Some(tvec!(strides[0], strides[1])),
                input_channels: c,
                output_channels: c,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: c,
            q_params: None,
        };
        let out = model.wire_node("dw", conv, &[source, kernel, bias]).unwrap();
        model.select_output_outlets(&out).unwrap();
        model
    }

    fn input(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919 % 997) as f32 - 498.0) / 97.0).collect();
        Tensor::from_shape(shape, &values).unwrap()
    }

    /// tract's own convolution against the rewritten model: channel counts from 3 to 96, symmetric, asymmetric
    /// and no padding, odd sizes, inputs narrower than the kernel, with and without a batch axis, a batch of
    /// two: the same values up to rounding.
    #[test]
    fn matches_tracts_depthwise() {
        let explicit = |before: [usize; 2], after: [usize; 2]| {
            PaddingSpec::Explicit(tvec!(before[0], before[1]), tvec!(after[0], after[1]))
        };
        let cases = [
            (vec![1, 24, 9, 11], explicit([1, 1], [1, 1])),
            (vec![1, 28, 10, 10], explicit([0, 0], [1, 1])),
            (vec![2, 42, 8, 7], explicit([1, 2], [0, 1])),
            (vec![1, 3, 5, 6], PaddingSpec::Valid),
            (vec![17, 6, 9], PaddingSpec::SameUpper),
            (vec![1, 33, 3, 3], explicit([1, 1], [1, 1])),
            (vec![1, 96, 12, 12], explicit([1, 1], [1, 1])),
            (vec![1, 5, 2, 1], explicit([1, 1], [1, 1])),
        ];
        for (shape, padding) in cases {
            let reference = model(&shape, [1, 1], padding.clone());
            let mut rewritten = reference.clone();
            assert_eq!(rewrite(&mut rewritten).unwrap(), 1, "{shape:?}");
            let rewritten = rewritten.into_decluttered().unwrap().into_optimized().unwrap();
            assert!(rewritten.nodes.iter().any(|node| node.op_is::<Depthwise3x3>()), "{shape:?}");
            let run = |model: TypedModel| {
                let output = model.into_runnable().unwrap().run(tvec!(input(&shape).into_tvalue())).unwrap();
                output[0].clone().into_tensor()
            };
            let (expected, found) = (run(reference.into_optimized().unwrap()), run(rewritten));
            assert_eq!(expected.shape(), found.shape(), "{shape:?}");
            let values = |t: &Tensor| t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
            let (expected, found) = (values(&expected), values(&found));
            for (index, (e, f)) in expected.iter().zip(&found).enumerate() {
                assert!(
                    (e - f).abs() <= 1e-5 * e.abs().max(1.0),
                    "{shape:?} {padding:?} at {index}: {e} vs {f}"
                );
            }
        }
    }

    /// A convolution it does not cover stays tract's: stride 2, dilated, a row longer than `MAX_ROW`.
    #[test]
    fn leaves_other_convolutions() {
        let mut strided = model(&[1, 8, 9, 9], [2, 2], PaddingSpec::Valid);
        assert_eq!(rewrite(&mut strided).unwrap(), 0);
        let mut dilated = model(&[1, 8, 9, 9], [1, 1], PaddingSpec::Valid);
        let id = dilated.nodes.iter().position(|node| node.op_is::<Conv>()).unwrap();
        let conv = dilated.nodes[id].op_as_mut::<Conv>().unwrap();
        conv.pool_spec.dilations = Some(tvec!(2, 2));
        assert_eq!(rewrite(&mut dilated).unwrap(), 0);
        let mut wide = model(&[1, 144, 4, 28], [1, 1], PaddingSpec::SameUpper);
        assert_eq!(rewrite(&mut wide).unwrap(), 0);
    }
}

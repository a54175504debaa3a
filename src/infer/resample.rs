//! tract's `Resize` with its resampling plans computed once, at load, instead of on every run.
//!
//! tract 0.23's `Resize` builds each axis's plan (the taps and weights of every output index) on every run,
//! copies its input, and resamples axis by axis through a loop that, on the innermost axis, handles one value
//! at a time with a fill and two slices per value: the student's map head upsamples 32 channels from 7×7 to
//! 14×14 in 0.075 ms that way, against onnxruntime's 0.005 (`BENCHMARKS.md`). `Resample` holds the plans tract's
//! own `Resize::plan_axis` gives for the model's constant sizes, resamples the outer axes through tract's own
//! `resample_axis`, and the innermost one with a loop of its own that sums each output's taps in tract's order
//! (from zero, skipping zero weights). So its outputs are bit-identical to tract's.

use anyhow::Result;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::resize::{resample_axis, AxisPlan, Resize};

/// A resampling of an f32 tensor of a fixed shape, axis by axis, each through its precomputed plan.
#[derive(Debug, Clone)]
pub struct Resample {
    input_shape: TVec<usize>,
    output_shape: TVec<usize>,
    /// The axes resampled, in tract's order (increasing), with their plans.
    plans: Vec<(usize, AxisPlan)>,
}

/// Equal when the shapes and every plan's taps and weights (by bits) are.
impl PartialEq for Resample {
    fn eq(&self, other: &Self) -> bool {
        (&self.input_shape, &self.output_shape) == (&other.input_shape, &other.output_shape)
            && self.plans.len() == other.plans.len()
            && self.plans.iter().zip(&other.plans).all(|((axis, plan), (other_axis, other_plan))| {
                (axis, plan.window, &plan.indices, &plan.extrapolated)
                    == (other_axis, other_plan.window, &other_plan.indices, &other_plan.extrapolated)
                    && super::layout::same_bits(&plan.weights, &other_plan.weights)
            })
    }
}

impl Eq for Resample {}

/// The innermost axis resampled: per row of `len_in` values, each output the sum of its window's taps in
/// order, from zero, zero weights skipped, extrapolated outputs 0 (as tract's `resample_axis` with an
/// extrapolation value of 0).
fn resample_last(input: &[f32], len_in: usize, plan: &AxisPlan, output: &mut [f32]) {
    let len_out = plan.extrapolated.len();
    let window = plan.window;
    for (row, out) in input.chunks_exact(len_in).zip(output.chunks_exact_mut(len_out)) {
        for (x, value) in out.iter_mut().enumerate() {
            let mut sum = 0.0;
            if !plan.extrapolated[x] {
                for (&index, &weight) in
                    plan.indices[x * window..][..window].iter().zip(&plan.weights[x * window..])
                {
                    if weight != 0.0 {
                        sum += weight * row[index];
                    }
                }
            }
            *value = sum;
        }
    }
}

impl Op for Resample {
    fn name(&self) -> StaticName {
        "Resample".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?} -> {:?}", self.input_shape, self.output_shape)])
    }

    op_as_typed_op!();
}

impl EvalOp for Resample {
    op_out_of_plan!();

    fn eval(&self, _context: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs.first().context("Resample takes its data first")?;
        let input = input.try_as_plain_ram()?;
        let input = input.as_slice::<f32>()?;
        let expected: usize = self.input_shape.iter().product();
        ensure!(input.len() == expected, "Resample: input of {} values, expected {expected}", input.len());
        let mut shape = self.input_shape.clone();
        let last = shape.len() - 1;
        // The values after the axes resampled so far (the input before the first).
        let mut resampled: Option<Vec<f32>> = None;
        for (axis, plan) in &self.plans {
            let current = resampled.as_deref().unwrap_or(input);
            let (len_in, len_out) = (shape[*axis], plan.extrapolated.len());
            let mut next = vec![0f32; current.len() / len_in * len_out];
            if *axis == last {
                resample_last(current, len_in, plan, &mut next);
            } else {
                resample_axis(current, &shape, *axis, plan, 0.0, &mut next);
            }
            shape[*axis] = len_out;
            resampled = Some(next);
        }
        let output = Tensor::from_shape(&self.output_shape, resampled.as_deref().unwrap_or(input))?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Resample {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        super::layout::own_op_input("Resample", inputs, &self.input_shape)?;
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    as_op!();
}

/// Replaces each f32 `Resize` of `model` with a concrete input shape and constant sizes or scales by a
/// `Resample` holding its plans. Returns how many it replaced.
pub fn rewrite(model: &mut TypedModel) -> Result<usize> {
    let candidates: Vec<usize> =
        model.nodes.iter().filter(|node| node.op_is::<Resize>()).map(|node| node.id).collect();
    let mut replaced = 0;
    for id in candidates {
        let node = model.node(id);
        let Some(op) = resample_op(model, node)? else { continue };
        let (input, name) = (node.inputs[0], format!("{}.resample", node.name));
        super::layout::replace_span(model, input, id, name, op)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// The `Resample` computing `node`, or None when it is not a `Resize` it covers.
fn resample_op(model: &TypedModel, node: &TypedNode) -> Result<Option<Resample>> {
    let Some(resize) = node.op_as::<Resize>() else { return Ok(None) };
    let input = model.outlet_fact(node.inputs[0])?;
    let output = model.outlet_fact(OutletId::new(node.id, 0))?;
    let (Some(input_shape), Some(output_shape)) = (input.shape.as_concrete(), output.shape.as_concrete())
    else {
        return Ok(None);
    };
    if input.datum_type != f32::datum_type()
        || input_shape.is_empty()
        || input_shape.len() != output_shape.len()
    {
        return Ok(None);
    }
    // Every other input (sizes, scales) constant, as tract's `eval` would read them.
    let mut constants = vec![];
    for &outlet in &node.inputs[1..] {
        match &model.outlet_fact(outlet)?.konst {
            Some(konst) => constants.push(konst.clone()),
            None => return Ok(None),
        }
    }
    let given = |index: Option<usize>| index.and_then(|index| constants.get(index.checked_sub(1)?));
    // tract's `eval`: the scales input where it has one value per axis, else output over input lengths.
    let scales: Vec<f32> = match given(resize.optional_scales_input).filter(|s| s.len() == input_shape.len())
    {
        Some(scales) => scales.cast_to::<f32>()?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
        None => output_shape.iter().zip(input_shape).map(|(&o, &i)| o as f32 / i as f32).collect(),
    };
    let plans = input_shape
        .iter()
        .zip(output_shape)
        .zip(scales)
        .enumerate()
        .filter(|&(_, ((&len_in, &len_out), scale))| !(len_in == len_out && scale == 1.0))
        .map(|(axis, ((&len_in, &len_out), scale))| (axis, resize.plan_axis(scale, len_in, len_out)))
        .collect();
    Ok(Some(Resample { input_shape: input_shape.into(), output_shape: output_shape.into(), plans }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::nn::resize::{CoordTransformer, Interpolator, Nearest};

    /// A model of one `Resize` of an input of `shape` to `sizes` (constant i64), or by constant `scales`.
    fn model(shape: &[usize], resize: Resize, target: Tensor) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let target = model.add_const("target", target).unwrap();
        let y = model.wire_node("resize", resize, &[x, target]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    fn resize(coord_transformer: CoordTransformer, interpolator: Interpolator, sizes: bool) -> Resize {
        Resize {
            coord_transformer,
            interpolator,
            nearest: Nearest::Floor,
            optional_scales_input: (!sizes).then_some(1),
            optional_sizes_input: sizes.then_some(1),
        }
    }

    /// tract's `Resize` against `Resample`: up and down, by sizes and by scales, linear, cubic and nearest, the
    /// innermost axis resampled or not: the same bits.
    #[test]
    fn matches_tracts_resize() {
        let sizes = |values: &[i64]| Tensor::from_shape(&[values.len()], values).unwrap();
        let scales = |values: &[f32]| Tensor::from_shape(&[values.len()], values).unwrap();
        let cases = [
            (
                vec![1, 32, 7, 7],
                resize(CoordTransformer::HalfPixel, Interpolator::Linear, true),
                sizes(&[1, 32, 14, 14]),
            ),
            (
                vec![1, 3, 9, 5],
                resize(CoordTransformer::AlignCorners, Interpolator::Linear, true),
                sizes(&[1, 3, 4, 11]),
            ),
            (
                vec![2, 6, 5],
                resize(CoordTransformer::HalfPixel, Interpolator::Cubic, false),
                scales(&[1.0, 2.0, 3.0]),
            ),
            (
                vec![1, 4, 6, 6],
                resize(CoordTransformer::Asymmetric, Interpolator::Nearest, false),
                scales(&[1.0, 1.0, 1.5, 1.0]),
            ),
        ];
        for (shape, op, target) in cases {
            let what = format!("{shape:?} {op:?}");
            let reference = model(&shape, op, target);
            let mut rewritten = reference.clone();
            assert_eq!(rewrite(&mut rewritten).unwrap(), 1, "{what}");
            let rewritten = rewritten.into_optimized().unwrap();
            assert!(rewritten.nodes.iter().any(|node| node.op_is::<Resample>()), "{what}");
            let count: usize = shape.iter().product();
            let values: Vec<f32> = (0..count).map(|i| ((i * 7919 % 997) as f32 - 498.0) / 97.0).collect();
            let input = Tensor::from_shape(&shape, &values).unwrap();
            let run = |model: TypedModel| {
                let output = model.into_runnable().unwrap().run(tvec!(input.clone().into_tvalue())).unwrap();
                output[0].clone().into_tensor()
            };
            let (expected, found) = (run(reference), run(rewritten));
            assert_eq!(expected.shape(), found.shape(), "{what}");
            let bits = |t: &Tensor| -> Vec<u32> {
                t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
            };
            assert_eq!(bits(&expected), bits(&found), "{what}");
        }
    }

    /// A `Resize` of another type than f32 stays tract's.
    #[test]
    fn leaves_other_types() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", u8::fact([1, 2, 3, 3])).unwrap();
        let sizes = model.add_const("sizes", Tensor::from_shape(&[4], &[1i64, 2, 6, 6]).unwrap()).unwrap();
        let op = resize(CoordTransformer::HalfPixel, Interpolator::Linear, true);
        let y = model.wire_node("resize", op, &[x, sizes]).unwrap();
        model.select_output_outlets(&y).unwrap();
        assert_eq!(rewrite(&mut model).unwrap(), 0);
    }
}

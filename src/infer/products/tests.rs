//! `ConvProduct` against tract's own plans, and what `rewrite` leaves to tract.

use super::*;
use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::math::{add, max, min};

/// A decluttered model of one product `expr` (image `input`, weights `[n, k]`), a bias per output channel,
/// then a ReLU6 where `clamp` says, or a residual add of a second input where `residual` says.
fn model(input: &[usize], expr: &str, (k, n): (usize, usize), clamp: bool, residual: bool) -> TypedModel {
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact(input)).unwrap();
    let weights: Vec<f32> = (0..k * n).map(|i| ((i * 37 % 23) as f32 - 11.0) / 70.0).collect();
    let weights = model.add_const("w", Tensor::from_shape(&[n, k], &weights).unwrap()).unwrap();
    let op = EinSum::new(expr.parse().unwrap(), f32::datum_type());
    let mut y = model.wire_node("product", op, &[x, weights]).unwrap()[0];
    let shape = model.outlet_fact(y).unwrap().shape.as_concrete().unwrap().to_vec();
    let channel_axis = expr.split("->").nth(1).unwrap().find('O').unwrap();
    let mut bias_shape = vec![1; shape.len()];
    bias_shape[channel_axis] = n;
    let bias: Vec<f32> = (0..n).map(|i| (i as f32 - 7.0) / 10.0).collect();
    let bias = model.add_const("b", Tensor::from_shape(&bias_shape, &bias).unwrap()).unwrap();
    y = model.wire_node("bias", add(), &[y, bias]).unwrap()[0];
    if residual {
        let other = model.add_source("r", f32::fact(&shape)).unwrap();
        y = model.wire_node("residual", add(), &[y, other]).unwrap()[0];
    }
    if clamp {
        let ones = vec![1; shape.len()];
        let zero = model.add_const("zero", Tensor::from_shape(&ones, &[0f32]).unwrap()).unwrap();
        let six = model.add_const("six", Tensor::from_shape(&ones, &[6f32]).unwrap()).unwrap();
        y = model.wire_node("max", max(), &[y, zero]).unwrap()[0];
        y = model.wire_node("min", min(), &[y, six]).unwrap()[0];
    }
    model.select_output_outlets(&[y]).unwrap();
    model.into_decluttered().unwrap()
}

fn values(shape: &[usize], seed: usize) -> Tensor {
    let count: usize = shape.iter().product();
    let values: Vec<f32> = (0..count).map(|i| (((i + seed) * 7919 % 997) as f32 - 498.0) / 97.0).collect();
    Tensor::from_shape(shape, &values).unwrap()
}

/// tract's own plan against the rewritten one, for the layouts decluttering leaves (channel-first or
/// channel-last on either side, with and without a batch axis), with and without a clamp, pixel counts not
/// a multiple of the block: the same values up to rounding, and nothing left of the product but the op.
#[test]
fn matches_tracts_product() {
    let cases = [
        (&[16, 56, 56][..], "IHW,OI->HWO", (16, 96), true),
        (&[56, 56, 16], "HWI,OI->HWO", (16, 96), false),
        (&[24, 28, 29], "IHW,OI->OHW", (24, 144), true),
        (&[1, 33, 31, 3], "NHWI,OI->NHWO", (3, 20), true),
        (&[1, 30, 30, 24], "NHWI,OI->OHW", (24, 7), false),
        (&[1, 24, 40, 40], "NIHW,OI->NOHW", (24, 24), true),
    ];
    for (shape, expr, channels, clamp) in cases {
        let reference = model(shape, expr, channels, clamp, false);
        let mut rewritten = reference.clone();
        assert_eq!(rewrite(&mut rewritten).unwrap(), 1, "{shape:?} {expr}");
        let rewritten = rewritten.into_optimized().unwrap();
        let ops: Vec<String> = rewritten.nodes.iter().map(|node| node.op().name().to_string()).collect();
        assert_eq!(ops, ["Source", "ConvProduct"], "{shape:?} {expr}");
        assert_same_outputs(reference, rewritten, shape, &format!("{shape:?} {expr}"));
    }
}

/// A product it does not take stays tract's: more input channels, fewer pixels, a residual add after it.
#[test]
fn leaves_other_products() {
    for (shape, expr, channels, residual) in [
        (&[28, 28, 144][..], "HWI,OI->OHW", (144, 24), false),
        (&[16, 14, 14][..], "IHW,OI->HWO", (16, 96), false),
        (&[1, 64, 64, 24][..], "NHWI,OI->NHWO", (24, 28), true),
    ] {
        let mut model = model(shape, expr, channels, true, residual);
        assert_eq!(rewrite(&mut model).unwrap(), 0, "{shape:?} {expr}");
    }
}

/// A decluttered model of one convolution (`data_format`, one group, kernel `[n, c, kh, kw]`, bias), then a
/// ReLU6 where `clamp` says and a move of the channels last where `last` says.
fn convolution_model(
    input: &[usize],
    data_format: DataFormat,
    (n, kernel): (usize, [usize; 2]),
    (strides, padding): ([usize; 2], PaddingSpec),
    (clamp, last): (bool, bool),
) -> TypedModel {
    let c = if data_format.c_is_last() { input[input.len() - 1] } else { input[input.len() - 3] };
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact(input)).unwrap();
    let size = n * c * kernel[0] * kernel[1];
    let weights: Vec<f32> = (0..size).map(|i| ((i * 37 % 23) as f32 - 11.0) / 30.0).collect();
    let weights = Tensor::from_shape(&[n, c, kernel[0], kernel[1]], &weights).unwrap();
    let weights = model.add_const("w", weights).unwrap();
    let bias: Vec<f32> = (0..n).map(|i| (i as f32 - 2.0) / 10.0).collect();
    let bias = model.add_const("b", Tensor::from_shape(&[n], &bias).unwrap()).unwrap();
    let conv = Conv {
        pool_spec: PoolSpec {
            data_format,
            kernel_shape: tvec!(kernel[0], kernel[1]),
            padding,
            dilations: None,
            strides: Some(tvec!(strides[0], strides[1])),
            input_channels: c,
            output_channels: n,
        },
        kernel_fmt: KernelFormat::OIHW,
        group: 1,
        q_params: None,
    };
    let mut y = model.wire_node("conv", conv, &[x, weights, bias]).unwrap()[0];
    let rank = input.len();
    if clamp {
        let ones = vec![1; rank];
        let zero = model.add_const("zero", Tensor::from_shape(&ones, &[0f32]).unwrap()).unwrap();
        let six = model.add_const("six", Tensor::from_shape(&ones, &[6f32]).unwrap()).unwrap();
        y = model.wire_node("max", max(), &[y, zero]).unwrap()[0];
        y = model.wire_node("min", min(), &[y, six]).unwrap()[0];
    }
    if last {
        y = model.wire_node("last", AxisOp::Move(rank - 3, rank - 1), &[y]).unwrap()[0];
    }
    model.select_output_outlets(&[y]).unwrap();
    model.into_decluttered().unwrap()
}

/// The same values as `reference`'s plan from `rewritten`'s on the test values, up to rounding.
fn assert_same_outputs(reference: TypedModel, rewritten: TypedModel, input: &[usize], what: &str) {
    let run = |model: TypedModel| {
        let output = model.into_runnable().unwrap().run(tvec!(values(input, 3).into_tvalue())).unwrap();
        output[0].clone().into_tensor()
    };
    let (expected, found) = (run(reference.into_optimized().unwrap()), run(rewritten));
    assert_eq!(expected.shape(), found.shape(), "{what}");
    let plain = |t: &Tensor| t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
    for (index, (e, f)) in plain(&expected).iter().zip(&plain(&found)).enumerate() {
        assert!((e - f).abs() <= 1e-5 * e.abs().max(1.0), "{what} at {index}: {e} vs {f}");
    }
}

/// tract's own convolution against the product from gathered patches: strides 1 and 2, symmetric,
/// asymmetric, no and "same" padding, a kernel wider than the stride, with and without a batch axis, the
/// clamp and the move of the channels last folded in or not, pixel counts not a multiple of a block.
#[test]
fn matches_tracts_convolution() {
    let explicit = |before: [usize; 2], after: [usize; 2]| {
        PaddingSpec::Explicit(tvec!(before[0], before[1]), tvec!(after[0], after[1]))
    };
    let cases = [
        (
            &[1, 3, 112, 112][..],
            DataFormat::NCHW,
            (32, [3, 3]),
            ([2, 2], explicit([1, 1], [1, 1])),
            (true, true),
        ),
        (
            &[1, 3, 61, 60][..],
            DataFormat::NCHW,
            (16, [3, 3]),
            ([2, 2], explicit([1, 1], [1, 1])),
            (true, false),
        ),
        (&[3, 40, 41][..], DataFormat::CHW, (8, [3, 3]), ([1, 1], PaddingSpec::Valid), (false, true)),
        (
            &[1, 2, 57, 70][..],
            DataFormat::NCHW,
            (5, [3, 2]),
            ([1, 2], explicit([0, 1], [2, 0])),
            (false, false),
        ),
        (&[1, 3, 64, 64][..], DataFormat::NCHW, (24, [3, 3]), ([2, 2], PaddingSpec::SameUpper), (true, true)),
    ];
    for (shape, format, kernel, geometry, folds) in cases {
        let what = format!("{shape:?} {kernel:?} {geometry:?} {folds:?}");
        let reference = convolution_model(shape, format, kernel, geometry, folds);
        let mut rewritten = reference.clone();
        assert_eq!(rewrite(&mut rewritten).unwrap(), 1, "{what}");
        let rewritten = rewritten.into_optimized().unwrap();
        let ops: Vec<String> = rewritten.nodes.iter().map(|node| node.op().name().to_string()).collect();
        assert_eq!(ops, ["Source", "ConvProduct"], "{what}");
        assert_same_outputs(reference, rewritten, shape, &what);
    }
}

/// A convolution it does not take stays tract's: channel-last, a patch of more than `MAX_PATCH_VALUES`
/// values, fewer pixels than `MIN_PIXELS`, dilated.
#[test]
fn leaves_other_convolutions() {
    let same = ([2, 2], PaddingSpec::SameUpper);
    let channel_last =
        convolution_model(&[1, 64, 64, 3], DataFormat::NHWC, (8, [3, 3]), same.clone(), (true, false));
    let large =
        convolution_model(&[1, 3, 128, 128], DataFormat::NCHW, (24, [5, 5]), same.clone(), (true, false));
    let small =
        convolution_model(&[1, 3, 40, 40], DataFormat::NCHW, (8, [3, 3]), same.clone(), (true, false));
    let mut dilated = convolution_model(&[1, 3, 64, 64], DataFormat::NCHW, (8, [3, 3]), same, (true, false));
    let id = dilated.nodes.iter().position(|node| node.op_is::<Conv>()).unwrap();
    dilated.nodes[id].op_as_mut::<Conv>().unwrap().pool_spec.dilations = Some(tvec!(2, 2));
    for (mut model, what) in
        [(channel_last, "channel-last"), (large, "5x5"), (small, "small"), (dilated, "dilated")]
    {
        assert_eq!(rewrite(&mut model).unwrap(), 0, "{what}");
    }
}

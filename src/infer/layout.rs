//! Which layout a model's CPU plan runs its convolutions in, measured at load.
//!
//! tract keeps an ONNX model's convolutions channel-first (NCHW). Its depthwise convolutions run far faster
//! channel-last: the loop over channels is contiguous and vectorises, where channel-first has a vector kernel
//! only for stride 1 on x86_64 (the student's depthwise layers: 1.18 ms channel-first, 0.39 ms channel-last).
//! But every tensor moved between layouts is a copy, and a model whose depthwise layers sit between pools,
//! concatenations and residual adds pays more in moves than it gains (BlazeFace: 2.4 ms channel-first,
//! 3.8 ms channel-last). So a model with a depthwise convolution gets both plans at load, each checked against
//! the other on the test pattern and timed alternately, and keeps the channel-last one only when it is clearly
//! faster. Both compute the same products and sums per output, so they agree (bit for bit on x86_64).

use super::{agreement, fill_test_pattern};
use crate::manifest::ModelEntry;
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// A convolution layout of a CPU plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// tract's plan as the ONNX file lays it out (NCHW).
    ChannelFirst,
    /// Every convolution channel-last (NHWC) through tract's `conv_nhwc` transform.
    ChannelLast,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::ChannelFirst => "channel-first",
            Layout::ChannelLast => "channel-last",
        }
    }
}

/// The layout a model's plan runs in and what decided it.
#[derive(Clone, Debug)]
pub struct Choice {
    pub layout: Layout,
    /// Median ms of the timed runs at load: channel-first, and channel-last where it was built.
    pub channel_first_ms: Option<f64>,
    pub channel_last_ms: Option<f64>,
    /// Why channel-last was not tried or not kept, when it was not.
    pub reason: String,
}

/// Timed runs of each plan at load (after two untimed ones), alternating.
const RUNS: usize = 7;

/// How long the timed runs may take together before timing stops (after at least one run of each plan). On
/// a host a run takes milliseconds and all `RUNS` are timed; on an emulated CPU (the qemu guests of the tests,
/// where one BlazeFace run takes seconds) the choice rests on fewer runs, and where the agreement check's two
/// runs alone took longer than this, on their times, with no further runs, so start-up stays bounded.
pub(crate) const TIMING_BUDGET: Duration = Duration::from_millis(1500);

/// Whether the channel-last plan runs the convolutions `products::rewrite` takes as `products::ConvProduct`
/// (x86_64, where tract's own kernel choice for them is measured slow; `products`' header).
const OWN_PRODUCTS: bool = cfg!(target_arch = "x86_64");

/// Channel-last is kept only when its median is at most this fraction of channel-first's: a near tie stays
/// with the file's own layout, so a noisy start does not flip between plans that run alike.
const MARGIN: f64 = 0.9;

/// How far the channel-last plan's outputs may be from channel-first's on the test pattern, relative to the
/// largest output magnitude (at least 1): the same arithmetic in another loop order moves values by far less.
pub const AGREEMENT: f32 = 1e-4;

/// Whether the decluttered model has a depthwise convolution (each group one input and one output channel).
pub fn has_depthwise(model: &TypedModel) -> bool {
    model.nodes.iter().any(|node| {
        node.op_as::<Conv>().is_some_and(|conv| {
            conv.q_params.is_none()
                && conv.group > 1
                && conv.group == conv.input_channels()
                && conv.group == conv.output_channels()
        })
    })
}

/// The decluttered model with every convolution channel-last, decluttered again (so that the moves between
/// neighbouring convolutions cancel) and optimised; the depthwise convolutions `depthwise::rewrite` covers
/// run as its op, the rest as tract's.
pub fn channel_last(decluttered: &TypedModel) -> Result<TypedModel> {
    channel_last_with(decluttered, OwnOps::RUNTIME)
}

/// Which of deepgate's own ops a channel-last plan takes in place of tract's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnOps {
    /// `depthwise::Depthwise3x3` for the 3×3 depthwise convolutions it covers.
    pub depthwise: bool,
    /// `products::ConvProduct` for the convolutions it covers (1×1 with few input channels, the stem).
    pub products: bool,
    /// `resample::Resample` for tract's `Resize` with constant sizes (its plans computed once).
    pub resample: bool,
}

impl OwnOps {
    /// What the runtime uses: the depthwise op everywhere, the products where `OWN_PRODUCTS` says.
    pub const RUNTIME: OwnOps = OwnOps { depthwise: true, products: OWN_PRODUCTS, resample: true };
    /// tract's ops only (for the benchmarks' comparison).
    pub const NONE: OwnOps = OwnOps { depthwise: false, products: false, resample: false };
}

/// `channel_last` with `own` of deepgate's ops in place of tract's (the benchmarks compare them).
pub fn channel_last_with(decluttered: &TypedModel, own: OwnOps) -> Result<TypedModel> {
    let transform = tract_onnx::tract_core::transform::get_transform("conv_nhwc")?
        .context("this tract has no conv_nhwc transform")?;
    let mut model = decluttered.clone();
    if own.depthwise {
        super::depthwise::rewrite(&mut model)?;
    }
    transform.transform(&mut model)?;
    pools_channel_last(&mut model)?;
    let mut model = model.into_decluttered()?;
    if own.products {
        super::products::rewrite(&mut model)?;
    }
    if own.resample {
        super::resample::rewrite(&mut model)?;
    }
    model.into_optimized()
}

/// Each channel-first max-pool rewritten channel-last between two moves, as tract's `conv_nhwc` does for
/// convolutions: tract's max-pool cannot pass a move through itself, so without this every pool between
/// channel-last convolutions keeps a move on each side; with it, decluttering cancels the moves.
fn pools_channel_last(model: &mut TypedModel) -> Result<()> {
    let pools: Vec<usize> = model
        .nodes
        .iter()
        .filter(|node| {
            node.op_as::<MaxPool>().is_some_and(|pool| {
                pool.with_index_outputs.is_none() && pool.pool_spec.data_format == DataFormat::NCHW
            })
        })
        .map(|node| node.id)
        .collect();
    for id in pools {
        let node = model.node(id);
        let op = node.op_as::<MaxPool>().context("a max-pool node")?.clone();
        let pool = MaxPool {
            pool_spec: PoolSpec { data_format: DataFormat::NHWC, ..op.pool_spec },
            with_index_outputs: None,
        };
        replace_channel_last(model, id, 1, pool, "nhwc")?;
    }
    Ok(())
}

/// Replaces node `id`, whose first input is its data, channel-first with the channels on `channel_axis`, by
/// `op` computing the same channel-last, between a move of that input to channel-last and a move of the result
/// back, as tract's `conv_nhwc` wires a convolution: decluttering then cancels the moves between neighbouring
/// channel-last layers. The op's node is named after the node's name and `suffix`.
pub(crate) fn replace_channel_last(
    model: &mut TypedModel,
    id: usize,
    channel_axis: usize,
    op: impl Into<Box<dyn TypedOp>>,
    suffix: &str,
) -> Result<()> {
    let node = model.node(id);
    let last = model.outlet_fact(node.inputs[0])?.rank() - 1;
    let name = node.name.clone();
    let mut patch = TypedModelPatch::default();
    let input = patch.tap_model(model, node.inputs[0])?;
    let moved = patch.wire_node(format!("{name}.nhwc_in"), AxisOp::Move(channel_axis, last), &[input])?;
    let computed = patch.wire_node(format!("{name}.{suffix}"), op, &moved)?;
    let back = patch.wire_node(format!("{name}.nhwc_out"), AxisOp::Move(last, channel_axis), &computed)?;
    patch.shunt_outside(model, id.into(), back[0])?;
    patch.apply(model)?;
    Ok(())
}

/// Puts `op`, applied to `input` and named `name`, in place of node `last`'s first output: every node that read
/// it reads the op's instead, and the nodes that only fed it (from the one reading `input` to `last`) are left
/// unused for tract's pruning. How `products` and `resample` put their ops in.
pub(crate) fn replace_span(
    model: &mut TypedModel,
    input: OutletId,
    last: usize,
    name: String,
    op: impl Into<Box<dyn TypedOp>>,
) -> Result<()> {
    let mut patch = TypedModelPatch::default();
    let tapped = patch.tap_model(model, input)?;
    let wire = patch.wire_node(name, op, &[tapped])?;
    patch.shunt_outside(model, last.into(), wire[0])?;
    patch.apply(model)?;
    Ok(())
}

/// Whether `a` and `b` hold the same f32 bits: equality for deepgate's own ops' weights (tract's `Eq` must hold,
/// NaN included).
pub(crate) fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The first input fact of deepgate's own op `op`, checked to be f32 of `shape` (the shape it was built for):
/// the `output_facts` check every own op makes.
pub(crate) fn own_op_input<'a>(
    op: &str,
    inputs: &[&'a TypedFact],
    shape: &[usize],
) -> TractResult<&'a TypedFact> {
    let input = *inputs.first().with_context(|| format!("{op} takes its data first"))?;
    anyhow::ensure!(
        input.datum_type == f32::datum_type() && input.shape.as_concrete() == Some(shape),
        "{op}: input {input:?}, expected f32 {shape:?}"
    );
    Ok(input)
}

/// The plan to run: `channel_first` (the optimised model as parsed) or, for a model with a depthwise
/// convolution, its channel-last form where that agrees with it and runs clearly faster. Each plan's input
/// is the test pattern, in `entry`'s input shape. A channel-last form that cannot be built or disagrees is
/// reported in the choice's reason, never an error: the channel-first plan is the reference.
pub fn choose(
    decluttered: &TypedModel,
    channel_first: TypedModel,
    entry: &ModelEntry,
) -> Result<(TypedModel, Choice)> {
    let keep_first = |reason: String| Choice {
        layout: Layout::ChannelFirst,
        channel_first_ms: None,
        channel_last_ms: None,
        reason,
    };
    if !has_depthwise(decluttered) {
        return Ok((channel_first, keep_first("no depthwise convolution".into())));
    }
    let last = match channel_last(decluttered) {
        Ok(model) => model,
        Err(error) => return Ok((channel_first, keep_first(format!("channel-last plan failed: {error:#}")))),
    };
    let input = test_pattern(&entry.input.shape)?;
    let first_plan = channel_first.clone().into_runnable()?;
    let last_plan = last.clone().into_runnable()?;
    let mut first_state = TypedSimpleState::new(&first_plan)?;
    let mut last_state = match TypedSimpleState::new(&last_plan) {
        Ok(state) => state,
        Err(error) => return Ok((channel_first, keep_first(format!("channel-last plan failed: {error:#}")))),
    };
    // A run of a plan on the test pattern, with its time in ms.
    let run = |state: &mut TypedSimpleState| {
        let start = Instant::now();
        let outputs = state.run(tvec!(input.clone().into_tvalue()));
        (outputs, start.elapsed().as_secs_f64() * 1e3)
    };
    let (expected, first_check_ms) = run(&mut first_state);
    let expected = expected?;
    let (found, last_check_ms) = run(&mut last_state);
    let found = match found {
        Ok(found) => found,
        Err(error) => return Ok((channel_first, keep_first(format!("channel-last plan failed: {error:#}")))),
    };
    if let Err(error) = agreement(entry, &expected, &found, AGREEMENT, "the channel-last plan") {
        return Ok((channel_first, keep_first(format!("channel-last plan disagrees: {error:#}"))));
    }
    let (mut first_ms, mut last_ms) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
    if Duration::from_secs_f64((first_check_ms + last_check_ms) / 1e3) > TIMING_BUDGET {
        // Runs of seconds (an emulated CPU): the check's own two runs decide, and no more are made.
        first_ms.push(first_check_ms);
        last_ms.push(last_check_ms);
    } else {
        run(&mut first_state).0?;
        run(&mut last_state).0?;
        let timing = Instant::now();
        for _ in 0..RUNS {
            for (state, times) in [(&mut first_state, &mut first_ms), (&mut last_state, &mut last_ms)] {
                let (outputs, ms) = run(state);
                outputs?;
                times.push(ms);
            }
            if timing.elapsed() > TIMING_BUDGET {
                break;
            }
        }
    }
    let (first_ms, last_ms) = (median(&mut first_ms), median(&mut last_ms));
    let faster = last_ms <= MARGIN * first_ms;
    let choice = Choice {
        layout: if faster { Layout::ChannelLast } else { Layout::ChannelFirst },
        channel_first_ms: Some(first_ms),
        channel_last_ms: Some(last_ms),
        reason: if faster { String::new() } else { "channel-last not clearly faster".into() },
    };
    Ok((if faster { last } else { channel_first }, choice))
}

/// A tensor of `shape` holding the test pattern.
fn test_pattern(shape: &[usize]) -> Result<Tensor> {
    let mut values = vec![0f32; shape.iter().product()];
    fill_test_pattern(&mut values);
    Tensor::from_shape(shape, &values)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    /// Both bundled models: the channel-last plan agrees with the channel-first one (the check `choose` makes),
    /// and only a model with depthwise convolutions is offered it.
    #[test]
    fn bundled_models_agree_in_both_layouts() {
        let manifest = Manifest::load(std::path::Path::new("models/manifest.toml")).unwrap();
        for entry in &manifest.models {
            let bytes = super::super::read_verified(&manifest.path_of(entry), entry).unwrap();
            let mut model = super::super::parse_onnx(&bytes, entry).unwrap();
            model.set_input_fact(0, f32::fact(entry.input.shape).into()).unwrap();
            let decluttered = model.into_typed().unwrap().into_decluttered().unwrap();
            assert!(has_depthwise(&decluttered), "{}: both bundled models have depthwise layers", entry.id);
            let first = decluttered.clone().into_optimized().unwrap();
            let last = channel_last(&decluttered).unwrap();
            let input = test_pattern(&entry.input.shape).unwrap();
            let first = first.into_runnable().unwrap().run(tvec!(input.clone().into_tvalue())).unwrap();
            let last = last.into_runnable().unwrap().run(tvec!(input.into_tvalue())).unwrap();
            agreement(entry, &first, &last, AGREEMENT, "the channel-last plan").unwrap();
        }
    }

    /// A model without depthwise convolutions keeps its plan without building another.
    #[test]
    fn no_depthwise_keeps_channel_first() {
        let mut model = TypedModel::default();
        let source = model.add_source("x", f32::fact([1, 2, 4, 4])).unwrap();
        model.select_output_outlets(&[source]).unwrap();
        let optimised = model.clone().into_optimized().unwrap();
        let manifest = Manifest::load(std::path::Path::new("models/manifest.toml")).unwrap();
        let (_, choice) = choose(&model, optimised, &manifest.models[0]).unwrap();
        assert_eq!(choice.layout, Layout::ChannelFirst);
        assert_eq!(choice.reason, "no depthwise convolution");
    }
}

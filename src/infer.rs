//! Model loading through tract: checksum first, then parse, pin the input shape, optimise once, warm up.

use crate::manifest::{InputSpec, Manifest, ModelEntry};
use crate::preprocess::{normalise_into, RgbImage};
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::*;

thread_local! {
    static IN_INFERENCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside tract's inference call. tract allocates its intermediate and output tensors
/// on every run; the allocation test uses this to tell those allocations from the pipeline's own, which must
/// be none.
pub fn in_inference() -> bool {
    IN_INFERENCE.with(|flag| flag.get())
}

/// A loaded, optimised model with its input tensor allocated once.
pub struct Model {
    pub entry: ModelEntry,
    state: TypedSimpleState,
    input: Tensor,
}

/// Reads a model file and checks its size and SHA-256 against the manifest before anything parses it.
pub fn read_verified(path: &Path, entry: &ModelEntry) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| {
        format!("model `{}`: cannot read {} (missing or unreadable)", entry.id, path.display())
    })?;
    let found = hex(&Sha256::digest(&bytes));
    if found != entry.sha256.to_ascii_lowercase() {
        bail!(
            "model `{}`: {} does not match the manifest: sha256 expected {}, found {}; size expected {} bytes, found {}{}",
            entry.id,
            path.display(),
            entry.sha256,
            found,
            entry.bytes,
            bytes.len(),
            if (bytes.len() as u64) < entry.bytes { " (truncated?)" } else { "" }
        );
    }
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Model {
    /// Loads `entry` from the manifest's directory: verify, parse, pin, optimise, warm up.
    pub fn load(manifest: &Manifest, entry: &ModelEntry) -> Result<Model> {
        let path = manifest.path_of(entry);
        let bytes = read_verified(&path, entry)?;
        let context = || format!("model `{}` ({})", entry.id, path.display());
        let onnx = tract_onnx::onnx();
        let mut proto = onnx.proto_model_for_read(&mut &bytes[..]).with_context(context)?;
        let patched = add_default_constant_of_shape_values(&mut proto);
        if patched > 0 {
            log::debug!("model `{}`: gave {patched} ConstantOfShape nodes their float32 zero", entry.id);
        }
        let mut model = onnx.model_for_proto_model(&proto).with_context(context)?;

        let input_names: Vec<String> =
            model.input_outlets()?.iter().map(|outlet| model.node(outlet.node).name.clone()).collect();
        ensure!(
            input_names == [entry.input.name.as_str()],
            "{}: the manifest names input `{}`, the file has {:?}",
            context(),
            entry.input.name,
            input_names
        );
        let shape = entry.input.shape;
        model.set_input_fact(0, f32::fact(shape).into()).with_context(context)?;
        let output_names: Vec<&str> = entry.outputs.iter().map(|o| o.name.as_str()).collect();
        model
            .select_outputs_by_name(&output_names)
            .with_context(|| format!("{}: selecting outputs {output_names:?}", context()))?;
        let typed = model.into_optimized().with_context(context)?;
        for (index, spec) in entry.outputs.iter().enumerate() {
            let fact = typed.output_fact(index)?;
            let found: Option<Vec<usize>> = fact.shape.as_concrete().map(|dims| dims.to_vec());
            ensure!(
                found.as_deref() == Some(spec.shape.as_slice()),
                "{}: output `{}` has shape {:?}, the manifest says {:?}",
                context(),
                spec.name,
                fact.shape,
                spec.shape
            );
        }
        let plan = typed.into_runnable().with_context(context)?;
        let state = TypedSimpleState::new(&plan).with_context(context)?;
        let mut loaded = Model { entry: entry.clone(), state, input: Tensor::zero::<f32>(&shape)? };
        // The first runs pay for lazy initialisation inside tract; do them before the first real frame.
        for _ in 0..2 {
            loaded.run().with_context(|| format!("{}: warm-up run", context()))?;
        }
        log::info!(
            "model `{}` loaded: {} sha256 {} input {:?}",
            entry.id,
            path.display(),
            entry.sha256,
            shape
        );
        Ok(loaded)
    }

    /// Normalises `image` into the input tensor as the manifest says.
    pub fn set_input_image(&mut self, image: &RgbImage) -> Result<()> {
        let mut view = self.input.try_as_plain_ram_mut().context("model input tensor is not in RAM")?;
        let values = view.as_slice_mut::<f32>().context("model input tensor is not f32")?;
        normalise_into(image, &self.entry.input, values)
    }

    /// Lets `write` fill the input tensor's values itself (already normalised as the spec it is given says):
    /// the GPU path's output, or a crop tensor made for this model.
    pub fn write_input(&mut self, write: impl FnOnce(&InputSpec, &mut [f32]) -> Result<()>) -> Result<()> {
        let mut view = self.input.try_as_plain_ram_mut().context("model input tensor is not in RAM")?;
        let values = view.as_slice_mut::<f32>().context("model input tensor is not f32")?;
        write(&self.entry.input, values)
    }

    /// Runs the model on the current input and returns its outputs in manifest order.
    pub fn run(&mut self) -> Result<TVec<TValue>> {
        IN_INFERENCE.with(|flag| flag.set(true));
        let input = self.input.clone().into_tvalue();
        let outputs = self.state.run(tvec!(input));
        IN_INFERENCE.with(|flag| flag.set(false));
        outputs.with_context(|| format!("running model `{}`", self.entry.id))
    }
}

/// Gives every ConstantOfShape node without a `value` attribute the float32 zero the ONNX specification
/// defines as the default (tract 0.23 assumes float64, which breaks BlazeFace). Returns how many were changed.
fn add_default_constant_of_shape_values(proto: &mut pb::ModelProto) -> usize {
    let Some(graph) = proto.graph.as_mut() else { return 0 };
    let mut patched = 0;
    for node in graph.node.iter_mut().filter(|node| node.op_type == "ConstantOfShape") {
        if node.attribute.iter().any(|attribute| attribute.name == "value") {
            continue;
        }
        node.attribute.push(pb::AttributeProto {
            name: "value".into(),
            r#type: pb::attribute_proto::AttributeType::Tensor as i32,
            t: Some(pb::TensorProto {
                dims: vec![1],
                data_type: pb::tensor_proto::DataType::Float as i32,
                float_data: vec![0.0],
                ..Default::default()
            }),
            ..Default::default()
        });
        patched += 1;
    }
    patched
}

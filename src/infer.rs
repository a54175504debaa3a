//! Model loading through tract: checksum first, then parse, pin the input shape, optimise once, warm up.

use crate::manifest::{InputSpec, Manifest, ModelEntry};
use crate::preprocess::{normalise_into, RgbImage};
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::*;

pub mod depthwise;
pub mod layout;
pub mod products;
pub mod resample;

thread_local! {
    static IN_INFERENCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Where one model's inference runs.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// tract on the CPU: the reference, and the default until a board's measurement says otherwise.
    #[default]
    Cpu,
    /// tract's CUDA runtime, when the GPU is usable (else the CPU, and `backend` says whether that is a fault).
    /// The CPU plan is kept loaded: a GPU failure during the run redoes that inference on it.
    Cuda,
}

/// Whether this thread is inside tract's inference call. tract allocates its intermediate and output tensors
/// on every run; the allocation test uses this to tell those allocations from the pipeline's own, which must
/// be none.
pub fn in_inference() -> bool {
    IN_INFERENCE.with(|flag| flag.get())
}

/// A loaded, optimised model with its input tensor allocated once: the CPU plan always, and with
/// `Placement::Cuda` where the GPU is usable, a plan on tract's CUDA runtime that runs instead until it fails.
pub struct Model {
    pub entry: ModelEntry,
    state: TypedSimpleState,
    /// The plan on tract's CUDA runtime while it is healthy; the first error (or panic) drops it for good.
    gpu: Option<Box<dyn State>>,
    /// Why the GPU plan is not (or no longer) used, once: at load with `Placement::Cuda`, or during a run.
    gpu_failure: Option<anyhow::Error>,
    input: Tensor,
    /// The CPU plan's convolution layout, measured at load (`layout`).
    layout: layout::Choice,
}

/// How far a model's outputs on the GPU may be from the CPU plan's at load, relative to the largest output
/// magnitude (at least 1): float reassociation and cuBLAS/cuDNN algorithms move values by far less; a wrong
/// plan moves them by far more.
pub const GPU_AGREEMENT: f32 = 1e-2;

/// Reads a model file and checks its size and SHA-256 against the manifest before anything parses it.
pub fn read_verified(path: &Path, entry: &ModelEntry) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| {
        format!("model `{}`: cannot read {} (missing or unreadable)", entry.id, path.display())
    })?;
    let found = crate::hex::to_hex(&Sha256::digest(&bytes));
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

/// Parses an ONNX file's bytes as tract's inference model, ConstantOfShape defaults patched, and checks that
/// its one input has the manifest's name. Its input fact is the file's own: `Model::load_on` pins it.
pub fn parse_onnx(bytes: &[u8], entry: &ModelEntry) -> Result<InferenceModel> {
    let onnx = tract_onnx::onnx();
    let mut proto = onnx.proto_model_for_read(&mut &bytes[..])?;
    let patched = add_default_constant_of_shape_values(&mut proto);
    if patched > 0 {
        log::debug!("model `{}`: gave {patched} ConstantOfShape nodes their float32 zero", entry.id);
    }
    let model = onnx.model_for_proto_model(&proto)?;
    let input_names: Vec<String> =
        model.input_outlets()?.iter().map(|outlet| model.node(outlet.node).name.clone()).collect();
    ensure!(
        input_names == [entry.input.name.as_str()],
        "the manifest names input `{}`, the file has {:?}",
        entry.input.name,
        input_names
    );
    Ok(model)
}

impl Model {
    /// Loads `entry` from the manifest's directory on the CPU: verify, parse, pin, optimise, warm up.
    pub fn load(manifest: &Manifest, entry: &ModelEntry) -> Result<Model> {
        Model::load_on(manifest, entry, Placement::Cpu)
    }

    /// Loads `entry` as `load` does, and with `Placement::Cuda` also prepares it on tract's CUDA runtime and
    /// checks that plan against the CPU's on a test pattern. A model that cannot be placed on the GPU still
    /// loads (on the CPU), with the reason kept for `take_gpu_failure`; only a bad model file is an error.
    pub fn load_on(manifest: &Manifest, entry: &ModelEntry, placement: Placement) -> Result<Model> {
        let path = manifest.path_of(entry);
        let bytes = read_verified(&path, entry)?;
        let context = || format!("model `{}` ({})", entry.id, path.display());
        let mut model = parse_onnx(&bytes, entry).with_context(context)?;
        let shape = entry.input.shape;
        model.set_input_fact(0, f32::fact(shape).into()).with_context(context)?;
        let output_names: Vec<&str> = entry.outputs.iter().map(|o| o.name.as_str()).collect();
        model
            .select_outputs_by_name(&output_names)
            .with_context(|| format!("{}: selecting outputs {output_names:?}", context()))?;
        let decluttered =
            model.into_typed().and_then(|typed| typed.into_decluttered()).with_context(context)?;
        let optimised = decluttered.clone().into_optimized().with_context(context)?;
        let (typed, layout) = layout::choose(&decluttered, optimised, entry).with_context(context)?;
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
        let mut loaded = Model {
            entry: entry.clone(),
            state,
            gpu: None,
            gpu_failure: None,
            input: Tensor::zero::<f32>(&shape)?,
            layout,
        };
        // The first runs pay for lazy initialisation inside tract; do them before the first real frame. (One
        // where a run takes seconds, as on an emulated CPU, and none where the layout check at load already ran
        // the plans that slowly: start-up stays bounded, and there the first frame is slow anyway.)
        let slow = |ms: Option<f64>| ms.is_some_and(|ms| ms > layout::TIMING_BUDGET.as_secs_f64() * 1e3);
        let choice = &loaded.layout;
        let warm_ups = if slow(choice.channel_first_ms) || slow(choice.channel_last_ms) { 0 } else { 2 };
        for _ in 0..warm_ups {
            let start = std::time::Instant::now();
            loaded.run().with_context(|| format!("{}: warm-up run", context()))?;
            if start.elapsed() > layout::TIMING_BUDGET {
                break;
            }
        }
        if placement == Placement::Cuda {
            match loaded.place_on_gpu(decluttered) {
                Ok(agreement) => log::info!(
                    "model `{}`: inference on the GPU (tract CUDA runtime); outputs within {agreement:.2e} of the \
                     CPU plan's on the test pattern",
                    entry.id
                ),
                Err(error) => {
                    loaded.gpu_failure = Some(error.context(format!("model `{}`: no GPU inference", entry.id)))
                }
            }
        }
        log::info!(
            "model `{}` loaded: {} sha256 {} input {:?}, inference on the {}; CPU plan {}",
            entry.id,
            path.display(),
            entry.sha256,
            shape,
            loaded.placement_name(),
            loaded.layout_summary()
        );
        Ok(loaded)
    }

    /// Prepares the model on tract's CUDA runtime, warms it up, and checks it against the CPU plan on a test
    /// pattern. Returns the largest difference found (relative, as `GPU_AGREEMENT` states it).
    fn place_on_gpu(&mut self, decluttered: TypedModel) -> Result<f32> {
        let mut gpu = cuda_state(decluttered)?;
        self.write_input(|_, values| {
            fill_test_pattern(values);
            Ok(())
        })?;
        let on_cpu = self.run()?;
        run_on_gpu(gpu.as_mut(), &self.input).context("warm-up run on the GPU")?;
        let on_gpu = run_on_gpu(gpu.as_mut(), &self.input).context("second run on the GPU")?;
        let agreement = agreement(&self.entry, &on_cpu, &on_gpu, GPU_AGREEMENT, "the GPU plan")?;
        self.write_input(|_, values| {
            values.fill(0.0);
            Ok(())
        })?;
        self.gpu = Some(gpu);
        Ok(agreement)
    }

    /// The CPU plan's convolution layout and the measurement that chose it.
    pub fn layout(&self) -> &layout::Choice {
        &self.layout
    }

    /// The layout in words: "channel-last (at load: channel-first 2.90 ms, channel-last 2.23 ms a run)".
    pub fn layout_summary(&self) -> String {
        let choice = &self.layout;
        match (choice.channel_first_ms, choice.channel_last_ms) {
            (Some(first), Some(last)) => format!(
                "{} (at load: channel-first {first:.2} ms, channel-last {last:.2} ms a run)",
                choice.layout.name()
            ),
            _ => format!("{} ({})", choice.layout.name(), choice.reason),
        }
    }

    /// "GPU" while the model's inference runs on tract's CUDA runtime, else "CPU".
    pub fn placement_name(&self) -> &'static str {
        if self.gpu.is_some() {
            "GPU"
        } else {
            "CPU"
        }
    }

    /// Why the model is not running on the GPU though its placement asked for it, once: at load, or the error
    /// that made it drop the GPU plan during a run (that run was redone on the CPU, as is every one after).
    pub fn take_gpu_failure(&mut self) -> Option<anyhow::Error> {
        self.gpu_failure.take()
    }

    /// Normalises `image` into the input tensor as the manifest says.
    pub fn set_input_image(&mut self, image: &RgbImage) -> Result<()> {
        self.write_input(|spec, values| normalise_into(image, spec, values))
    }

    /// Lets `write` fill the input tensor's values itself (already normalised as the spec it is given says):
    /// the GPU path's output, or a crop tensor made for this model.
    pub fn write_input(&mut self, write: impl FnOnce(&InputSpec, &mut [f32]) -> Result<()>) -> Result<()> {
        let mut view = self.input.try_as_plain_ram_mut().context("model input tensor is not in RAM")?;
        let values = view.as_slice_mut::<f32>().context("model input tensor is not f32")?;
        write(&self.entry.input, values)
    }

    /// Runs the model on the current input and returns its outputs in manifest order: on the GPU plan while it
    /// is healthy. When the GPU plan fails, the same input is run on the CPU plan: if the CPU runs it, the GPU
    /// failed where the model did not (a `GpuFault`, as is a contained panic), so the GPU plan is dropped and
    /// the CPU runs every later input; if the CPU fails too, the input is at fault: that run's error, and the
    /// GPU plan stays (unless it panicked, which leaves it unusable).
    pub fn run(&mut self) -> Result<TVec<TValue>> {
        IN_INFERENCE.with(|flag| flag.set(true));
        let outputs = self.run_placed();
        IN_INFERENCE.with(|flag| flag.set(false));
        outputs.with_context(|| format!("running model `{}`", self.entry.id))
    }

    fn run_placed(&mut self) -> Result<TVec<TValue>> {
        let Some(gpu) = self.gpu.as_mut() else {
            return self.state.run(tvec!(self.input.clone().into_tvalue()));
        };
        let on_gpu = match run_on_gpu(gpu.as_mut(), &self.input) {
            Ok(found) => return Ok(found),
            Err(error) => error,
        };
        match self.state.run(tvec!(self.input.clone().into_tvalue())) {
            Ok(found) => {
                self.drop_gpu(on_gpu);
                Ok(found)
            }
            Err(on_cpu) => {
                // A contained panic leaves the GPU plan unusable whatever the input was.
                if crate::gpu::is_fault(&on_gpu) {
                    self.drop_gpu(on_gpu);
                }
                Err(on_cpu.context("the input fails on the CPU plan as on the GPU's"))
            }
        }
    }

    fn drop_gpu(&mut self, error: anyhow::Error) {
        self.gpu = None;
        let fault = if crate::gpu::is_fault(&error) {
            error
        } else {
            crate::gpu::GpuFault::error(format!("{error:#}"))
        };
        self.gpu_failure =
            Some(fault.context(format!(
                "model `{}`: inference on the GPU failed; the CPU takes over",
                self.entry.id
            )));
    }
}

/// One run of a GPU plan on `input`, its panics contained. The outputs are brought back here (tract-cuda copies
/// them on first read), so that a failed copy is this run's failure, redone on the CPU, and not an error in
/// whoever reads them.
fn run_on_gpu(gpu: &mut dyn State, input: &Tensor) -> Result<TVec<TValue>> {
    crate::gpu::contain("tract's CUDA runtime", || {
        let outputs = gpu.run(tvec!(input.clone().into_tvalue()))?;
        for output in &outputs {
            output.try_as_plain_ram()?;
        }
        Ok(outputs)
    })
}

/// tract's CUDA runtime, if it can run here: the driver, a GPU and NVRTC (probed before anything touches
/// them), then tract-cuda's own check (cudart, cuBLAS, cuDNN 9, a recent enough driver). Never panics.
#[cfg(feature = "cuda")]
pub fn cuda_runtime() -> Result<&'static dyn Runtime> {
    // Linking the crate registers its runtime with tract (`runtime_for_name` finds it through `inventory`).
    use tract_cuda as _;
    crate::gpu::probe()?;
    crate::gpu::contain("tract's CUDA runtime", || {
        runtime_for_name("cuda")
            .context("tract's CUDA runtime cannot run here")?
            .context("tract's CUDA runtime is not in this build")
    })
}

#[cfg(not(feature = "cuda"))]
pub fn cuda_runtime() -> Result<&'static dyn Runtime> {
    bail!("this build has no CUDA path (built without the `cuda` feature)")
}

/// The model's plan on tract's CUDA runtime, ready to run; or why it cannot be had here. tract-cuda's own
/// panics (no context, no stream, no headers for its kernels) are contained.
fn cuda_state(decluttered: TypedModel) -> Result<Box<dyn State>> {
    let runtime = cuda_runtime()?;
    crate::gpu::contain("tract's CUDA runtime", || {
        let plan = runtime.prepare(decluttered).context("preparing the model for tract's CUDA runtime")?;
        plan.spawn()
    })
}

/// A fixed input that exercises every channel and position: smooth waves in -1..1, no two values alike.
pub fn fill_test_pattern(values: &mut [f32]) {
    for (index, value) in values.iter_mut().enumerate() {
        *value = ((index as f32) * 0.618_034).sin() * 0.9;
    }
}

/// The largest difference between two plans' outputs on the same input, relative to the larger of 1 and the
/// largest reference output magnitude; an error naming the output if it passes `limit`. `plan` names the
/// plan under test ("the GPU plan") against the CPU plan.
fn agreement(
    entry: &ModelEntry,
    reference: &[TValue],
    found: &[TValue],
    limit: f32,
    plan: &str,
) -> Result<f32> {
    ensure!(
        reference.len() == found.len(),
        "{plan} gives {} outputs, the CPU plan {}",
        found.len(),
        reference.len()
    );
    let mut worst = 0f32;
    for ((spec, cpu), other) in entry.outputs.iter().zip(reference).zip(found) {
        let (cpu, other) = (cpu.try_as_plain_ram()?, other.try_as_plain_ram()?);
        let (cpu, other) = (cpu.as_slice::<f32>()?, other.as_slice::<f32>()?);
        ensure!(
            cpu.len() == other.len(),
            "output `{}`: {} values from {plan}, {} from the CPU plan",
            spec.name,
            other.len(),
            cpu.len()
        );
        let scale = cpu.iter().fold(1f32, |most, value| most.max(value.abs()));
        let mut difference = 0f32;
        for (a, b) in cpu.iter().zip(other) {
            // `max` would pass over a NaN: a value the CPU plan has and the other lacks is refused outright.
            ensure!(
                b.is_finite() || !a.is_finite(),
                "output `{}` from {plan} holds {b} where the CPU plan has {a}",
                spec.name
            );
            difference = difference.max((a - b).abs() / scale);
        }
        ensure!(
            difference <= limit,
            "output `{}` from {plan} differs from the CPU plan's by {difference:.3e} (relative; at most \
             {limit:.0e} is accepted)",
            spec.name
        );
        worst = worst.max(difference);
    }
    Ok(worst)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A GPU plan that always fails, as a device that stopped would.
    #[derive(Debug, Clone)]
    struct Refusing(Box<dyn State>);

    impl State for Refusing {
        fn run(&mut self, _inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
            Err(anyhow::anyhow!("the device refused the launch"))
        }

        fn runnable(&self) -> &dyn Runnable {
            self.0.runnable()
        }
    }

    fn student() -> Model {
        let manifest = Manifest::load(Path::new("models/manifest.toml")).expect("the bundled manifest");
        let entry = manifest
            .get("deepgate_student", crate::manifest::Role::Classifier)
            .expect("the shipped classifier")
            .clone();
        Model::load(&manifest, &entry).expect("the shipped classifier loads")
    }

    #[test]
    fn a_gpu_plan_that_fails_where_the_cpu_does_not_is_dropped_as_a_gpu_fault() {
        let mut model = student();
        let expected = model.run().expect("the CPU plan runs");
        model.gpu = Some(Box::new(Refusing(Box::new(model.state.clone()))));
        let outputs = model.run().expect("the CPU takes over the same input");
        let logits = |values: &TVec<TValue>| -> Vec<f32> {
            let plain = values[0].try_as_plain_ram().expect("outputs in memory");
            plain.as_slice::<f32>().expect("f32 logits").to_vec()
        };
        assert_eq!(logits(&outputs), logits(&expected));
        assert!(model.gpu.is_none(), "the GPU plan is dropped");
        let failure = model.take_gpu_failure().expect("the reason is kept for the controller");
        assert!(crate::gpu::is_fault(&failure), "{failure:#}");
    }

    #[test]
    fn an_input_that_fails_on_both_plans_is_that_runs_error_and_the_gpu_plan_stays() {
        let mut model = student();
        model.gpu = Some(Box::new(Refusing(Box::new(model.state.clone()))));
        model.input = Tensor::zero::<f32>(&[1, 3, 5, 5]).expect("a tensor of the wrong shape");
        let error = model.run().expect_err("no plan can run a wrong-shaped input");
        assert!(!crate::gpu::is_fault(&error), "{error:#}");
        assert!(model.gpu.is_some(), "the GPU plan stays");
        assert!(model.take_gpu_failure().is_none());
    }
}

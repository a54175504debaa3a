//! Model inference alone, under tract's variants and onnxruntime, side by side in one run (issue 15 point 3).
//!
//! `cargo run --release --features infer-bench --example infer_variants -- [--rounds R] [--runs N] [--int8 PATH]...
//! [--form ID=PATH]... [--no-peer] [--python PATH] [--profile]` (the feature brings tract-linalg's
//! `multithread-mm` and tract-nnef)
//!
//! Per manifest model (the detector and the classifier the bundled manifest names), on deepgate's test pattern:
//!   runtime      `deepgate::infer::Model`: the input fact pinned to the manifest's shape, then
//!                `into_optimized` in the convolution layout chosen at load, one thread (what the runtime runs)
//!   unpinned     the file's own input fact, `into_optimized` straight from the ONNX inference model
//!   nchw, nhwc   the pinned plan with its convolutions channel-first (as the file lays them out) and
//!                channel-last (`infer::layout`), whichever the runtime chose at load
//!   nhwc-tract   channel-last with tract's own convolutions (without `infer::depthwise`'s op or `infer::products`')
//!   nhwc-tract-products   channel-last with `infer::depthwise`'s op but tract's own matrix products where
//!                `infer::products` would take them (x86_64)
//!   mt2, mt2-eager   the runtime's plan inside tract-linalg's 2-thread executor (`Executor::multithread`),
//!                with tract's default threading thresholds, then with every threshold at 0 (thread always)
//!   nnef         the pinned, decluttered model written as NNEF (tract_core extensions) and read back: start
//!                time from the NNEF bytes against the ONNX bytes, run time of its optimised plan
//!   int8:FILE    (classifier, each --int8) a quantised ONNX form, loaded and pinned as the runtime does
//!   form:FILE    (model ID, each --form ID=PATH) another ONNX form of that model (e.g. rewritten by
//!                bench/strided_to_slice.py, or another student architecture from bench/student_forms.py), loaded
//!                and pinned as the runtime does; `form:FILE ort1` the same file in onnxruntime, one thread (a
//!                form's "vs ort1" is against it)
//!   ort1, ort2   onnxruntime (bench/.venv, `bench/infer_peer.py` as a co-process), 1 and 2 intra-op threads
//! Variants alternate within every round; the table gives per-run medians over all rounds, the spread of the
//! rounds' medians, the start (load) time, and each variant's largest output difference from the runtime plan (a
//! form's onnxruntime run: from the form's tract plan; a form itself: none, its weights being its own).
//!
//! `--profile` (instead of the variants): where the runtime's plan (the same tract calls as
//! `Model::load_on`) spends its time. `--runs` runs (at least 50) through `SimpleState::run_plan_with_eval`,
//! each node's `eval` timed, alternating with plain runs; then onnxruntime's profiler on the same model
//! (`bench/profile_peer.py --json`, unless --no-peer). Per operator kind (convolutions by kernel and groups:
//! conv 1x1, depthwise 3x3, conv 5x5, ...; then pool, activation, layout, ...), each side's share of its
//! profiled time, scaled to its plain run time, side by side; per tract op; and each side's 15 slowest nodes
//! (name, op, shapes). An optimised tract node takes its kind from the decluttered node whose name it extends
//! (`NAME.im2col` from `NAME`), and a matrix product with fused bias, activation or add takes its packing's,
//! so these count as the convolution, as they do in onnxruntime's fused kernels.

use anyhow::{bail, ensure, Context, Result};
use deepgate::infer::{fill_test_pattern, layout, parse_onnx, read_verified, Model};
use deepgate::manifest::{Manifest, ModelEntry};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;
use tract_linalg::multithread::{self, Executor};
use tract_onnx::prelude::*;

/// `--profile`: where the runtime's plan spends its time, node by node, beside onnxruntime's profiler.
#[path = "infer_variants/profile.rs"]
mod profile;

struct Options {
    rounds: usize,
    runs: usize,
    int8: Vec<PathBuf>,
    /// Other ONNX forms of a manifest model (`--form ID=PATH`), e.g. rewritten by bench/strided_to_slice.py.
    forms: Vec<(String, PathBuf)>,
    peer: bool,
    python: PathBuf,
    profile: bool,
}

fn options() -> Result<Options> {
    let mut options = Options {
        rounds: 5,
        runs: 60,
        int8: vec![],
        forms: vec![],
        peer: true,
        python: PathBuf::from("bench/.venv/bin/python"),
        profile: false,
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let mut value = || arguments.next().with_context(|| format!("{argument} needs a value"));
        match argument.as_str() {
            "--rounds" => options.rounds = value()?.parse().context("--rounds")?,
            "--runs" => options.runs = value()?.parse().context("--runs")?,
            "--int8" => options.int8.push(PathBuf::from(value()?)),
            "--form" => {
                let value = value()?;
                let (id, path) = value.split_once('=').context("--form takes MODEL_ID=PATH")?;
                options.forms.push((id.to_string(), PathBuf::from(path)));
            }
            "--python" => options.python = PathBuf::from(value()?),
            "--no-peer" => options.peer = false,
            "--profile" => options.profile = true,
            other => bail!("unknown argument `{other}` (see the header of examples/infer_variants.rs)"),
        }
    }
    ensure!(options.rounds > 0 && options.runs > 0, "--rounds and --runs must be at least 1");
    Ok(options)
}

/// How a variant runs: the runtime's own `Model`, or a plan of its own with its input.
enum Plan {
    Runtime(Box<Model>),
    Typed {
        state: Box<TypedSimpleState>,
        input: Tensor,
    },
    /// onnxruntime on the manifest's file, or on `model` (a `--form`).
    Peer {
        threads: usize,
        model: Option<PathBuf>,
    },
}

struct Variant {
    name: String,
    plan: Plan,
    executor: Option<(Executor, bool)>,
    load_ms: Option<f64>,
    times: Vec<f64>,
    round_medians: Vec<f64>,
    difference: f32,
    /// The variant whose outputs this one's are compared with: the runtime plan (0) unless said otherwise; None
    /// for a form, whose weights are its own.
    compared_with: Option<usize>,
    /// The onnxruntime time its ratio is taken against.
    against: Against,
}

/// What a variant's "vs ort1" ratio is taken against.
enum Against {
    /// onnxruntime on the manifest's file, one thread.
    Ort1,
    /// Another variant: a form against the same form in onnxruntime.
    Variant(usize),
    /// No ratio: a form's own onnxruntime run.
    Nothing,
}

impl Variant {
    fn new(name: impl Into<String>, plan: Plan, load_ms: Option<f64>) -> Variant {
        Variant {
            name: name.into(),
            plan,
            executor: None,
            load_ms,
            times: vec![],
            round_medians: vec![],
            difference: 0.0,
            compared_with: Some(0),
            against: Against::Ort1,
        }
    }
}

/// The onnxruntime co-process.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    version: String,
}

impl Peer {
    fn start(python: &Path) -> Result<Peer> {
        ensure!(
            python.exists(),
            "{} is missing: `cargo xtask bench-peer` makes bench/.venv (or pass --python, or --no-peer)",
            python.display()
        );
        let mut child = Command::new(python)
            .arg("bench/infer_peer.py")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} bench/infer_peer.py", python.display()))?;
        let stdin = child.stdin.take().context("peer stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("peer stdout")?);
        Ok(Peer { child, stdin, stdout, version: String::new() })
    }

    fn time(
        &mut self,
        file: &Path,
        entry: &ModelEntry,
        runs: usize,
        threads: usize,
    ) -> Result<(Vec<f64>, Vec<f32>)> {
        let request = serde_json::json!({
            "model": file, "input": entry.input.name, "shape": entry.input.shape,
            "outputs": entry.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            "runs": runs, "threads": threads,
        });
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        ensure!(!line.is_empty(), "bench/infer_peer.py stopped (its stderr says why)");
        let answer: serde_json::Value = serde_json::from_str(&line).context("the peer's answer")?;
        self.version = answer["onnxruntime"].as_str().unwrap_or("?").to_string();
        let numbers = |key: &str| -> Result<Vec<f64>> {
            answer[key]
                .as_array()
                .with_context(|| format!("no `{key}` in the peer's answer"))?
                .iter()
                .map(|v| v.as_f64().context("a number"))
                .collect()
        };
        Ok((numbers("ms")?, numbers("outputs")?.into_iter().map(|v| v as f32).collect()))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[sorted.len() / 2]
}

fn flatten(outputs: &[TValue]) -> Result<Vec<f32>> {
    let mut values = vec![];
    for output in outputs {
        values.extend_from_slice(output.try_as_plain_ram()?.as_slice::<f32>()?);
    }
    Ok(values)
}

fn largest_difference(a: &[f32], b: &[f32]) -> Result<f32> {
    ensure!(a.len() == b.len(), "{} output values against {}", a.len(), b.len());
    Ok(a.iter().zip(b).fold(0f32, |most, (x, y)| most.max((x - y).abs())))
}

fn test_input(entry: &ModelEntry) -> Result<Tensor> {
    let mut input = Tensor::zero::<f32>(&entry.input.shape)?;
    fill_test_pattern(input.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
    Ok(input)
}

/// The ONNX file through tract's stages to a runnable plan, timed: (state, parse+pin+declutter ms, total ms).
fn onnx_plan(bytes: &[u8], entry: &ModelEntry, pin: bool) -> Result<(TypedSimpleState, TypedModel, f64)> {
    let start = Instant::now();
    let mut model = parse_onnx(bytes, entry)?;
    if pin {
        model.set_input_fact(0, f32::fact(entry.input.shape).into())?;
    }
    let outputs: Vec<&str> = entry.outputs.iter().map(|o| o.name.as_str()).collect();
    model.select_outputs_by_name(&outputs)?;
    let decluttered = model.into_typed()?.into_decluttered()?;
    let optimised = decluttered.clone().into_optimized()?;
    // Pinned, as the runtime loads it: its convolution layout chosen as `Model::load` chooses it.
    let plan =
        if pin { layout::choose(&decluttered, optimised, entry)?.0 } else { optimised }.into_runnable()?;
    Ok((TypedSimpleState::new(&plan)?, decluttered, ms(start)))
}

/// The decluttered model optimised as the file lays it out (channel-first), whatever the runtime would choose.
fn nchw_plan(decluttered: TypedModel) -> Result<TypedSimpleState> {
    TypedSimpleState::new(&decluttered.into_optimized()?.into_runnable()?)
}

/// The decluttered model with every convolution channel-last, as the runtime's layout module builds it.
fn nhwc_plan(decluttered: TypedModel) -> Result<TypedSimpleState> {
    TypedSimpleState::new(&layout::channel_last(&decluttered)?.into_runnable()?)
}

/// The same with every convolution tract's own (neither `infer::depthwise`'s op nor `infer::products`').
fn nhwc_tract_plan(decluttered: TypedModel) -> Result<TypedSimpleState> {
    TypedSimpleState::new(&layout::channel_last_with(&decluttered, layout::OwnOps::NONE)?.into_runnable()?)
}

/// The same with `infer::depthwise`'s op and every other convolution tract's (no `infer::products` op).
fn nhwc_tract_products_plan(decluttered: TypedModel) -> Result<TypedSimpleState> {
    let own = layout::OwnOps { products: false, ..layout::OwnOps::RUNTIME };
    TypedSimpleState::new(&layout::channel_last_with(&decluttered, own)?.into_runnable()?)
}

fn nnef_plan(nnef: &tract_nnef::framework::Nnef, bytes: &[u8]) -> Result<(TypedSimpleState, f64)> {
    let start = Instant::now();
    let model = nnef.model_for_read(&mut &bytes[..])?;
    let plan = model.into_optimized()?.into_runnable()?;
    Ok((TypedSimpleState::new(&plan)?, ms(start)))
}

fn variants_for(manifest: &Manifest, entry: &ModelEntry, options: &Options) -> Result<Vec<Variant>> {
    let bytes = read_verified(&manifest.path_of(entry), entry)?;
    let mut onnx_loads = vec![];
    let mut nnef_loads = vec![];
    let nnef = tract_nnef::nnef();
    let (_, decluttered, _) = onnx_plan(&bytes, entry, true)?;
    let nnef_bytes = nnef.write_to_tar(&decluttered, vec![]).context("writing the model as NNEF")?;
    for _ in 0..5 {
        onnx_loads.push(onnx_plan(&bytes, entry, true)?.2);
        nnef_loads.push(nnef_plan(&nnef, &nnef_bytes)?.1);
    }
    let input = test_input(entry)?;
    let load = Instant::now();
    let runtime = Model::load(manifest, entry)?;
    let runtime_ms = ms(load);
    let mut variants = vec![Variant::new("runtime", Plan::Runtime(Box::new(runtime)), Some(runtime_ms))];
    let (state, _, unpinned_ms) = onnx_plan(&bytes, entry, false)?;
    variants.push(Variant::new(
        "unpinned",
        Plan::Typed { state: Box::new(state), input: input.clone() },
        Some(unpinned_ms),
    ));
    for (name, eager) in [("mt2", false), ("mt2-eager", true)] {
        let mut variant = Variant::new(name, Plan::Runtime(Box::new(Model::load(manifest, entry)?)), None);
        variant.executor = Some((Executor::multithread(2), eager));
        variants.push(variant);
    }
    for (name, make) in [
        ("nchw", nchw_plan as fn(TypedModel) -> Result<TypedSimpleState>),
        ("nhwc", nhwc_plan),
        ("nhwc-tract", nhwc_tract_plan),
        ("nhwc-tract-products", nhwc_tract_products_plan),
    ] {
        let start = Instant::now();
        let state = make(decluttered.clone())?;
        variants.push(Variant::new(
            name,
            Plan::Typed { state: Box::new(state), input: input.clone() },
            Some(ms(start)),
        ));
    }
    let (state, _) = nnef_plan(&nnef, &nnef_bytes)?;
    variants.push(Variant::new(
        format!("nnef ({} kB)", nnef_bytes.len() / 1000),
        Plan::Typed { state: Box::new(state), input: input.clone() },
        Some(median(&nnef_loads)),
    ));
    println!(
        "{}: start, ONNX bytes -> runnable plan {:.1} ms, NNEF bytes -> runnable plan {:.1} ms (medians of 5)",
        entry.id,
        median(&onnx_loads),
        median(&nnef_loads)
    );
    let int8 = options.int8.iter().filter(|_| entry.classifier.is_some()).map(|path| ("int8", path));
    let forms = options.forms.iter().filter(|(id, _)| *id == entry.id).map(|(_, path)| ("form", path));
    for (label, path) in int8.chain(forms) {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (state, _, load_ms) =
            onnx_plan(&bytes, entry, true).with_context(|| format!("tract loading {}", path.display()))?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut variant = Variant::new(
            format!("{label}:{name}"),
            Plan::Typed { state: Box::new(state), input: input.clone() },
            Some(load_ms),
        );
        if label == "form" {
            variant.compared_with = None;
        }
        variants.push(variant);
        if options.peer && label == "form" {
            let form = variants.len() - 1;
            let model = Some(std::fs::canonicalize(path)?);
            let mut peer =
                Variant::new(format!("{label}:{name} ort1"), Plan::Peer { threads: 1, model }, None);
            peer.compared_with = Some(form);
            peer.against = Against::Nothing;
            variants[form].against = Against::Variant(form + 1);
            variants.push(peer);
        }
    }
    if options.peer {
        variants.push(Variant::new("ort1", Plan::Peer { threads: 1, model: None }, None));
        variants.push(Variant::new("ort2", Plan::Peer { threads: 2, model: None }, None));
    }
    Ok(variants)
}

fn set_thresholds(eager: bool) {
    multithread::set_threading_panel_threshold(if eager { 0 } else { 64 });
    multithread::set_threading_element_threshold(if eager { 0 } else { 32768 });
    multithread::set_threading_mac_threshold(if eager { 0 } else { 1 << 21 });
}

/// One batch of `runs` timed runs of `variant` (after one untimed run whose outputs are returned).
fn batch(
    variant: &mut Variant,
    runs: usize,
    path: &Path,
    entry: &ModelEntry,
    peer: Option<&mut Peer>,
) -> Result<Vec<f32>> {
    let executor = variant.executor.clone();
    if let Some((_, eager)) = &executor {
        set_thresholds(*eager);
    }
    let mut times = Vec::with_capacity(runs);
    let outputs = match &mut variant.plan {
        Plan::Peer { threads, model } => {
            let peer = peer.context("no peer")?;
            let (found, outputs) = peer.time(model.as_deref().unwrap_or(path), entry, runs, *threads)?;
            times = found;
            outputs
        }
        Plan::Runtime(model) => {
            model.write_input(|_, values| {
                fill_test_pattern(values);
                Ok(())
            })?;
            let mut run = || -> Result<Vec<f32>> {
                let outputs = flatten(&model.run()?)?;
                for _ in 0..runs {
                    let start = Instant::now();
                    model.run()?;
                    times.push(ms(start));
                }
                Ok(outputs)
            };
            match executor {
                Some((pool, _)) => multithread::multithread_tract_scope(pool, run)?,
                None => run()?,
            }
        }
        Plan::Typed { state, input } => {
            let outputs = flatten(&state.run(tvec!(input.clone().into_tvalue()))?)?;
            for _ in 0..runs {
                let start = Instant::now();
                state.run(tvec!(input.clone().into_tvalue()))?;
                times.push(ms(start));
            }
            outputs
        }
    };
    set_thresholds(false);
    variant.round_medians.push(median(&times));
    variant.times.extend(times);
    Ok(outputs)
}

fn main() -> Result<()> {
    let options = options()?;
    let manifest = Manifest::load(Path::new("models/manifest.toml"))?;
    if options.profile {
        ensure!(options.runs >= 50, "--profile takes medians over at least 50 runs (--runs)");
        for entry in &manifest.models {
            profile::profile(&manifest, entry, &options)?;
        }
        return Ok(());
    }
    let mut peer = if options.peer { Some(Peer::start(&options.python)?) } else { None };
    let mut tables = vec![];
    for entry in &manifest.models {
        let path = std::fs::canonicalize(manifest.path_of(entry))?;
        let mut variants = variants_for(&manifest, entry, &options)?;
        for _ in 0..options.rounds {
            let mut outputs = Vec::with_capacity(variants.len());
            for variant in variants.iter_mut() {
                outputs.push(
                    batch(variant, options.runs, &path, entry, peer.as_mut())
                        .with_context(|| format!("{}: variant {}", entry.id, variant.name))?,
                );
            }
            for (index, variant) in variants.iter_mut().enumerate() {
                if let Some(reference) = variant.compared_with.filter(|&reference| reference != index) {
                    let difference = largest_difference(&outputs[reference], &outputs[index])?;
                    variant.difference = variant.difference.max(difference);
                }
            }
        }
        tables.push((entry.id.clone(), variants));
    }
    let version = peer.as_ref().map(|p| p.version.clone()).unwrap_or_default();
    println!(
        "\n{} rounds x {} runs per variant, alternating; tract 0.23.9, onnxruntime {version}\n",
        options.rounds, options.runs
    );
    for (id, variants) in &tables {
        let ort1 = variants.iter().find(|v| v.name == "ort1").map(|v| median(&v.times));
        println!("| {id} | median ms | rounds' medians | vs ort1 | start ms | max abs diff vs runtime |");
        println!("|---|---|---|---|---|---|");
        for variant in variants {
            let against = match variant.against {
                Against::Ort1 => ort1,
                Against::Variant(other) => Some(median(&variants[other].times)),
                Against::Nothing => None,
            };
            let spread =
                |f: fn(f64, f64) -> f64| variant.round_medians.iter().copied().reduce(f).unwrap_or(f64::NAN);
            let here = median(&variant.times);
            let difference = match variant.compared_with {
                Some(_) => format!("{:.1e}", variant.difference),
                None => "—".to_string(),
            };
            println!(
                "| {} | {:.2} | {:.2}–{:.2} | {} | {} | {} |",
                variant.name,
                here,
                spread(f64::min),
                spread(f64::max),
                against.map(|o| format!("{:.2}×", here / o)).unwrap_or_default(),
                variant.load_ms.map(|l| format!("{l:.1}")).unwrap_or_default(),
                difference
            );
        }
        println!();
    }
    Ok(())
}

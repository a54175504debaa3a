//! `infer_variants --profile`: where the runtime's plan spends its time, node by node, beside onnxruntime's
//! profiler (`bench/profile_peer.py`). See the header of examples/infer_variants.rs.

use super::{median, ms, onnx_plan, test_input, Options};
use anyhow::{ensure, Context, Result};
use deepgate::infer::read_verified;
use deepgate::manifest::{Manifest, ModelEntry};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, OpState};
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::plan::eval;

/// The operator kind of a decluttered node, in the names `bench/profile_peer.py` gives onnxruntime's
/// kernels: convolutions by kernel and grouping, the rest by what they do.
fn kind_of(model: &TypedModel, node: &TypedNode) -> Result<String> {
    if let Some(conv) = node.op_as::<Conv>() {
        let kernel = &conv.pool_spec.kernel_shape;
        let size = kernel.iter().map(|k| k.to_string()).collect::<Vec<_>>().join("x");
        let channels = conv.pool_spec.input_channels;
        return Ok(if conv.group > 1 && conv.group == channels {
            format!("depthwise {size}")
        } else if kernel.iter().all(|&k| k == 1) {
            "conv 1x1".to_string()
        } else {
            format!("conv {size}")
        });
    }
    // tract declutters a 1x1 convolution into an einsum over the image (rank 3 or more); the rest are
    // matrix products (the student's Gemm and cosine head).
    if node.op().name() == "EinSum" {
        let rank = match node.inputs.first() {
            Some(outlet) => model.outlet_fact(*outlet)?.rank(),
            None => 0,
        };
        return Ok(if rank >= 3 { "conv 1x1" } else { "matmul" }.to_string());
    }
    Ok(op_kind(&node.op().name()))
}

/// Whether a kind is a convolution's or a matrix product's (where a fused matrix product belongs).
fn is_product(kind: &str) -> bool {
    kind.starts_with("conv") || kind.starts_with("depthwise") || kind == "matmul"
}

/// The kind of an op by its name (the decluttered op's, or the optimised one's where no decluttered node
/// has its name).
fn op_kind(name: &str) -> String {
    match name {
        "Add" => "add",
        "Max" | "Min" | "OptMaxByScalar" | "OptMinByScalar" | "Relu" | "Sigmoid" | "HardSwish"
        | "LeakyRelu" | "PRelu" => "activation",
        "MaxPool" | "SumPool" | "LirMaxPool" | "LirSumPool" => "pool",
        "Reshape" | "AddAxis" | "RmAxis" | "Concat" | "TypedConcat" | "Slice" | "Gather" | "Identity" => {
            "shape/copy"
        }
        "MoveAxis" | "Transpose" => "layout",
        "Resize" => "resize",
        "Reduce<Sum>" | "Reduce<Max>" | "Reduce<Min>" | "Reduce<Prod>" | "Reduce<MeanOfSquares>" => "reduce",
        "Mul" | "Div" | "Sub" | "Square" | "Sqrt" | "Rsqrt" | "Recip" | "OptMulByScalar" => "elementwise",
        other => return other.to_lowercase(),
    }
    .to_string()
}

/// The decluttered node an optimised node comes from: the one named as it is, or as its name less trailing
/// `.suffix`es (tract names the nodes an op lowers into `NAME.im2col`, `NAME.matmatmul`, ...).
fn source<'a>(names: &'a HashMap<String, String>, name: &str) -> Option<&'a String> {
    let mut name = name;
    loop {
        if let Some(kind) = names.get(name) {
            return Some(kind);
        }
        name = name.rsplit_once('.')?.0;
    }
}

/// One node of the optimised plan, with its time in every profiled run.
struct NodeTimes {
    name: String,
    op: String,
    kind: String,
    shapes: String,
    times: Vec<f64>,
}

/// tract's side: every node's times, and the plan's plain run time measured between the profiled runs.
struct Measured {
    nodes: Vec<NodeTimes>,
    runs: usize,
    plain_ms: f64,
    /// Median over the runs of the nodes' summed times.
    profiled_ms: f64,
}

impl Measured {
    /// Nodes grouped by `key`: per group, the median over the runs of its nodes' summed time, and its size.
    fn grouped(&self, key: fn(&NodeTimes) -> &str) -> BTreeMap<String, (f64, usize)> {
        let mut groups: BTreeMap<String, Vec<&NodeTimes>> = BTreeMap::new();
        for node in &self.nodes {
            groups.entry(key(node).to_string()).or_default().push(node);
        }
        groups
            .into_iter()
            .map(|(name, members)| {
                let per_run: Vec<f64> =
                    (0..self.runs).map(|run| members.iter().map(|n| n.times[run]).sum()).collect();
                (name, (median(&per_run), members.len()))
            })
            .collect()
    }
}

/// onnxruntime's side, as `bench/profile_peer.py --json` gives it.
#[derive(serde::Deserialize)]
struct PeerProfile {
    onnxruntime: String,
    plain_ms: f64,
    wall_ms: f64,
    kernel_ms: f64,
    kinds: HashMap<String, f64>,
    nodes: Vec<PeerNode>,
}

#[derive(serde::Deserialize)]
struct PeerNode {
    name: String,
    op: String,
    kind: String,
    input: Vec<i64>,
    output: Vec<i64>,
    ms: f64,
}

fn shape(fact: &TypedFact) -> String {
    format!("{:?}", fact.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>()).replace('"', "")
}

/// The plan's nodes in execution order, each with its kind, and each node id's index among them.
fn plan_nodes(state: &TypedSimpleState, decluttered: &TypedModel) -> Result<(Vec<NodeTimes>, Vec<usize>)> {
    let kinds: HashMap<String, String> = decluttered
        .nodes
        .iter()
        .map(|n| Ok((n.name.clone(), kind_of(decluttered, n)?)))
        .collect::<Result<_>>()?;
    let plan = state.model();
    let mut nodes: Vec<NodeTimes> = vec![];
    let mut slot = vec![usize::MAX; plan.nodes.len()];
    for &id in state.plan().order_without_consts() {
        let node = plan.node(id);
        let input = match node.inputs.first() {
            Some(outlet) => shape(plan.outlet_fact(*outlet)?),
            None => String::new(),
        };
        let output = node.outputs.first().map(|o| shape(&o.fact)).unwrap_or_default();
        let op = node.op().name().to_string();
        let mut kind = source(&kinds, &node.name).cloned().unwrap_or_else(|| op_kind(&op));
        // tract names a matrix product with fused bias, activation or residual add after the last op it
        // absorbed (`NAME/Relu.prefused`): such a product takes its kind from the packing before it.
        if op.starts_with("OptMatMul") && !is_product(&kind) {
            let producers = node.inputs.iter().filter_map(|i| nodes.get(slot[i.node]));
            if let Some(producer) = producers.map(|p| &p.kind).find(|k| is_product(k)) {
                kind = producer.clone();
            }
        }
        slot[id] = nodes.len();
        nodes.push(NodeTimes {
            name: node.name.clone(),
            op,
            kind,
            shapes: format!("{input} -> {output}"),
            times: vec![],
        });
    }
    Ok((nodes, slot))
}

/// The runtime's plan (the calls of `Model::load_on`: parse, pin, select outputs, declutter, optimise), run
/// `runs` times with every node's `eval` timed, each profiled run after a plain one.
fn measure(bytes: &[u8], entry: &ModelEntry, runs: usize) -> Result<Measured> {
    let (mut state, decluttered, _) = onnx_plan(bytes, entry, true)?;
    let (mut nodes, slot) = plan_nodes(&state, &decluttered)?;
    let input = test_input(entry)?;
    for _ in 0..2 {
        state.run(tvec!(input.clone().into_tvalue()))?;
    }
    let mut plain = Vec::with_capacity(runs);
    let mut sums = Vec::with_capacity(runs);
    let mut this_run = vec![0f64; nodes.len()];
    for _ in 0..runs {
        let start = Instant::now();
        state.run(tvec!(input.clone().into_tvalue()))?;
        plain.push(ms(start));
        this_run.fill(0.0);
        state.run_plan_with_eval(
            tvec!(input.clone().into_tvalue()),
            |context: &EvalContext,
             op_state: Option<&mut (dyn OpState + 'static)>,
             node: &TypedNode,
             inputs: TVec<TValue>| {
                let start = Instant::now();
                let outputs = eval(context, op_state, node, inputs);
                this_run[slot[node.id]] += ms(start);
                outputs
            },
        )?;
        for (node, time) in nodes.iter_mut().zip(&this_run) {
            node.times.push(*time);
        }
        sums.push(this_run.iter().sum::<f64>());
    }
    Ok(Measured { nodes, runs, plain_ms: median(&plain), profiled_ms: median(&sums) })
}

/// onnxruntime's profile of the same file (`bench/profile_peer.py --json`).
fn peer(options: &Options, path: &Path, entry: &ModelEntry) -> Result<PeerProfile> {
    let shape = entry.input.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
    let output = Command::new(&options.python)
        .arg("bench/profile_peer.py")
        .arg(path)
        .arg(&entry.input.name)
        .arg(shape)
        .args(["--runs", &options.runs.to_string(), "--json"])
        .output()
        .with_context(|| format!("starting {} bench/profile_peer.py", options.python.display()))?;
    ensure!(
        output.status.success(),
        "bench/profile_peer.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("bench/profile_peer.py's answer")
}

/// Per kind, side by side: each side's share of its profiled time, scaled to its plain run time (the
/// profilers slow what they time, onnxruntime's by 20–60 %, so shares compare and profiled times do not).
fn print_kinds(tract: &Measured, peer: Option<&PeerProfile>) {
    let tract_kinds = tract.grouped(|n| &n.kind);
    let none = HashMap::new();
    let peer_kinds = peer.map(|p| &p.kinds).unwrap_or(&none);
    let mut rows: Vec<(&str, f64, usize, f64)> = tract_kinds
        .iter()
        .map(|(kind, (time, count))| {
            (kind.as_str(), *time, *count, peer_kinds.get(kind).copied().unwrap_or(0.0))
        })
        .collect();
    for (kind, time) in peer_kinds {
        if !tract_kinds.contains_key(kind) {
            rows.push((kind, 0.0, 0, *time));
        }
    }
    rows.retain(|row| row.0 != "source");
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.3.total_cmp(&a.3)));
    println!(
        "\nms: the kind's share of its side's profiled time x that side's plain run time; tract nodes: the \
         plan's nodes of that kind (packing and reshapes count as the op they serve)\n\n\
         | kind | tract nodes | tract ms | tract share | onnxruntime ms | onnxruntime share | tract / ort |\n\
         |---|---|---|---|---|---|---|"
    );
    for (kind, time, count, peer_time) in rows {
        let tract_share = time / tract.profiled_ms;
        let tract_ms = tract_share * tract.plain_ms;
        let peer_columns = match peer {
            Some(p) => {
                let (share, time) = (peer_time / p.kernel_ms, peer_time / p.kernel_ms * p.plain_ms);
                let ratio = if time > 0.0 && tract_ms > 0.0 {
                    format!("{:.1}×", tract_ms / time)
                } else {
                    String::new()
                };
                format!("{time:.3} | {:.1}% | {ratio}", 100.0 * share)
            }
            None => "– | – | –".to_string(),
        };
        println!("| {kind} | {count} | {tract_ms:.3} | {:.1}% | {peer_columns} |", 100.0 * tract_share);
    }
}

fn print_ops(tract: &Measured) {
    println!("\n| tract op | nodes | ms | share |\n|---|---|---|---|");
    let mut ops: Vec<_> = tract.grouped(|n| &n.op).into_iter().collect();
    ops.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    for (op, (time, count)) in ops {
        let share = time / tract.profiled_ms;
        println!("| {op} | {count} | {:.3} | {:.1}% |", share * tract.plain_ms, 100.0 * share);
    }
}

fn print_top(tract: &Measured, peer: Option<&PeerProfile>) {
    let header = "| node | op | kind | input -> output | ms |\n|---|---|---|---|---|";
    let mut top: Vec<(f64, &NodeTimes)> = tract.nodes.iter().map(|n| (median(&n.times), n)).collect();
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("\ntract's 15 slowest nodes (profiled ms)\n\n{header}");
    for (time, node) in top.iter().take(15) {
        println!("| {} | {} | {} | {} | {time:.3} |", node.name, node.op, node.kind, node.shapes);
    }
    if let Some(peer) = peer {
        let mut nodes: Vec<&PeerNode> = peer.nodes.iter().collect();
        nodes.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        println!("\nonnxruntime's 15 slowest nodes (profiled ms)\n\n{header}");
        for node in nodes.iter().take(15) {
            println!(
                "| {} | {} | {} | {:?} -> {:?} | {:.3} |",
                node.name, node.op, node.kind, node.input, node.output, node.ms
            );
        }
    }
}

/// Profiles one manifest model on both sides and prints the tables; then each `--form` of it the same way.
pub fn profile(manifest: &Manifest, entry: &ModelEntry, options: &Options) -> Result<()> {
    let path = std::fs::canonicalize(manifest.path_of(entry))?;
    let bytes = read_verified(&path, entry)?;
    profile_file(&path, &bytes, &entry.id, entry, options)?;
    for (_, form) in options.forms.iter().filter(|(id, _)| *id == entry.id) {
        let path = std::fs::canonicalize(form).with_context(|| format!("--form {}", form.display()))?;
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        profile_file(&path, &bytes, &format!("{} as {}", entry.id, form.display()), entry, options)?;
    }
    Ok(())
}

fn profile_file(path: &Path, bytes: &[u8], title: &str, entry: &ModelEntry, options: &Options) -> Result<()> {
    let tract = measure(bytes, entry, options.runs).with_context(|| format!("tract profiling {title}"))?;
    let peer = if options.peer { Some(peer(options, path, entry)?) } else { None };
    println!(
        "\n## {title}: {} runs, one thread\n\ntract 0.23.9, the runtime's plan: run {:.3} ms (plain), nodes \
         {:.3} ms (median of the per-run sums, timed node by node)",
        options.runs, tract.plain_ms, tract.profiled_ms
    );
    if let Some(p) = &peer {
        println!(
            "onnxruntime {}: run {:.3} ms (profiler off), {:.3} ms (profiler on), kernels {:.3} ms",
            p.onnxruntime, p.plain_ms, p.wall_ms, p.kernel_ms
        );
    }
    print_kinds(&tract, peer.as_ref());
    print_ops(&tract);
    print_top(&tract, peer.as_ref());
    Ok(())
}

//! `deepgate eval`: scores a labelled set through the whole runtime (the same code path as `replay`) and
//! prints ISO/IEC 30107-3 metrics.

use anyhow::{bail, ensure, Context, Result};
use deepgate::eval::metrics::{report, roc, Sample};
use deepgate::eval::plot::write_roc_png;
use deepgate::session::{play_input, Event, Played};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// One labelled input from the CSV.
struct Labelled {
    path: PathBuf,
    attack: bool,
}

fn read_labels(csv_path: &Path) -> Result<Vec<Labelled>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(csv_path)
        .with_context(|| format!("reading labels {}", csv_path.display()))?;
    let headers =
        reader.headers().with_context(|| format!("reading the header of {}", csv_path.display()))?;
    let column = |name: &str| {
        headers.iter().position(|header| header == name).with_context(|| {
            format!("{} has no `{name}` column (needs at least file,label)", csv_path.display())
        })
    };
    let (file_column, label_column) = (column("file")?, column("label")?);
    let base = csv_path.parent().unwrap_or(Path::new("."));
    let mut rows = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let row = line + 2;
        let record = record.with_context(|| format!("{} line {row}", csv_path.display()))?;
        let (Some(file), Some(label)) = (record.get(file_column), record.get(label_column)) else {
            bail!("{} line {row}: missing file or label", csv_path.display());
        };
        let attack = match label {
            "0" => false,
            "1" => true,
            other => {
                bail!("{} line {row}: label `{other}` must be 0 (genuine) or 1 (fake)", csv_path.display())
            }
        };
        rows.push(Labelled { path: base.join(file), attack });
    }
    ensure!(!rows.is_empty(), "{} lists no inputs", csv_path.display());
    Ok(rows)
}

pub fn eval(board: &Path, labels: &Path, json: bool, plot: Option<&Path>) -> Result<ExitCode> {
    let rows = read_labels(labels)?;
    let (config, mut pipeline) = super::start(board)?;
    let Some(classifier) = &pipeline.models().classifier else {
        bail!("no classifier configured in {}: eval needs models.classifier", board.display());
    };
    let model = classifier.entry().id.clone();
    let mut samples = Vec::new();
    let (mut not_acquired, mut failed) = (0usize, 0usize);
    for row in &rows {
        let mut score = None;
        let played = play_input(&mut pipeline, &row.path, &mut |_| true, &mut |event| {
            if let Event::Verdict { verdict, .. } = event {
                score = verdict.fake_probability.map(f64::from).or(score);
            }
        });
        let ok = played == Played::Finished { ok: true };
        match score {
            Some(score) => samples.push(Sample { score, attack: row.attack }),
            None if ok => not_acquired += 1,
            None => failed += 1,
        }
    }
    let threshold = config.decision.frame_threshold as f64;
    let summary = report(&samples, threshold).context("computing metrics")?;
    if let Some(plot) = plot {
        write_roc_png(&roc(&samples)?, summary.auc, summary.eer, plot)?;
    }
    if json {
        let value = serde_json::json!({
            "model": model,
            "labels": labels.display().to_string(),
            "inputs": rows.len(),
            "failure_to_acquire": not_acquired,
            "unreadable": failed,
            "metrics": summary,
        });
        println!("{value}");
    } else {
        println!("model {model}, {} inputs from {}", rows.len(), labels.display());
        println!("{}", summary.to_text());
        println!("failure to acquire (no face, excluded above): {not_acquired}; unreadable inputs: {failed}");
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

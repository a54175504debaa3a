//! The model manifest (`models/manifest.toml`): every fact about every model, parsed strictly and validated.

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    model: Vec<ModelEntry>,
}

/// One model as the manifest describes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: String,
    pub role: Role,
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub licence: String,
    pub licence_file: Option<String>,
    pub provenance: String,
    pub input: InputSpec,
    pub outputs: Vec<OutputSpec>,
    pub blazeface: Option<BlazeFaceSpec>,
    pub classifier: Option<ClassifierSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Detector,
    Classifier,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Layout {
    #[serde(rename = "NHWC")]
    Nhwc,
    #[serde(rename = "NCHW")]
    Nchw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ChannelOrder {
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
}

/// The model's single image input and how pixels become its values.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub shape: [usize; 4],
    pub layout: Layout,
    pub colour: ChannelOrder,
    /// value = (pixel / 255 - mean) / std, per channel in `colour` order.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl InputSpec {
    /// The input image's (width, height) in pixels.
    pub fn image_size(&self) -> (usize, usize) {
        match self.layout {
            Layout::Nhwc => (self.shape[2], self.shape[1]),
            Layout::Nchw => (self.shape[3], self.shape[2]),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub meaning: String,
}

/// BlazeFace decoding facts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlazeFaceSpec {
    /// Anchor grids as [cells per side, anchors per cell], in output order.
    pub grids: Vec<[usize; 2]>,
    pub keypoints: Vec<String>,
    pub logit_clamp: f32,
}

/// How a classifier's output becomes a fake probability.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    pub output: ClassifierOutput,
    /// For `softmax`: the index of the "fake" class.
    pub fake_index: Option<usize>,
    /// The fake-probability threshold the model card reports its operating point at.
    pub threshold: Option<f32>,
    /// The output holding the predicted manipulation map, if the model has one (`deepgate explain`): shape
    /// `[1, C, h, w]`, channel 0 the logits that the crop pixels under each cell were manipulated (cell (i, j)
    /// covers x in [j·W/w, (j+1)·W/w), y likewise, of the W×H crop); further channels as its `meaning` says.
    /// The classifier's logits stay the first output.
    pub map_output: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierOutput {
    Softmax,
    Sigmoid,
    Probability,
}

/// The manifest, with the directory its files are relative to.
#[derive(Debug)]
pub struct Manifest {
    pub directory: PathBuf,
    pub models: Vec<ModelEntry>,
}

impl Manifest {
    /// Reads and validates `path` (usually `models/manifest.toml`).
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading model manifest {}", path.display()))?;
        let parsed: ManifestFile =
            toml::from_str(&text).with_context(|| format!("parsing model manifest {}", path.display()))?;
        let directory = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let manifest = Manifest { directory, models: parsed.model };
        for model in &manifest.models {
            model.validate().with_context(|| format!("model `{}` in {}", model.id, path.display()))?;
        }
        for (index, model) in manifest.models.iter().enumerate() {
            if manifest.models[..index].iter().any(|other| other.id == model.id) {
                bail!("model id `{}` appears twice in {}", model.id, path.display());
            }
        }
        Ok(manifest)
    }

    /// The entry called `id`, checked to have the expected role.
    pub fn get(&self, id: &str, role: Role) -> Result<&ModelEntry> {
        let model = self.models.iter().find(|model| model.id == id).with_context(|| {
            let known: Vec<&str> = self.models.iter().map(|model| model.id.as_str()).collect();
            format!(
                "model `{id}` is not in the manifest in {} (known: {})",
                self.directory.display(),
                known.join(", ")
            )
        })?;
        ensure!(model.role == role, "model `{id}` is a {:?}, but is configured as the {role:?}", model.role);
        Ok(model)
    }

    /// The path of a model's file.
    pub fn path_of(&self, model: &ModelEntry) -> PathBuf {
        self.directory.join(&model.file)
    }
}

impl ModelEntry {
    fn validate(&self) -> Result<()> {
        ensure!(
            self.sha256.len() == 64 && self.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
            "sha256 must be 64 hexadecimal digits, got `{}`",
            self.sha256
        );
        ensure!(
            !self.file.contains("..") && !Path::new(&self.file).is_absolute(),
            "file `{}` must be a path inside the models directory",
            self.file
        );
        ensure!(self.input.shape[0] == 1, "input batch must be 1, got {:?}", self.input.shape);
        let channels = match self.input.layout {
            Layout::Nhwc => self.input.shape[3],
            Layout::Nchw => self.input.shape[1],
        };
        ensure!(channels == 3, "input must have 3 channels, got {:?}", self.input.shape);
        let (width, height) = self.input.image_size();
        ensure!(
            (16..=1024).contains(&width) && (16..=1024).contains(&height),
            "input image size {width}x{height} is outside 16..=1024"
        );
        ensure!(
            self.input.std.iter().all(|s| s.is_finite() && *s > 0.0)
                && self.input.mean.iter().all(|m| m.is_finite()),
            "normalisation mean must be finite and std positive"
        );
        ensure!(!self.outputs.is_empty(), "no outputs listed");
        match self.role {
            Role::Detector => {
                let spec = self.blazeface.as_ref().context("a detector needs [model.blazeface]")?;
                ensure!(width == height, "BlazeFace input must be square");
                ensure!(
                    self.outputs.len() == 2 * spec.grids.len(),
                    "BlazeFace lists score outputs then regressor outputs, one each per grid"
                );
                ensure!(spec.keypoints.len() >= 4, "BlazeFace needs at least 4 keypoints");
            }
            Role::Classifier => {
                let spec = self.classifier.as_ref().context("a classifier needs [model.classifier]")?;
                if spec.output == ClassifierOutput::Softmax {
                    ensure!(spec.fake_index.is_some(), "softmax output needs fake_index");
                }
                match &spec.map_output {
                    None => ensure!(
                        self.outputs.len() == 1,
                        "a classifier has exactly one output (a second one only as its `map_output`)"
                    ),
                    Some(name) => self.validate_map_output(name, (width, height))?,
                }
            }
        }
        Ok(())
    }

    /// The output a classifier's `map_output` names (validated at load: its second output, `[1, C, h, w]`),
    /// or None when it declares none.
    pub fn map_output(&self) -> Option<&OutputSpec> {
        let name = self.classifier.as_ref()?.map_output.as_ref()?;
        self.outputs.iter().find(|output| output.name == *name)
    }

    /// A classifier's `map_output`: the second of exactly two outputs (the first stays the logits), of shape
    /// `[1, C, h, w]` with C ≥ 1 and each cell at least one pixel of the `crop` (width, height).
    fn validate_map_output(&self, name: &str, (width, height): (usize, usize)) -> Result<()> {
        let declared: Vec<&str> = self.outputs.iter().map(|output| output.name.as_str()).collect();
        let Some(index) = declared.iter().position(|output| *output == name) else {
            bail!("classifier.map_output `{name}` is not one of the declared outputs {declared:?}");
        };
        ensure!(
            index == 1 && self.outputs.len() == 2,
            "classifier.map_output `{name}` must be the second of exactly two outputs (the first is the \
             classifier's logits); outputs are {declared:?}"
        );
        let shape = &self.outputs[index].shape;
        ensure!(
            matches!(shape.as_slice(), [1, channels, rows, columns]
                if *channels >= 1 && (1..=height).contains(rows) && (1..=width).contains(columns)),
            "classifier.map_output `{name}` has shape {shape:?}; it must be [1, C, h, w] with C >= 1, \
             1 <= h <= {height} and 1 <= w <= {width} (the crop's size)"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads a manifest holding one classifier with the given extra outputs and `[model.classifier]` lines.
    fn load_classifier(outputs: &[(&str, &str)], classifier: &str) -> Result<Manifest> {
        let mut text = "[[model]]\nid = \"c\"\nrole = \"classifier\"\nfile = \"c.onnx\"\nsha256 = \"".to_string()
                + &"0".repeat(64)
                + "\"\nbytes = 1\nlicence = \"x\"\nprovenance = \"x\"\n[model.input]\nname = \"image\"\n\
                   shape = [1, 3, 112, 112]\nlayout = \"NCHW\"\ncolour = \"RGB\"\nmean = [0.5, 0.5, 0.5]\n\
                   std = [0.5, 0.5, 0.5]\n[[model.outputs]]\nname = \"logits\"\nshape = [1, 2]\nmeaning = \"x\"\n";
        for (name, shape) in outputs {
            text += &format!("[[model.outputs]]\nname = \"{name}\"\nshape = {shape}\nmeaning = \"x\"\n");
        }
        text += &format!("[model.classifier]\noutput = \"softmax\"\nfake_index = 1\n{classifier}\n");
        let path = crate::testing::scratch_dir("manifest").join("manifest.toml");
        std::fs::write(&path, text)?;
        let loaded = Manifest::load(&path);
        std::fs::remove_file(&path)?;
        loaded
    }

    #[test]
    fn a_map_output_must_name_a_second_four_dimensional_output_within_the_crop() {
        let manifest = load_classifier(&[("map", "[1, 2, 7, 7]")], "map_output = \"map\"").expect("valid");
        let spec = manifest.models[0].classifier.as_ref().expect("classifier spec");
        assert_eq!(spec.map_output.as_deref(), Some("map"));
        assert!(load_classifier(&[], "").is_ok(), "no map: one output, as before");

        for (outputs, classifier, expected) in [
            (&[("map", "[1, 2, 7, 7]")][..], "", "exactly one output"),
            (&[][..], "map_output = \"map\"", "not one of the declared outputs"),
            (&[("map", "[1, 2, 7, 7]")][..], "map_output = \"logits\"", "second of exactly two"),
            (&[("map", "[1, 2, 7, 7]"), ("more", "[1, 1]")][..], "map_output = \"map\"", "exactly two"),
            (&[("map", "[1, 49]")][..], "map_output = \"map\"", "[1, C, h, w]"),
            (&[("map", "[1, 0, 7, 7]")][..], "map_output = \"map\"", "C >= 1"),
            (&[("map", "[1, 1, 113, 7]")][..], "map_output = \"map\"", "h <= 112"),
            (&[("map", "[2, 1, 7, 7]")][..], "map_output = \"map\"", "[1, C, h, w]"),
        ] {
            let error = load_classifier(outputs, classifier).expect_err(expected);
            assert!(format!("{error:#}").contains(expected), "{outputs:?} {classifier}: {error:#}");
        }
        let error = load_classifier(&[], "map_outputs = \"map\"").expect_err("unknown key");
        assert!(format!("{error:#}").contains("map_outputs"), "strict parsing: {error:#}");
    }
}

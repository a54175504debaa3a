//! The genuine-vs-fake classifier: runs the manifest's model on an aligned crop and turns its output into a
//! fake probability, refusing any output that is not a finite, well-formed answer.

use crate::infer::Model;
use crate::manifest::{ClassifierOutput, ModelEntry};
use crate::preprocess::RgbImage;
use anyhow::{bail, Context, Result};

pub struct Classifier {
    model: Model,
    output: ClassifierOutput,
    fake_index: usize,
    classes: usize,
    /// The manipulation map's shape `[1, C, h, w]` as (C, h, w), when the manifest declares `map_output` (it
    /// is then the model's second output).
    map_shape: Option<(usize, usize, usize)>,
}

/// A classifier's predicted manipulation map for one crop (manifest `map_output`): `channels` planes of
/// `height` × `width` cells, channel 0 the logits that the crop pixels under a cell were manipulated.
#[derive(Clone, Debug, PartialEq)]
pub struct ManipulationMap {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Raw values, channel-major then row-major (NCHW without the batch), all finite.
    pub values: Vec<f32>,
}

impl ManipulationMap {
    /// The probability (sigmoid of channel 0) that the cell at `row`, `column` was manipulated.
    pub fn manipulation_probability(&self, row: usize, column: usize) -> f32 {
        let logit = self.values[row * self.width + column];
        1.0 / (1.0 + (-logit).exp())
    }
}

impl Classifier {
    pub fn new(model: Model) -> Result<Classifier> {
        let spec = model.entry.classifier.clone().context("classifier has no [model.classifier] section")?;
        let classes: usize = model.entry.outputs[0].shape.iter().product();
        let fake_index = spec.fake_index.unwrap_or(0);
        match spec.output {
            ClassifierOutput::Softmax if classes < 2 || fake_index >= classes => {
                bail!("softmax classifier with {classes} outputs cannot have its fake class at {fake_index}")
            }
            ClassifierOutput::Sigmoid | ClassifierOutput::Probability if classes != 1 => {
                bail!("{:?} classifier must have one output value, has {classes}", spec.output)
            }
            _ => {}
        }
        let map_shape = match model.entry.map_output().map(|output| (&output.name, output.shape.as_slice())) {
            None => None,
            Some((_, &[1, channels, height, width])) => Some((channels, height, width)),
            Some((name, shape)) => bail!("map_output `{name}` has shape {shape:?}, not [1, C, h, w]"),
        };
        Ok(Classifier { model, output: spec.output, fake_index, classes, map_shape })
    }

    /// Whether the model predicts a manipulation map beside its fake probability (manifest `map_output`).
    pub fn has_map(&self) -> bool {
        self.map_shape.is_some()
    }

    pub fn entry(&self) -> &ModelEntry {
        &self.model.entry
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    /// The crop size the classifier wants (width, height).
    pub fn crop_size(&self) -> (usize, usize) {
        self.model.entry.input.image_size()
    }

    /// The probability that the face in `crop` is fake.
    pub fn fake_probability(&mut self, crop: &RgbImage) -> Result<f32> {
        self.model.set_input_image(crop)?;
        self.judge()
    }

    /// The same for a crop already normalised into the model's input layout (the GPU path's crops).
    pub fn fake_probability_of_input(&mut self, input: &[f32]) -> Result<f32> {
        self.model.write_input(|_, values| {
            anyhow::ensure!(
                values.len() == input.len(),
                "crop tensor of {} values for an input of {}",
                input.len(),
                values.len()
            );
            values.copy_from_slice(input);
            Ok(())
        })?;
        self.judge()
    }

    /// The probability that the face in `crop` is fake and, when the model has one, its manipulation map for
    /// the crop, from the same run. A map with a wrong size or a NaN/infinite value is an error.
    pub fn fake_probability_and_map(&mut self, crop: &RgbImage) -> Result<(f32, Option<ManipulationMap>)> {
        self.model.set_input_image(crop)?;
        let outputs = self.model.run()?;
        let probability = self.read_probability(&outputs)?;
        let Some((channels, height, width)) = self.map_shape else { return Ok((probability, None)) };
        let values = outputs
            .get(1)
            .context("the classifier returned no manipulation map")?
            .try_as_plain_ram()?
            .as_slice::<f32>()
            .context("the manipulation map is not f32")?;
        let map = check_map(values, channels, height, width)
            .with_context(|| format!("classifier `{}`: manipulation map", self.model.entry.id))?;
        Ok((probability, Some(map)))
    }

    /// Runs the model on its current input and reads the fake probability.
    fn judge(&mut self) -> Result<f32> {
        let outputs = self.model.run()?;
        self.read_probability(&outputs)
    }

    /// The fake probability from the first output (the logits) of a run.
    fn read_probability(&self, outputs: &[tract_onnx::prelude::TValue]) -> Result<f32> {
        let values = outputs
            .first()
            .context("classifier returned no output")?
            .try_as_plain_ram()?
            .as_slice::<f32>()
            .context("classifier output is not f32")?;
        interpret(self.output, self.fake_index, self.classes, values)
            .with_context(|| format!("classifier `{}`", self.model.entry.id))
    }
}

/// Checks a raw manipulation map against its declared shape (C, h, w): the right number of values, all finite.
pub fn check_map(values: &[f32], channels: usize, height: usize, width: usize) -> Result<ManipulationMap> {
    let expected = channels * height * width;
    if values.len() != expected {
        bail!("{} values, expected {expected} ({channels} x {height} x {width})", values.len());
    }
    if let Some(index) = values.iter().position(|value| !value.is_finite()) {
        bail!("value {index} is {}: the model is broken or its input was", values[index]);
    }
    Ok(ManipulationMap { channels, height, width, values: values.to_vec() })
}

/// Turns raw classifier output into a fake probability. Wrong size, NaN or infinity is an error, never a pass.
pub fn interpret(output: ClassifierOutput, fake_index: usize, classes: usize, values: &[f32]) -> Result<f32> {
    if values.len() != classes {
        bail!("output has {} values, expected {classes}", values.len());
    }
    if output == ClassifierOutput::Softmax && fake_index >= classes {
        bail!("fake class {fake_index} does not exist in {classes} outputs");
    }
    if let Some(bad) = values.iter().find(|value| !value.is_finite()) {
        bail!("output contains {bad}: the model is broken or its input was");
    }
    let probability = match output {
        ClassifierOutput::Softmax => {
            let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total: f32 = values.iter().map(|value| (value - max).exp()).sum();
            (values[fake_index] - max).exp() / total
        }
        ClassifierOutput::Sigmoid => 1.0 / (1.0 + (-values[0]).exp()),
        ClassifierOutput::Probability => {
            if !(0.0..=1.0).contains(&values[0]) {
                bail!("output {} is not a probability", values[0]);
            }
            values[0]
        }
    };
    Ok(probability.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f32, expected: f32) -> bool {
        (actual - expected).abs() < 1e-6
    }

    #[test]
    fn softmax_gives_the_fake_class_share() {
        let values = [0.0, 3.0f32.ln()];
        let fake = interpret(ClassifierOutput::Softmax, 1, 2, &values).expect("valid output");
        assert!(close(fake, 0.75), "{fake}");
        let genuine = interpret(ClassifierOutput::Softmax, 0, 2, &values).expect("valid output");
        assert!(close(genuine, 0.25), "{genuine}");
        // Large logits must not overflow: softmax depends only on their differences.
        let shifted =
            interpret(ClassifierOutput::Softmax, 1, 2, &[500.0, 500.0 + 3.0f32.ln()]).expect("valid");
        assert!((shifted - 0.75).abs() < 1e-4, "{shifted}");
        let three =
            interpret(ClassifierOutput::Softmax, 2, 3, &[0.0, 0.0, 2.0f32.ln()]).expect("valid output");
        assert!(close(three, 0.5), "{three}");
    }

    #[test]
    fn sigmoid_maps_logits_to_probabilities() {
        assert!(close(interpret(ClassifierOutput::Sigmoid, 0, 1, &[0.0]).expect("valid"), 0.5));
        assert!(close(interpret(ClassifierOutput::Sigmoid, 0, 1, &[3.0f32.ln()]).expect("valid"), 0.75));
        let certain = interpret(ClassifierOutput::Sigmoid, 0, 1, &[-200.0]).expect("valid");
        assert!((0.0..1e-6).contains(&certain), "{certain}");
        let fake = interpret(ClassifierOutput::Sigmoid, 0, 1, &[200.0]).expect("valid");
        assert!(close(fake, 1.0), "{fake}");
    }

    #[test]
    fn probability_output_is_taken_as_is_within_zero_to_one() {
        assert!(close(interpret(ClassifierOutput::Probability, 0, 1, &[0.3]).expect("valid"), 0.3));
        assert_eq!(interpret(ClassifierOutput::Probability, 0, 1, &[1.0]).expect("valid"), 1.0);
        assert_eq!(interpret(ClassifierOutput::Probability, 0, 1, &[0.0]).expect("valid"), 0.0);
        assert!(interpret(ClassifierOutput::Probability, 0, 1, &[1.5]).is_err());
        assert!(interpret(ClassifierOutput::Probability, 0, 1, &[-0.1]).is_err());
    }

    #[test]
    fn non_finite_output_is_an_error_never_a_pass() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(interpret(ClassifierOutput::Softmax, 1, 2, &[0.0, bad]).is_err(), "{bad} in softmax");
            assert!(interpret(ClassifierOutput::Softmax, 1, 2, &[bad, 0.0]).is_err(), "{bad} in softmax");
            assert!(interpret(ClassifierOutput::Sigmoid, 0, 1, &[bad]).is_err(), "{bad} in sigmoid");
            assert!(interpret(ClassifierOutput::Probability, 0, 1, &[bad]).is_err(), "{bad} as probability");
        }
    }

    #[test]
    fn a_manipulation_map_of_the_wrong_size_or_with_non_finite_values_is_an_error() {
        let values: Vec<f32> = (0..2 * 3 * 4).map(|index| index as f32 - 12.0).collect();
        let map = check_map(&values, 2, 3, 4).expect("a well-formed map");
        assert_eq!((map.channels, map.height, map.width), (2, 3, 4));
        // Channel 0, row 1, column 2 holds 1 * 4 + 2 - 12 = -6.
        assert!(close(map.manipulation_probability(1, 2), 1.0 / (1.0 + 6f32.exp())));
        assert!(check_map(&values[1..], 2, 3, 4).is_err(), "one value short");
        assert!(check_map(&values, 2, 4, 4).is_err(), "another shape");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut broken = values.clone();
            broken[17] = bad;
            let error = check_map(&broken, 2, 3, 4).expect_err("non-finite");
            assert!(format!("{error:#}").contains("value 17"), "{error:#}");
        }
    }

    #[test]
    fn wrong_output_length_is_an_error() {
        assert!(interpret(ClassifierOutput::Softmax, 1, 2, &[0.0, 1.0, 2.0]).is_err());
        assert!(interpret(ClassifierOutput::Softmax, 1, 2, &[0.0]).is_err());
        assert!(interpret(ClassifierOutput::Sigmoid, 0, 1, &[]).is_err());
        assert!(interpret(ClassifierOutput::Probability, 0, 1, &[0.5, 0.5]).is_err());
    }
}

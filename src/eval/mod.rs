//! Evaluation of the classifier against labelled images: presentation-attack metrics and the ROC plot.

pub mod metrics;
pub mod plot;

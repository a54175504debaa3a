//! Evaluation of the classifier: presentation-attack metrics against labelled images, site calibration of the
//! frame threshold on genuine captures, and their plots.

pub mod calibration;
pub mod metrics;
pub mod plot;

//! deepgate: deepfake-aware face gate runtime for access-control kiosks.
//!
//! Data flow and invariants: ARCHITECTURE.md.

pub mod align;
pub mod capture;
pub mod classify;
pub mod codec;
pub mod config;
pub mod decide;
pub mod detect;
pub mod eval;
pub mod frame;
pub mod gate;
pub mod gpu;
pub mod health;
pub mod hex;
pub mod infer;
pub mod logs;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod preprocess;
pub mod quality;
pub mod runtime;
pub mod session;
pub mod settings;
pub mod supervisor;
#[doc(hidden)]
pub mod testing;
pub mod timing;
pub mod update;

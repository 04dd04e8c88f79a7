//! tern runtime: BitNet b1.58 inference from a memory-mapped `.tern` file.
//!
//! Data flows one way: [`loader`] (map + validate) -> [`model`] (forward pass, kernels
//! behind one dispatch) -> [`generate`] (tokenizer, sampler, streaming) -> the `tern` CLI.
#![deny(unsafe_code)]

pub mod args;
pub mod bench;
pub mod chat;
pub mod cpus;
pub mod generate;
#[allow(unsafe_code)] // SIMD intrinsics behind feature detection: see kernels/mod.rs
pub mod kernels;
#[allow(unsafe_code)] // the memory map: see the SAFETY comment in loader.rs
pub mod loader;
pub mod model;
pub mod ops;
pub mod perplexity;
#[allow(unsafe_code)] // lifetime-erased jobs and disjoint band writes: see pool.rs
pub mod pool;
pub mod sampler;
pub mod session;
pub mod tokenizer;

pub use loader::ModelFile;
pub use model::{KvType, Model, Stage, State};

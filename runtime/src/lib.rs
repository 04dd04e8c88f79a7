//! tern runtime: BitNet b1.58 inference from a memory-mapped `.tern` file.
//!
//! Data flows one way: [`loader`] (map + validate) -> [`model`] (the forward pass) ->
//! [`generate`] (tokenizer, sampler, streaming) -> the `tern` CLI.
//!
//! Under the model, dependencies point one way too: [`model`] -> [`attention`] (KV cache,
//! RoPE, attention) and [`matmul`] (`y = W·x`, band scheduling) -> [`kernels`] (one band or
//! task, SIMD behind one dispatch; nothing of the runtime); [`attention`] and [`matmul`]
//! run their tasks on [`pool`], and use [`ops`] (per-token operations).
#![deny(unsafe_code)]

pub mod args;
pub mod attention;
pub mod batch;
pub mod bench;
pub mod chat;
pub mod chat_template;
pub mod cpus;
pub mod generate;
#[allow(unsafe_code)] // SIMD intrinsics behind feature detection: see kernels/mod.rs
pub mod kernels;
#[allow(unsafe_code)] // the memory map: see the SAFETY comment in loader.rs
pub mod loader;
pub mod matmul;
pub mod model;
pub mod ops;
pub mod perplexity;
#[allow(unsafe_code)] // lifetime-erased jobs and disjoint band writes: see pool/
pub mod pool;
pub mod sampler;
pub mod serve;
pub mod session;
pub mod tokenizer;

pub use loader::ModelFile;
pub use model::{KvType, Model, Scratch, Stage, State};

//! The benchmark corpus's own tests (deterministic generator, labelled scenarios, a quick
//! benchmark run). The corpus lives in `benches/corpus`, outside the product library.

#[allow(dead_code)]
#[path = "../benches/corpus/mod.rs"]
mod corpus;

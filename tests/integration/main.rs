mod harness;
mod support;

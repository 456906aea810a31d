mod harness;
mod spine;
mod stack;
mod support;

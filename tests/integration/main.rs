mod harness;
mod notify;
mod pipeline;
mod routers;
mod rules;
mod spine;
mod stack;
mod support;

//! Tools for the people who write rule files, on top of the rules, the judge and the metric
//! sources: the `canaryd rules ...` and `canaryd backtest` subcommands ([`cli`]) and the rule
//! unit-test runner ([`rule_tests`], `canaryd rules test`).

pub mod cli;
pub mod rule_tests;

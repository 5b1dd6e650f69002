//! One module per subcommand; each parses nothing itself and only calls the library crates.

pub mod model;
pub mod plan;
pub mod plan_elastic;
pub mod schedule;
pub mod simulate;
pub mod slice;
pub mod train;

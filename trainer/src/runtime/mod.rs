//! The pipeline runtime: one executor that runs any lowered schedule, stage by stage.

pub mod admit;
pub mod distributed;
pub mod handshake;
pub mod inbox;
pub mod partition;
pub mod pipeline;
pub mod rank_checkpoint;
pub mod record;
pub mod tensor_msg;
pub mod worker;

pub use partition::Partition;
pub use pipeline::{Pipeline, StepReport, Weights};
pub use record::StageReport;
pub use worker::IterationInput;

//! The pipeline runtime: one executor that runs any lowered schedule, stage by stage.

pub mod adaptive;
pub mod admit;
pub mod budget;
pub mod capabilities;
pub mod distributed;
pub mod elastic;
pub mod elastic_budget;
pub mod elastic_step;
pub mod error;
pub mod exchange;
pub mod handshake;
pub mod inbox;
pub mod input;
#[cfg(all(feature = "cuda", feature = "nccl"))]
pub mod nccl_tensor;
pub mod offload;
pub mod partition;
pub mod pipeline;
pub mod rank;
pub mod rank_checkpoint;
pub mod rank_loop;
pub mod recompute;
pub mod record;
pub mod tensor_msg;
pub mod vocab;
pub mod worker;

pub use input::IterationInput;
pub use partition::Partition;
pub use pipeline::{Pipeline, StepReport};
pub use rank::{Rank, Weights};
pub use record::StageReport;

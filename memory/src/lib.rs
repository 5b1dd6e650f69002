//! Per-stage memory of sequence-sliced pipeline parallelism: model, ledger and planners.
//!
//! - [`activation`]: saved bytes of a unit of work as a sum of named tensors (SPEC §5).
//! - [`states`]: weights, gradients and optimizer states per stage.
//! - [`pipeline`] and [`peak`]: closed-form units in flight and the static per-stage peak.
//! - [`gpu`]: GPU presets and PipeOffload's `k` criterion.
//! - [`offload`]: PipeOffload's planner over a simulated timeline; [`host_link`] times a
//!   schedule's transfers as the trainer's in-order host link joins them; [`timeline`] adapts the
//!   `schedule` crate's simulation.
//! - [`recompute`]: InfiniPipe's recomputation planner, an exact MILP with a brute-force oracle;
//!   [`program`] builds its program from any lowered schedule, as the trainer runs it.
//! - [`window`], [`elastic_plan`], [`elastic_compare`]: InfiniPipe's window model and per-pipeline
//!   recomputation, elastic planning end to end, and its comparison with fixed-slicing baselines.
//! - [`search`]: the planner's search over parallel layouts, schedules, offload and recomputation;
//!   [`rank`] re-ranks its leading plans by simulating their schedules.
//! - [`ledger`], [`lives`], [`export`]: the exact per-stage curve of a simulated schedule, as
//!   CSV, JSON or SVG.
//!
//! Architecture invariant: pure planning; no tensors, devices or IO. It predicts bytes, it never
//! measures them; renderers return strings.
//!
//! ```
//! use seqpipe_memory::*;
//! use seqpipe_slicing::preset;
//! let act = ActivationModel::new(preset("llama-70b").unwrap(), Parallelism::new(8, 1, 1).unwrap()).unwrap();
//! assert_eq!(act.bytes_per_token_layer(), 34304.0);
//! ```

#![deny(missing_docs)]

/// The crates this one plans over, re-exported so that a project depending on `seqpipe-memory`
/// alone can name its inputs (`seqpipe_memory::slicing::preset("llama-70b")`).
pub use seqpipe_schedule as schedule;
/// See [`schedule`].
pub use seqpipe_slicing as slicing;

// The README's examples run as doc tests, so the first thing a reader runs is checked.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod activation;
pub mod comm;
pub mod elastic_compare;
pub mod elastic_plan;
pub mod error;
pub mod export;
pub mod flop_costs;
pub mod gpu;
pub mod host_link;
pub mod ledger;
pub mod lives;
pub mod offload;
pub mod peak;
pub mod pipeline;
pub mod program;
pub mod rank;
pub mod recompute;
pub mod search;
pub mod simulated;
pub mod states;
pub mod timeline;
pub mod window;

pub use activation::{
    ActivationModel, AttentionKind, Dtype, LogitsPlacement, Parallelism, RecomputePolicy,
    TensorTerm, UnitFootprint,
};
pub use comm::{step_comm, CommTime, Interconnect};
pub use elastic_compare::{compare, default_cases, default_setup, render, CompareCase, CompareRow};
pub use elastic_plan::{
    elastic_with_slices, pack, plan_elastic, plan_packed, MethodResult, PipelineRun, PlanSetup,
};
pub use error::{MemoryError, Result};
pub use flop_costs::FlopCosts;
pub use gpu::{gpu_preset, GpuPreset, GPU_PRESETS};
pub use host_link::simulate_with_host_link;
pub use ledger::{run_ledger, CurvePoint, LedgerReport, MemEvent, MemOp, StageMemory};
pub use lives::{
    events_from_lives, lives_from_spans, ComputeSpan, Phase, UnitKey, UnitLife, UnitSizer,
};
pub use offload::{plan_offload, with_offload_actions, OffloadKnob, OffloadPlan, Transfer};
pub use peak::{StagePeak, StaticConfig, GIB, OFFLOAD_BUFFER_UNITS};
pub use pipeline::{PipelineKind, StageLayout};
pub use program::{schedule_program, ProgramInputs, ScheduleProgram};
pub use rank::{rank_by_simulation, Ranking, Simulations};
pub use recompute::{ChunkMem, RecomputePlan, RecomputeProblem, StepConstraint};
pub use search::{
    candidates, evaluate, evaluate_at, plan_order, search, BubbleSource, Candidate, Efficiency,
    Evaluation, SearchSpace,
};
pub use simulated::{schedule_config, simulated_bubble, simulated_bubbles, SimulatedBubbles};
pub use states::{model_states, stage_parameters, Precision, StageStates, StateOptions};
pub use timeline::{
    ledger_of_simulation, pipeline_kind, spans_from_simulation, spans_in_program_order, unit_key,
};
pub use window::{
    alive_after_forwards, uniform_checkpoints, uniform_checkpoints_replayed, window,
    window_problem, WindowInputs,
};

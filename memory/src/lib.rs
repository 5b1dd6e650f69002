//! Per-stage memory model (skeleton).
//!
//! Will hold the activation and model-state model, the ledger over a simulated schedule and the
//! offload and recomputation planners (issue #4). Nothing is implemented yet.
//!
//! Architecture invariant: pure planning; no tensors, devices or IO.

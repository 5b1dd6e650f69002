//! Pipeline schedules as data (skeleton).
//!
//! Will hold the action IR, one generator per schedule kind, lowering passes, the validator, the
//! event simulator and the renderers (issue #3). Nothing is implemented yet.
//!
//! Architecture invariant: pure planning; no tensors, devices or IO beyond renderers' writers.

//! Numerical health of a run, checked after the gradients and before the update: a non-finite
//! loss or gradient, a loss far above where the run started, or a gradient that is exactly zero
//! while the loss is not (a dead model) stops the run with the step and the likely cause. In a
//! multi-process run every rank checks the same all-reduced figures, so every rank stops.

use crate::error::{fail, Result};
use serde::{Deserialize, Serialize};

use crate::optim::OptimConfig;

/// What a step with a non-finite loss or gradient does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// Stop the run with an error naming the step and the likely cause.
    #[default]
    Stop,
    /// Skip the update and go on; more than [`MAX_SKIPS_IN_A_ROW`] in a row stop the run.
    Skip,
}

/// Consecutive skipped steps after which a run with `skip` stops all the same.
pub const MAX_SKIPS_IN_A_ROW: u32 = 5;
/// A loss above this multiple of the first step's (at least 1) means the run diverged.
pub const DIVERGED_FACTOR: f64 = 2.0;

/// Whether to apply the step's update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it.
    Apply,
    /// Skip it (non-finite, policy `skip`).
    Skip,
}

/// The health check's memory across steps.
#[derive(Debug, Clone)]
pub struct Health {
    policy: OnNonFinite,
    lr: f64,
    clipped: bool,
    first_loss: Option<f64>,
    skips_in_a_row: u32,
}

impl Health {
    /// A check for a run with these optimizer settings.
    pub fn new(optim: &OptimConfig) -> Health {
        Health {
            policy: optim.on_nonfinite,
            lr: optim.lr,
            clipped: optim.clip_norm.is_some(),
            first_loss: None,
            skips_in_a_row: 0,
        }
    }

    /// Judges `step` from its loss and squared global gradient norm.
    pub fn check(&mut self, step: u64, loss: f64, grad_sq: f64) -> Result<Verdict> {
        if !(loss.is_finite() && grad_sq.is_finite()) {
            return self.non_finite(step, loss, grad_sq);
        }
        self.skips_in_a_row = 0;
        let first = *self.first_loss.get_or_insert(loss);
        if loss > DIVERGED_FACTOR * first.max(1.0) {
            fail!(Diverged,
                "step {step}: the run diverged: loss {loss:.4} is more than {DIVERGED_FACTOR}× the \
                 first step's {first:.4}; lower optim.lr (now {}){}",
                self.lr,
                self.clip_hint()
            );
        }
        if grad_sq == 0.0 && loss > 0.0 {
            fail!(
                Diverged,
                "step {step}: the gradient is exactly zero while the loss is {loss:.4}: the model \
                 is dead (its activations saturated, usually after a too-large update); lower \
                 optim.lr (now {}) and restart",
                self.lr
            );
        }
        Ok(Verdict::Apply)
    }

    fn non_finite(&mut self, step: u64, loss: f64, grad_sq: f64) -> Result<Verdict> {
        let what = if loss.is_finite() {
            format!(
                "the gradient norm is {} (the loss, {loss:.4}, is finite)",
                grad_sq.sqrt()
            )
        } else {
            format!("the loss is {loss}")
        };
        let cause = if self.first_loss.is_none() {
            "at the run's first step, so the initial weights or the data give it (check \
             model.norm_eps, the data's tokens, and a resumed checkpoint)"
                .to_string()
        } else {
            format!(
                "after earlier finite steps, so an update blew up the weights; lower optim.lr \
                 (now {}){}",
                self.lr,
                self.clip_hint()
            )
        };
        if self.policy == OnNonFinite::Skip && self.skips_in_a_row < MAX_SKIPS_IN_A_ROW {
            self.skips_in_a_row += 1;
            eprintln!(
                "warning: step {step}: {what}; update skipped ({} in a row, at most \
                 {MAX_SKIPS_IN_A_ROW})",
                self.skips_in_a_row
            );
            return Ok(Verdict::Skip);
        }
        let skipped = if self.skips_in_a_row > 0 {
            format!(" after {} skipped steps in a row", self.skips_in_a_row)
        } else {
            String::new()
        };
        fail!(Diverged, "step {step}: {what}{skipped}: {cause}")
    }

    fn clip_hint(&self) -> &'static str {
        if self.clipped {
            ""
        } else {
            " or set optim.clip_norm"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(policy: OnNonFinite) -> Health {
        Health::new(&OptimConfig {
            on_nonfinite: policy,
            ..OptimConfig::default()
        })
    }

    #[test]
    fn finite_falling_losses_apply() {
        let mut h = health(OnNonFinite::Stop);
        for (step, loss) in [5.5, 4.0, 3.0].into_iter().enumerate() {
            assert_eq!(h.check(step as u64, loss, 1.0).unwrap(), Verdict::Apply);
        }
    }

    #[test]
    fn nan_stops_with_the_step_and_cause() {
        let mut h = health(OnNonFinite::Stop);
        h.check(0, 5.5, 1.0).unwrap();
        let e = h.check(1, f64::NAN, 1.0).unwrap_err().to_string();
        assert!(e.contains("step 1") && e.contains("optim.lr"), "{e}");
        let mut h = health(OnNonFinite::Stop);
        let e = h.check(0, f64::INFINITY, 1.0).unwrap_err().to_string();
        assert!(e.contains("first step"), "{e}");
    }

    #[test]
    fn skip_skips_then_stops() {
        let mut h = health(OnNonFinite::Skip);
        h.check(0, 5.5, 1.0).unwrap();
        for step in 1..=MAX_SKIPS_IN_A_ROW as u64 {
            assert_eq!(h.check(step, 5.0, f64::NAN).unwrap(), Verdict::Skip);
        }
        let e = h.check(9, 5.0, f64::NAN).unwrap_err().to_string();
        assert!(e.contains("skipped steps in a row"), "{e}");
    }

    #[test]
    fn divergence_and_a_dead_model_stop() {
        let mut h = health(OnNonFinite::Skip);
        h.check(0, 5.5, 1.0).unwrap();
        assert!(h
            .check(1, 12.0, 1.0)
            .unwrap_err()
            .to_string()
            .contains("diverged"));
        let mut h = health(OnNonFinite::Stop);
        h.check(0, 5.5, 1.0).unwrap();
        assert!(h
            .check(1, 5.5, 0.0)
            .unwrap_err()
            .to_string()
            .contains("dead"));
        // No scored targets: zero loss and zero gradient is not a dead model.
        assert_eq!(h.check(2, 0.0, 0.0).unwrap(), Verdict::Apply);
    }
}

//! `bench exchange`'s second table: SlimPipe at more stages than this machine has cores,
//! simulated with the op times measured on it. Each stage keeps the measured run's layers, batch
//! and heads, so a compute costs what the fitted line says for its attention score entries
//! (`seconds = a + b · entries`, forwards and backwards apart); the pairs are made with those
//! costs (`ExchangePolicy::Shorten`), and the schedule with them is simulated with the work they
//! move priced (`exchange_costs`).

use anyhow::Result;
use seqpipe_schedule::{
    exchange_costs, generate, insert_exchange, lower, simulate, Action, ExchangePolicy, Op, P2p,
    ScheduleConfig, ScheduleKind,
};

/// Measured op times: fitted lines and the shape they were measured on.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct OpTimes {
    /// Forward seconds `(a, b)`: `a + b · entries`.
    pub forward: (f64, f64),
    /// Backward seconds `(a, b)`.
    pub backward: (f64, f64),
    /// Layers per stage.
    pub layers: u64,
    /// Batch × attention heads.
    pub batch_heads: u64,
    /// Tokens per sequence.
    pub seq_len: u64,
}

impl OpTimes {
    fn line(&self, a: &Action) -> Option<(f64, f64)> {
        match a.op {
            Op::Forward => Some(self.forward),
            op if op.makes_input_grad() => Some(self.backward),
            _ => None,
        }
    }

    /// Tokens of `a`'s slice and before it, slices uniform over `n`.
    fn tokens(&self, a: &Action, bounds: &[u64]) -> (f64, f64) {
        let j = a.slice.index();
        ((bounds[j + 1] - bounds[j]) as f64, bounds[j] as f64)
    }

    /// What the executor counts for `a`: causal score entries over the stage's layers.
    fn entries(&self, a: &Action, bounds: &[u64]) -> f64 {
        let (s, before) = self.tokens(a, bounds);
        (self.layers * self.batch_heads) as f64 * (s * before + s * (s + 1.0) / 2.0)
    }

    /// `a`'s fitted seconds, unpaired.
    pub fn cost(&self, a: &Action, bounds: &[u64]) -> f64 {
        self.line(a)
            .map_or(0.0, |(c, b)| (c + b * self.entries(a, bounds)).max(0.0))
    }

    /// Seconds one prefix token costs `a`: a column of its scores in every layer.
    pub fn column(&self, a: &Action, bounds: &[u64]) -> f64 {
        let (s, _) = self.tokens(a, bounds);
        self.line(a).map_or(0.0, |(_, b)| {
            b * (self.layers * self.batch_heads) as f64 * s
        })
    }
}

/// One simulated configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WhatIf {
    /// Pipeline stages.
    pub stages: u32,
    /// Micro-batches.
    pub microbatches: u32,
    /// Slices per sequence.
    pub slices: u32,
    /// Pairs kept (heavy sides).
    pub pairs: usize,
    /// Simulated bubble without and with the exchange.
    pub bubble: (f64, f64),
    /// Simulated seconds per iteration without and with.
    pub makespan: (f64, f64),
}

/// SlimPipe on `stages` × `microbatches` × `slices`, simulated with `times` with and without
/// the exchange.
pub fn what_if(times: &OpTimes, stages: u32, microbatches: u32, slices: u32) -> Result<WhatIf> {
    let config =
        ScheduleConfig::new(ScheduleKind::SlimPipe, stages, microbatches).with_slices(slices);
    let plain = lower(&generate(&config)?)?;
    let n = u64::from(slices);
    let bounds: Vec<u64> = (0..=n).map(|j| j * times.seq_len / n).collect();
    let cost = |a: &Action| times.cost(a, &bounds);
    let column = |a: &Action| times.column(a, &bounds);
    let paired = insert_exchange(&plain, cost, column, &bounds, ExchangePolicy::Shorten)?;
    let without = simulate(&plain, cost, &P2p::free())?;
    let with = simulate(&paired, exchange_costs(&paired, cost, column), &P2p::free())?;
    Ok(WhatIf {
        stages,
        microbatches,
        slices,
        pairs: paired
            .iter()
            .filter(|a| a.pair.is_some_and(|p| p.head > 0))
            .count(),
        bubble: (without.bubble_ratio, with.bubble_ratio),
        makespan: (without.makespan, with.makespan),
    })
}

/// The configurations of the table: 2 to 8 stages, 8 and 16 slices.
pub fn what_ifs(times: &OpTimes) -> Result<Vec<WhatIf>> {
    let mut out = Vec::new();
    for stages in [2u32, 4, 8] {
        for slices in [8u32, 16] {
            if slices >= stages {
                out.push(what_if(times, stages, 4, slices)?);
            }
        }
    }
    Ok(out)
}

/// The table of [`what_ifs`].
pub fn table(rows: &[WhatIf]) -> Result<super::table::Table> {
    let mut t = super::table::Table::new(&[
        "stages",
        "micro-batches",
        "slices",
        "pairs kept",
        "simulated bubble without",
        "with",
        "simulated s / iteration without",
        "with",
    ]);
    for r in rows {
        t.push(vec![
            r.stages.to_string(),
            r.microbatches.to_string(),
            r.slices.to_string(),
            r.pairs.to_string(),
            format!("{:.1} %", 100.0 * r.bubble.0),
            format!("{:.1} %", 100.0 * r.bubble.1),
            format!("{:.3}", r.makespan.0),
            format!("{:.3}", r.makespan.1),
        ])?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With attention a large share of each compute, pairs form and shorten the simulated
    /// iteration; without any attention cost there is nothing to level.
    #[test]
    fn pairs_form_where_attention_costs_and_not_where_it_is_free() {
        let times = |b: f64| OpTimes {
            forward: (0.01, b),
            backward: (0.02, 2.0 * b),
            layers: 2,
            batch_heads: 4,
            seq_len: 1024,
        };
        let r = what_if(&times(1e-8), 4, 4, 16).unwrap();
        assert!(r.pairs > 0 && r.makespan.1 < r.makespan.0, "{r:?}");
        let flat = what_if(&times(0.0), 4, 4, 16).unwrap();
        assert_eq!(flat.pairs, 0, "{flat:?}");
        assert_eq!(flat.makespan.0, flat.makespan.1);
    }
}

//! `seqpipe plan`'s ranking by simulation: how the table was ranked and whether its top is
//! certain, and the best plan `seqpipe train` runs as it is (no TP or CP), ranked the same way.

use std::time::Duration;

use seqpipe_memory::{
    rank_by_simulation, BubbleSource, Evaluation, Ranking, SearchSpace, Simulations,
};
use seqpipe_trainer::runtime::capabilities::train_parallel;

use super::plan::row;

/// The "by" column: where a row's bubble comes from.
pub(super) fn source_tag(source: BubbleSource) -> &'static str {
    match source {
        BubbleSource::ClosedForm => "bound",
        BubbleSource::Simulated => "sim",
        BubbleSource::SimulatedWithExchange => "sim+x",
    }
}

/// How the table was ranked, and whether its top is certain.
pub(super) fn print_ranking(ranking: &Ranking, top: u64, took: Duration) -> anyhow::Result<()> {
    outln!(
        "\nranked by simulating {} schedule(s) as seqpipe train runs them in {:.1} s (FLOP costs; \
         SlimPipe: uniform slices, vocabulary-parallel HEAD meetings; \"by\": sim = simulated, \
         sim+x = simulated with the attention exchange (every pair), which --emit-config turns \
         on; bound = the closed form, a lower bound of the bubble)",
        ranking.schedules_simulated,
        took.as_secs_f64()
    );
    if ranking.refused > 0 {
        outln!(
            "{} configuration(s) dropped: their schedule generator refuses them",
            ranking.refused
        );
    }
    if let Some((c, closed, simulated)) = &ranking.bound_broken {
        outln!(
            "warning: {} on {} stages × {} micro-batches simulated a bubble of {:.3} %, below its \
             closed form {:.3} %: the certificate rests on that bound, so the ranking is not \
             certain (please report this)",
            c.kind,
            c.stages,
            c.microbatches,
            100.0 * simulated,
            100.0 * closed
        );
    }
    let unsimulated = ranking
        .evaluations
        .iter()
        .filter(|e| e.fits() && e.bubble_source == BubbleSource::ClosedForm)
        .map(|e| e.mfu)
        .fold(f64::NAN, f64::max);
    match ranking.exact {
        true => outln!("the top {top} are certain: no plan left unsimulated can beat them"),
        false => outln!(
            "the top {top} are not certain: a plan left unsimulated could reach {:.1}% MFU (its \
             closed-form bound); --exact simulates until they are (or --simulate N, more)",
            100.0 * unsimulated
        ),
    }
    Ok(())
}

/// The plans `seqpipe train` runs as they are, ranked by simulation on their own: the best of
/// them is printed as the `[parallel]` table that runs it.
pub(super) struct Runnable<'a> {
    pub space: &'a SearchSpace,
    /// Schedules to simulate at most (`None`: until certain).
    pub cap: Option<usize>,
    /// Schedules the main ranking simulated, reused.
    pub known: &'a mut Simulations,
}

impl Runnable<'_> {
    /// Ranks `closed_forms` (the search's evaluations, in its order) restricted to the plans the
    /// trainer runs, and prints the best.
    pub fn print(self, closed_forms: Vec<Evaluation>) -> anyhow::Result<()> {
        let runnable: Vec<Evaluation> = closed_forms
            .into_iter()
            .filter(|e| e.fits() && train_parallel(&e.candidate).is_some())
            .collect();
        if runnable.is_empty() {
            return Ok(());
        }
        let ranking = rank_by_simulation(self.space, runnable, 1, self.cap, self.known)?;
        let Some(best) = ranking.evaluations.first() else {
            return Ok(());
        };
        let Some(parallel) = train_parallel(&best.candidate) else {
            return Ok(());
        };
        let certainty = match ranking.exact {
            true => "certain",
            false => "not certain: --exact settles it",
        };
        outln!(
            "\nthe best plan without TP/CP ({certainty}), as seqpipe train's [parallel] table ({}):",
            row(best).split_whitespace().collect::<Vec<_>>().join(" ")
        );
        outln!("[parallel]\n{}", toml::to_string(&parallel)?.trim_end());
        Ok(())
    }
}

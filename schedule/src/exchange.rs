//! SlimPipe's attention context exchange as a pass (SPEC §4): the causal attention of a
//! slice grows with the tokens before it, so with uniform slices the ranks of a pipeline step
//! carry unequal work. At each step the ranks are paired, the j-th shortest compute with the
//! j-th longest, and the long one hands the oldest tokens of its prefix to the short one, which
//! attends to them for it: enough tokens that both take the same time. [`insert_exchange`]
//! marks both computes with a [`Pair`]; [`exchange_costs`] prices a marked schedule (the work
//! moved from one side to the other).
//!
//! Two choices differ from the paper, both so that partners run together:
//! - the paper levels attention alone and moves whole slices (`vol` slices); this pass levels
//!   the computes' durations and moves tokens, so a pair ends together to within one token's
//!   column of scores. Between computes of one kind and one slice length the two agree, up to
//!   the paper's rounding (which leaves slices one apart as they were);
//! - a step is an instant of the simulated timeline, found again after every step is paired
//!   (the pairs already made change when later computes start), not a lock-step slot, so a
//!   forward may pair with a backward: the computes that run together are the ones paired.
//!
//! Steady forwards come after the stage's first backward, steady backwards before its last
//! forward: no rank in warm-up or cool-down is paired, as in the paper. The backward pieces
//! paired are those that make the input gradient (`B` or `I`).
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::*;
//! let config = ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 2).with_slices(8);
//! let bounds: Vec<u64> = (0..=8).map(|j| 64 * j).collect(); // 8 slices of 64 tokens
//! // Half of a forward's time in its attention, a backward twice a forward.
//! let times = AttentionCosts::new(&bounds, 0.5);
//! let lowered = lower(&generate(&config).unwrap()).unwrap();
//! let (cost, column) = (|a: &Action| times.cost(a), |a: &Action| times.column(a));
//! let s = insert_exchange(&lowered, cost, column, &bounds, ExchangePolicy::Shorten).unwrap();
//! assert!(validate(&s).is_empty());
//! let heavy = s.actions.iter().flatten().filter(|a| a.pair.is_some_and(|p| p.head > 0));
//! assert!(heavy.count() > 0);
//! let before = simulate(&lowered, cost, &P2p::free()).unwrap();
//! let after = simulate(&s, exchange_costs(&s, cost, column), &P2p::free()).unwrap();
//! assert!(after.makespan < before.makespan);
//! ```

use std::collections::{HashMap, HashSet};

use crate::action::{Action, Op, Pair};
use crate::error::{Result, ScheduleError};
use crate::ids::Stage;
use crate::schedule::Schedule;
use crate::simulate::{simulate, P2p};
use crate::validate::validate;

/// Whether position `i` of `list` is a steady compute: a forward after the stage's first
/// backward, or an input-gradient backward before its last forward.
fn steady(list: &[Action], i: usize) -> bool {
    let first_backward = list.iter().position(|a| a.op.makes_input_grad());
    let last_forward = list.iter().rposition(|a| a.op == Op::Forward);
    match list[i].op {
        Op::Forward => first_backward.is_some_and(|b| b < i),
        op if op.makes_input_grad() => last_forward.is_some_and(|f| i < f),
        _ => false,
    }
}

/// `schedule` (lowered) with its pairs marked (existing marks are replaced). `cost` is each
/// compute's duration unpaired, `column` what one token of its prefix costs it (the attention
/// of its slice's queries to one key, forward and, for a backward, its gradient), and `bounds`
/// the token offsets of the slice boundaries, `n + 1` of them from 0 (slice `j` is
/// `bounds[j]..bounds[j + 1]`), so a pair's [`Pair::head`] counts tokens.
///
/// Steps are taken in time order: the earliest steady compute not yet looked at, on the
/// timeline of the pairs so far ([`exchange_costs`]), and every unpaired steady compute running
/// then. Each pair is kept only if the schedule still validates (partners meet in the same
/// order on both sides, the dry run finishes) and `policy` takes it. One stage, or one slice
/// per sequence, leaves nothing to move.
pub fn insert_exchange<F, G>(
    schedule: &Schedule,
    cost: F,
    column: G,
    bounds: &[u64],
    policy: ExchangePolicy,
) -> Result<Schedule>
where
    F: Fn(&Action) -> f64,
    G: Fn(&Action) -> f64,
{
    let prefix = Prefixes::new(bounds, schedule.config.slices)?;
    let mut out = strip_exchange(schedule);
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    let mut best = f64::INFINITY;
    loop {
        let sim = simulate(&out, exchange_costs(&out, &cost, &column), &P2p::free())?;
        best = best.min(sim.makespan);
        let spans: Vec<(f64, f64, usize, usize)> = sim
            .timeline
            .iter()
            .enumerate()
            .flat_map(|(r, timed)| {
                let list = &out.actions[r];
                timed
                    .iter()
                    .enumerate()
                    .filter(move |(i, _)| steady(list, *i))
                    .map(move |(i, t)| (t.start + t.wait, t.end, r, i))
            })
            .collect();
        let next = spans
            .iter()
            .filter(|s| !seen.contains(&(s.2, s.3)))
            .map(|s| s.0);
        let Some(t) = next.min_by(f64::total_cmp) else {
            break;
        };
        let mut step: Vec<(usize, usize)> = Vec::new();
        for &(start, end, r, i) in &spans {
            let running = start <= t && (t < end || start == t);
            if start == t {
                seen.insert((r, i));
            }
            let free = out.actions[r][i].pair.is_none();
            if running && free && step.iter().all(|&(q, _)| q != r) {
                step.push((r, i));
            }
        }
        if policy == ExchangePolicy::Level {
            best = f64::INFINITY;
        }
        pair_step(&mut out, &step, (&cost, &column), &prefix, &mut best);
    }
    Ok(out)
}

/// Which pairs [`insert_exchange`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangePolicy {
    /// Every pair that levels a step, as the paper does.
    Level,
    /// Only pairs that leave the simulated iteration no longer than the shortest so far: a
    /// pair levels its step but may delay what waits on the side that took the work.
    Shorten,
}

/// The tokens before each slice of a sequence.
struct Prefixes<'b> {
    bounds: &'b [u64],
}

impl<'b> Prefixes<'b> {
    /// Checks that `bounds` are `slices + 1` increasing offsets from 0.
    fn new(bounds: &'b [u64], slices: u32) -> Result<Self> {
        let increasing = bounds.windows(2).all(|w| w[0] < w[1]);
        if bounds.len() != slices as usize + 1 || bounds.first() != Some(&0) || !increasing {
            return Err(ScheduleError::BadSliceBounds {
                bounds: bounds.to_vec(),
                slices,
            });
        }
        Ok(Self { bounds })
    }

    /// Tokens before `a`'s slice.
    fn of(&self, a: &Action) -> u64 {
        self.bounds[a.slice.index()]
    }
}

/// Pairs one step's computes `(stage, position)`, the longest with the shortest, the long side
/// handing the tokens that make them take the same time; a pair that breaks a rule, or makes
/// the simulated iteration longer than `best` (the shortest so far), is undone.
fn pair_step<F, G>(
    s: &mut Schedule,
    at: &[(usize, usize)],
    (cost, column): (&F, &G),
    prefix: &Prefixes,
    best: &mut f64,
) where
    F: Fn(&Action) -> f64,
    G: Fn(&Action) -> f64,
{
    let mut by_time: Vec<(f64, usize, usize)> = at
        .iter()
        .map(|&(r, i)| (cost(&s.actions[r][i]), r, i))
        .collect();
    by_time.sort_by(|a, b| a.0.total_cmp(&b.0));
    let p = by_time.len();
    for j in 0..p / 2 {
        let (short, long) = (by_time[j], by_time[p - 1 - j]);
        let h = &s.actions[long.1][long.2];
        let per_token = column(h);
        if per_token.is_nan() || per_token <= 0.0 {
            continue;
        }
        let level = ((long.0 - short.0) / (2.0 * per_token)).max(0.0) as u64;
        let head = u32::try_from(level.min(prefix.of(h))).unwrap_or(u32::MAX);
        if head == 0 {
            continue;
        }
        let backward = h.op != Op::Forward;
        s.actions[long.1][long.2].pair = Some(Pair {
            peer: Stage(short.1 as u32),
            head,
            backward,
        });
        s.actions[short.1][short.2].pair = Some(Pair {
            peer: Stage(long.1 as u32),
            head: 0,
            backward,
        });
        if !(validate(s).is_empty() && makespan(s, cost, column).is_some_and(|m| m <= *best)) {
            s.actions[long.1][long.2].pair = None;
            s.actions[short.1][short.2].pair = None;
        } else {
            *best = makespan(s, cost, column).unwrap_or(*best);
        }
    }
}

/// The simulated makespan of `s` with its exchanges priced, or `None` if it does not finish.
fn makespan<F, G>(s: &Schedule, cost: &F, column: &G) -> Option<f64>
where
    F: Fn(&Action) -> f64,
    G: Fn(&Action) -> f64,
{
    let sim = simulate(s, exchange_costs(s, cost, column), &P2p::free()).ok()?;
    Some(sim.makespan)
}

/// `cost` of the computes of `schedule` with its exchanges priced: a heavy side costs `head`
/// columns less ([`insert_exchange`]'s `column`), its partner (the `n`-th exchange of the two
/// stages, on each side) that much more. Unmatched marks are left as they are (the validator
/// names them).
pub fn exchange_costs<'a, F, G>(
    schedule: &Schedule,
    cost: F,
    column: G,
) -> impl Fn(&Action) -> f64 + 'a
where
    F: Fn(&Action) -> f64 + 'a,
    G: Fn(&Action) -> f64,
{
    let mut sides: HashMap<(usize, usize), Vec<Action>> = HashMap::new();
    for a in schedule.iter().filter(|a| a.pair.is_some()) {
        let peer = a.pair.map_or(0, |p| p.peer.index());
        sides.entry((a.stage.index(), peer)).or_default().push(*a);
    }
    let mut moved: HashMap<Action, f64> = HashMap::new();
    for (&(r, q), mine) in &sides {
        let Some(theirs) = sides.get(&(q, r)) else {
            continue;
        };
        for (h, l) in mine.iter().zip(theirs) {
            let head = h.pair.map_or(0, |p| p.head);
            if head > 0 {
                let work = f64::from(head) * column(h);
                *moved.entry(*h).or_default() -= work;
                *moved.entry(*l).or_default() += work;
            }
        }
    }
    move |a: &Action| (cost(a) + moved.get(a).copied().unwrap_or(0.0)).max(0.0)
}

/// A simple price list for drawing and testing exchanges: a forward of slice `j` costs its
/// tokens' share of the sequence, split into a linear part and an attention part that grows
/// with the keys it sees; `attention` is the attention's share of a whole sequence's forward. A
/// backward costs twice a forward: its input-gradient piece (`I`) the linear part once and the
/// attention twice, its weight piece (`W`) the linear part once; anything else is free.
#[derive(Debug, Clone)]
pub struct AttentionCosts {
    bounds: Vec<u64>,
    attention: f64,
}

impl AttentionCosts {
    /// Prices for slices `bounds` (as [`insert_exchange`] takes them) with `attention` (in
    /// `0..=1`) of a sequence's forward in its attention.
    pub fn new(bounds: &[u64], attention: f64) -> Self {
        Self {
            bounds: bounds.to_vec(),
            attention: attention.clamp(0.0, 1.0),
        }
    }

    fn tokens(&self) -> f64 {
        self.bounds.last().copied().unwrap_or(1).max(1) as f64
    }

    /// Tokens of `a`'s slice and the tokens before it.
    fn slice(&self, a: &Action) -> (f64, f64) {
        let j = a.slice.index().min(self.bounds.len().saturating_sub(2));
        let (start, end) = (self.bounds[j], self.bounds[j + 1]);
        ((end - start) as f64, start as f64)
    }

    /// How many forwards `a`'s attention work counts for.
    fn weight(a: &Action) -> f64 {
        match a.op {
            Op::Forward => 1.0,
            Op::Backward | Op::BackwardInput => 2.0,
            _ => 0.0,
        }
    }

    /// `a`'s duration.
    pub fn cost(&self, a: &Action) -> f64 {
        let (s, before) = self.slice(a);
        let n = self.tokens();
        let linear = (1.0 - self.attention) * s / n;
        // Causal score entries over those of the whole sequence.
        let scores = (s * before + s * (s + 1.0) / 2.0) / (n * (n + 1.0) / 2.0);
        match a.op {
            Op::Forward => linear + self.attention * scores,
            Op::Backward => 2.0 * (linear + self.attention * scores),
            Op::BackwardInput => linear + 2.0 * self.attention * scores,
            Op::BackwardWeight => linear,
            _ => 0.0,
        }
    }

    /// What one token of `a`'s prefix costs it.
    pub fn column(&self, a: &Action) -> f64 {
        let (s, _) = self.slice(a);
        let n = self.tokens();
        Self::weight(a) * self.attention * s / (n * (n + 1.0) / 2.0)
    }
}

/// `schedule` with no exchange marks.
pub fn strip_exchange(schedule: &Schedule) -> Schedule {
    let mut out = schedule.clone();
    for a in out.actions.iter_mut().flatten() {
        a.pair = None;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{generate, lower, ScheduleConfig, ScheduleKind};
    use ExchangePolicy::*;

    fn slimpipe(p: u32, n: u32) -> Schedule {
        let config = ScheduleConfig::new(ScheduleKind::SlimPipe, p, 4).with_slices(n);
        lower(&generate(&config).unwrap()).unwrap()
    }

    #[test]
    fn bounds_that_do_not_fit_the_slices_are_refused_by_value() {
        let s = slimpipe(2, 4);
        let t = AttentionCosts::new(&[0, 4, 8, 12, 16], 0.5);
        for bad in [&[0, 4, 8, 12][..], &[1, 4, 8, 12, 16], &[0, 4, 4, 12, 16]] {
            let e = insert_exchange(&s, |a| t.cost(a), |a| t.column(a), bad, Level);
            let e = e.unwrap_err().to_string();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("needs 5"),
                "{e}"
            );
        }
    }

    /// Every pair ends together to within one token's column of the long side: the long side
    /// less what it hands takes at least the short side plus it, and one token more would turn
    /// them round; the bubble drops.
    #[test]
    fn partners_take_the_same_time_to_one_column() {
        let (p, n, s) = (4u32, 16u32, 64u64);
        let bounds: Vec<u64> = (0..=u64::from(n)).map(|j| s * j).collect();
        let t = AttentionCosts::new(&bounds, 0.6);
        let plain = slimpipe(p, n);
        let x = insert_exchange(&plain, |a| t.cost(a), |a| t.column(a), &bounds, Level).unwrap();
        let priced = exchange_costs(&x, |a| t.cost(a), |a| t.column(a));
        let mut sides: HashMap<(usize, usize), Vec<Action>> = HashMap::new();
        for a in x.iter().filter(|a| a.pair.is_some()) {
            let peer = a.pair.unwrap().peer.index();
            sides.entry((a.stage.index(), peer)).or_default().push(*a);
        }
        let mut pairs = 0;
        for (&(r, q), mine) in &sides {
            for (h, l) in mine.iter().zip(&sides[&(q, r)]) {
                let head = u64::from(h.pair.unwrap().head);
                if head == 0 {
                    continue;
                }
                // A long side that hands its whole prefix may stay longer.
                let whole = head == bounds[h.slice.index()];
                let (long, short) = (priced(h), priced(l));
                let what = format!("{} {}: {long} vs {short}", x.text(h), x.text(l));
                assert!(long >= short, "{what}");
                assert!(
                    whole || long - short <= 2.0 * t.column(h) * (1.0 + 1e-9),
                    "{what}"
                );
                pairs += 1;
            }
        }
        assert!(pairs > 0);
        let before = simulate(&plain, |a| t.cost(a), &P2p::free()).unwrap();
        let after = simulate(&x, priced, &P2p::free()).unwrap();
        assert!(
            after.bubble_ratio < before.bubble_ratio,
            "{} vs {}",
            after.bubble_ratio,
            before.bubble_ratio
        );
    }
}

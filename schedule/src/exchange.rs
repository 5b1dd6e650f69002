//! SlimPipe's attention context exchange as a pass (SPEC §4): the causal attention of a
//! slice grows with the tokens before it, so with uniform slices the ranks of a pipeline step
//! carry unequal attention. At each steady step the ranks are paired, the j-th lightest
//! attention with the j-th heaviest, and the heavy one hands the oldest tokens of its prefix to
//! the light one, which attends to them for it: enough tokens that both attend to as many keys.
//! [`insert_exchange`] marks both computes with a [`Pair`]; [`exchange_costs`] prices a marked
//! schedule (the work moved from one side to the other).
//!
//! A step is the paper's lock-step one ([`exchange_steps`]): one steady forward (or
//! input-gradient backward) of every stage, those that run side by side on the simulated
//! timeline; a step some stage lacks (its warm-up or cool-down) is left out, as in the paper.
//! Partners need not run at the same time:
//! the light side answers a request whenever it arrives (the executor between layers and while
//! it waits; the simulator charges the work to the light mark), so a pair adds no wait. Heads
//! count tokens, not slices: the paper's rounding to whole slices leaves slices one apart as
//! they were.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::*;
//! let config = ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 4).with_slices(8);
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

use std::collections::HashMap;

use crate::action::{Action, Op, Pair};
use crate::error::{Result, ScheduleError};
use crate::ids::Stage;
use crate::schedule::{Schedule, UnitIndex};
use crate::simulate::{simulate, simulate_timeline, P2p, Timed};
use crate::validate::exchange::exchange_violations;

/// The positions of `list`'s steady computes of one direction: the forwards after the stage's
/// first backward, or (`forward` false) the input-gradient backwards before its last forward.
fn steady(list: &[Action], forward: bool) -> Vec<usize> {
    let first_backward = list.iter().position(|a| a.op.makes_input_grad());
    let last_forward = list.iter().rposition(|a| a.op == Op::Forward);
    let is_steady = |i: usize| match list[i].op {
        Op::Forward => forward && first_backward.is_some_and(|b| b < i),
        op if op.makes_input_grad() => !forward && last_forward.is_some_and(|f| i < f),
        _ => false,
    };
    (0..list.len()).filter(|&i| is_steady(i)).collect()
}

/// `schedule` (lowered) with its pairs marked (existing marks are replaced). `cost` is each
/// compute's duration unpaired, `column` what one token of its prefix costs it (the attention
/// of its slice's queries to one key, forward and, for a backward, its gradient), and `bounds`
/// the token offsets of the slice boundaries, `n + 1` of them from 0 (slice `j` is
/// `bounds[j]..bounds[j + 1]`), so a pair's [`Pair::head`] counts tokens.
///
/// Steps are taken in order; a compute's attention is `column` times the keys its queries see
/// on average. Each pair is kept if `policy` takes it (the durations `cost` and the moved work
/// price the simulated iteration); pairs made step by step meet in order on both sides, which
/// the exchange's rules check once at the end. One stage, or one slice per sequence, leaves nothing
/// to move.
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
    let plain = strip_exchange(schedule);
    let timeline = simulate_timeline(&plain, &cost, &P2p::free())?;
    insert_exchange_on(&plain, &timeline, cost, column, bounds, policy)
}

/// [`insert_exchange`] on a schedule without exchanges whose simulated timeline under `cost`
/// the caller has already (the planner prices the schedule both ways); a schedule that
/// already has exchanges is refused.
pub fn insert_exchange_on<F, G>(
    schedule: &Schedule,
    timeline: &[Vec<Timed>],
    cost: F,
    column: G,
    bounds: &[u64],
    policy: ExchangePolicy,
) -> Result<Schedule>
where
    F: Fn(&Action) -> f64,
    G: Fn(&Action) -> f64,
{
    let marked = schedule.actions.iter().enumerate().find_map(|(r, list)| {
        let position = list.iter().position(|a| a.pair.is_some())?;
        Some((r, position, &list[position]))
    });
    if let Some((stage, position, a)) = marked {
        return Err(ScheduleError::Unmatched {
            stage: stage as u32,
            position,
            action: schedule.text(a),
            reason: "is an exchange already: exchanges are placed on a schedule without any \
                     (strip_exchange first)"
                .into(),
        });
    }
    let prefix = Prefixes::new(bounds, schedule.config.slices)?;
    let mut out = schedule.clone();
    let mut best = match policy {
        ExchangePolicy::Level => f64::INFINITY,
        ExchangePolicy::Shorten => makespan(&out, &cost, &column).unwrap_or(f64::INFINITY),
    };
    let attention = |a: &Action| column(a) * prefix.attended(a);
    for step in exchange_steps_on(&out, timeline) {
        if policy == ExchangePolicy::Level {
            best = f64::INFINITY;
        }
        pair_step(
            &mut out,
            &step,
            (&cost, &attention, &column),
            &prefix,
            &mut best,
        );
    }
    // Only the marks changed: their rules are the ones to check again.
    let mut broken = Vec::new();
    exchange_violations(&out, &mut broken);
    match broken.into_iter().next() {
        None => Ok(out),
        Some(v) => Err(ScheduleError::Unmatched {
            stage: v.stage,
            position: v.position.unwrap_or(0),
            action: v.action,
            reason: format!(
                "breaks {:?} after pairing (a bug in the exchange pass)",
                v.rule
            ),
        }),
    }
}

/// The steady steps of `schedule` (lowered) as [`insert_exchange`] pairs them, in order: each
/// step the `(stage, position)` of one steady compute of every stage, all forwards or all
/// input-gradient backwards. A steady forward comes after its stage's first backward, a steady
/// backward before its last forward. The stages run their steady computes one after another at
/// a common pace, each some computes behind or ahead of the last stage; that offset is read
/// off the timeline simulated with `cost` (the compute nearest in time to the last stage's
/// middle steady one), so step `k` holds the last stage's `k`-th steady compute and on every
/// other stage the one running beside it. A step some stage lacks (its warm-up or cool-down) is
/// left out, as in the paper.
pub fn exchange_steps<F>(schedule: &Schedule, cost: F) -> Result<Vec<Vec<(usize, usize)>>>
where
    F: Fn(&Action) -> f64,
{
    let timeline = simulate_timeline(schedule, cost, &P2p::free())?;
    Ok(exchange_steps_on(schedule, &timeline))
}

/// [`exchange_steps`] read off `timeline`, `schedule`'s simulated timeline (for a caller that
/// has simulated it already).
pub fn exchange_steps_on(schedule: &Schedule, timeline: &[Vec<Timed>]) -> Vec<Vec<(usize, usize)>> {
    let p = schedule.actions.len();
    let mut out = Vec::new();
    let mut by_direction = Vec::new();
    for forward in [true, false] {
        let lists: Vec<Vec<usize>> = schedule
            .actions
            .iter()
            .map(|l| steady(l, forward))
            .collect();
        let start = |r: usize, i: usize| timeline[r][i].start + timeline[r][i].wait;
        let reference = &lists[p - 1];
        let Some(&middle) = reference.get(reference.len() / 2) else {
            by_direction.push(Vec::new());
            continue;
        };
        let at = start(p - 1, middle);
        let lags: Vec<i64> = (0..p)
            .map(|r| {
                let nearest = (0..lists[r].len())
                    .min_by(|&a, &b| {
                        let d = |j: usize| (start(r, lists[r][j]) - at).abs();
                        d(a).total_cmp(&d(b))
                    })
                    .unwrap_or(0);
                (reference.len() / 2) as i64 - nearest as i64
            })
            .collect();
        let steps: Vec<Vec<(usize, usize)>> = (0..reference.len())
            .filter_map(|k| {
                (0..p)
                    .map(|r| {
                        let j = usize::try_from(k as i64 - lags[r]).ok()?;
                        lists[r].get(j).map(|&i| (r, i))
                    })
                    .collect()
            })
            .collect();
        by_direction.push(steps);
    }
    // Forward and backward steps interleaved, as the pipeline runs them.
    let (forwards, backwards) = (&by_direction[0], &by_direction[1]);
    for k in 0..forwards.len().max(backwards.len()) {
        out.extend(forwards.get(k).cloned());
        out.extend(backwards.get(k).cloned());
    }
    out
}

/// Which pairs [`insert_exchange`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangePolicy {
    /// Every pair that levels a step, as the paper does.
    Level,
    /// Only pairs that leave the simulated iteration no longer than the shortest so far: a
    /// pair levels its step's attention but may delay what waits on the side that took the
    /// work.
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

    /// The keys `a`'s queries attend to, on average: the prefix and half the slice's own.
    fn attended(&self, a: &Action) -> f64 {
        let j = a.slice.index();
        let len = (self.bounds[j + 1] - self.bounds[j]) as f64;
        self.bounds[j] as f64 + (len + 1.0) / 2.0
    }
}

/// Pairs one step's computes `(stage, position)`, the heaviest attention with the lightest, the
/// heavy side handing the tokens that level them; a pair that makes the simulated iteration
/// longer than `best` (the shortest so far; infinite keeps every pair) is undone.
fn pair_step<F, A, G>(
    s: &mut Schedule,
    at: &[(usize, usize)],
    (cost, attention, column): (&F, &A, &G),
    prefix: &Prefixes,
    best: &mut f64,
) where
    F: Fn(&Action) -> f64,
    A: Fn(&Action) -> f64,
    G: Fn(&Action) -> f64,
{
    let mut by_attention: Vec<(f64, usize, usize)> = at
        .iter()
        .map(|&(r, i)| (attention(&s.actions[r][i]), r, i))
        .collect();
    by_attention.sort_by(|a, b| a.0.total_cmp(&b.0));
    let p = by_attention.len();
    for j in 0..p / 2 {
        let (light, heavy) = (by_attention[j], by_attention[p - 1 - j]);
        let h = &s.actions[heavy.1][heavy.2];
        let per_token = column(h);
        if per_token.is_nan() || per_token <= 0.0 {
            continue;
        }
        let level = ((heavy.0 - light.0) / (2.0 * per_token)).max(0.0) as u64;
        let head = u32::try_from(level.min(prefix.of(h))).unwrap_or(u32::MAX);
        if head == 0 {
            continue;
        }
        let backward = h.op != Op::Forward;
        let mark = |peer: usize, head: u32| Pair {
            peer: Stage(peer as u32),
            head,
            backward,
        };
        s.actions[heavy.1][heavy.2].pair = Some(mark(light.1, head));
        s.actions[light.1][light.2].pair = Some(mark(heavy.1, 0));
        let shorter = match best.is_finite() {
            false => Some(*best),
            true => makespan(s, cost, column).filter(|m| m <= best),
        };
        match shorter {
            Some(m) => *best = m,
            None => {
                s.actions[heavy.1][heavy.2].pair = None;
                s.actions[light.1][light.2].pair = None;
            }
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
    // Moved work by mark, in a dense table: the planner prices millions of marked computes.
    let marks = MarkIndex::new(schedule);
    let mut moved = vec![0.0; marks.len()];
    for (h, l) in matched_pairs(schedule) {
        let work = f64::from(h.pair.map_or(0, |p| p.head)) * column(&h);
        for (a, sign) in [(h, -1.0), (l, 1.0)] {
            if let Some(slot) = marks.of(&a) {
                moved[slot] += sign * work;
            }
        }
    }
    move |a: &Action| match a.pair {
        None => cost(a).max(0.0),
        Some(_) => (cost(a) + marks.of(a).map_or(0.0, |slot| moved[slot])).max(0.0),
    }
}

/// Dense numbering of the marks a schedule can hold: one forward and one backward mark per
/// (stage, unit).
struct MarkIndex {
    units: UnitIndex,
    counts: Vec<u32>,
    chunks: u32,
    stages: usize,
}

impl MarkIndex {
    fn new(schedule: &Schedule) -> Self {
        let counts = schedule.slice_counts();
        MarkIndex {
            units: UnitIndex::from_counts(&counts, schedule.config.chunks),
            counts,
            chunks: schedule.config.chunks,
            stages: schedule.stages(),
        }
    }

    fn len(&self) -> usize {
        2 * self.stages * self.units.len()
    }

    /// The slot of `a`'s mark, `None` for a unit or stage the schedule does not have.
    fn of(&self, a: &Action) -> Option<usize> {
        let u = a.unit();
        let known = self
            .counts
            .get(u.mb.index())
            .is_some_and(|&n| u.slice.0 < n)
            && u.chunk.0 < self.chunks
            && a.stage.index() < self.stages;
        let backward = a.pair.is_some_and(|p| p.backward);
        known.then(|| {
            2 * (a.stage.index() * self.units.len() + self.units.of(&u)) + usize::from(backward)
        })
    }
}

/// The (heavy, light) marks of `schedule` that meet: the `n`-th heavy mark of a stage towards
/// a peer in one direction and the `n`-th light mark of the peer from it in that direction.
pub fn matched_pairs(schedule: &Schedule) -> Vec<(Action, Action)> {
    let mut sides: HashMap<(usize, usize, bool, bool), Vec<Action>> = HashMap::new();
    for a in schedule.iter() {
        if let Some(p) = a.pair {
            let key = (a.stage.index(), p.peer.index(), p.head > 0, p.backward);
            sides.entry(key).or_default().push(*a);
        }
    }
    let mut pairs = Vec::new();
    for (&(r, q, heavy, backward), mine) in &sides {
        if let (true, Some(theirs)) = (heavy, sides.get(&(q, r, false, backward))) {
            pairs.extend(mine.iter().copied().zip(theirs.iter().copied()));
        }
    }
    pairs
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
    use super::*;
    use crate::{generate, lower, ScheduleConfig, ScheduleKind};
    use ExchangePolicy::*;

    fn slimpipe(p: u32, n: u32) -> Schedule {
        let config = ScheduleConfig::new(ScheduleKind::SlimPipe, p, 4).with_slices(n);
        lower(&generate(&config).unwrap()).unwrap()
    }

    /// On a timeline the caller simulated, the pass places the same pairs; a schedule with
    /// exchanges already is refused, naming the first.
    #[test]
    fn a_given_timeline_places_the_same_pairs() {
        let s = slimpipe(4, 8);
        let bounds: Vec<u64> = (0..=8).map(|j| 16 * j).collect();
        let t = AttentionCosts::new(&bounds, 0.5);
        let (cost, column) = (|a: &Action| t.cost(a), |a: &Action| t.column(a));
        let timeline = simulate_timeline(&s, cost, &P2p::free()).unwrap();
        for policy in [Level, Shorten] {
            let x = insert_exchange(&s, cost, column, &bounds, policy).unwrap();
            let on = insert_exchange_on(&s, &timeline, cost, column, &bounds, policy).unwrap();
            assert_eq!(x, on);
            assert!(
                x.iter().any(|a| a.pair.is_some()),
                "{policy:?} placed no pair"
            );
        }
        let x = insert_exchange(&s, cost, column, &bounds, Level).unwrap();
        let e = insert_exchange_on(&x, &timeline, cost, column, &bounds, Level).unwrap_err();
        assert!(e.to_string().contains("is an exchange already"), "{e}");
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

    /// Every pair attends to as many keys to within one token's column: the heavy side less
    /// what it hands keeps at least the light side's attention plus it, and one token more
    /// would turn them round; each step's pairs are the paper's (the k-th steady computes of
    /// every stage); the bubble drops.
    #[test]
    fn partners_attend_equally_to_one_column() {
        let (p, n, s) = (4u32, 16u32, 64u64);
        let bounds: Vec<u64> = (0..=u64::from(n)).map(|j| s * j).collect();
        let t = AttentionCosts::new(&bounds, 0.6);
        let plain = slimpipe(p, n);
        let x = insert_exchange(&plain, |a| t.cost(a), |a| t.column(a), &bounds, Level).unwrap();
        let prefix = Prefixes::new(&bounds, n).unwrap();
        let attention = |a: &Action| t.column(a) * prefix.attended(a);
        let pairs = matched_pairs(&x);
        for (h, l) in &pairs {
            let head = u64::from(h.pair.unwrap().head);
            let moved = head as f64 * t.column(h);
            let (heavy, light) = (attention(h) - moved, attention(l) + moved);
            let what = format!("{} {}: {heavy} vs {light}", x.text(h), x.text(l));
            // A heavy side that hands its whole prefix may stay heavier.
            let whole = head == bounds[h.slice.index()];
            assert!(heavy >= light - 1e-12, "{what}");
            assert!(
                whole || heavy - light <= 2.0 * t.column(h) * (1.0 + 1e-9),
                "{what}"
            );
            assert_eq!(h.op, l.op, "{what}: a step pairs computes of one kind");
        }
        assert!(pairs.len() > 10, "{} pairs", pairs.len());
        let priced = exchange_costs(&x, |a| t.cost(a), |a| t.column(a));
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

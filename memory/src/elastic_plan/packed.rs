//! The fixed-shape baselines elastic planning is compared with: first-fit-decreasing packing
//! into context-length buffers, one buffer per micro-batch, cut into `n` Seq1F1B slices (see the
//! parent module).

use seqpipe_schedule::seq1f1b;
use seqpipe_slicing::balanced;

use super::{schedule_error, DocPiece, MethodResult, PlanSetup};
use crate::error::Result;

/// First-fit-decreasing packing of `lengths` into buffers of `capacity` tokens; each buffer
/// lists its documents (lengths) in placement order.
pub fn pack(lengths: &[u64], capacity: u64) -> Vec<Vec<u64>> {
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut bins: Vec<(u64, Vec<u64>)> = Vec::new();
    for len in sorted {
        match bins.iter_mut().find(|b| b.0 + len <= capacity) {
            Some(b) => {
                b.0 += len;
                b.1.push(len);
            }
            None => bins.push((len, vec![len])),
        }
    }
    bins.into_iter().map(|b| b.1).collect()
}

/// The document pieces of a packed buffer that fall in `[from, to)` of the buffer.
fn buffer_slice(docs: &[u64], from: u64, to: u64) -> Vec<DocPiece> {
    let mut out = Vec::new();
    let mut at = 0;
    for &len in docs {
        let (s, e) = (from.max(at), to.min(at + len));
        if s < e {
            out.push((len, s - at, e - at));
        }
        at += len;
    }
    out
}

/// Packing to the context length with `n` Seq1F1B slices per buffer (`n = 1`: 1F1B); the best
/// feasible `n` of `slice_candidates`. `Ok(None)` when no candidate fits memory.
pub fn plan_packed(
    lengths: &[u64],
    setup: &PlanSetup,
    slice_candidates: &[usize],
) -> Result<Option<MethodResult>> {
    let cost = setup.cost()?;
    let bins = pack(lengths, setup.context);
    let mut best: Option<MethodResult> = None;
    for &n in slice_candidates
        .iter()
        .filter(|&&n| n >= 1 && n as u64 <= setup.context)
    {
        let plan = balanced(setup.context, n, 1, &cost)?;
        let units: Vec<Vec<Vec<DocPiece>>> = bins
            .iter()
            .map(|docs| {
                plan.slices
                    .iter()
                    .map(|s| buffer_slice(docs, s.start, s.end))
                    .collect()
            })
            .collect();
        let schedule = seq1f1b(setup.stages as u32, bins.len() as u32, n as u32)
            .map_err(|e| schedule_error(e.to_string()))?;
        let counts = vec![n as u32; bins.len()];
        let Some((run, c, _)) = setup.run_uniform(&schedule, &counts, &units)? else {
            continue;
        };
        let result = setup.result(n, vec![run], vec![bins.len() * n], Some(c))?;
        if best
            .as_ref()
            .is_none_or(|b| result.iteration_time < b.iteration_time)
        {
            best = Some(result);
        }
    }
    Ok(best)
}

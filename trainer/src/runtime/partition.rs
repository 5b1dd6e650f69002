//! Which layers each virtual stage runs: even by default, explicit counts allowed, checked to
//! cover every layer exactly once.

use std::ops::Range;

/// Layer ranges of virtual stages `0..counts.len()`, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `ranges[k]`: layers of virtual stage `k`.
    pub ranges: Vec<Range<usize>>,
}

impl Partition {
    /// `layers` split as evenly as possible over `virtual_stages`; the extra layers of an uneven
    /// split go to the middle stages, because the first holds the embedding and the last the head.
    pub fn even(layers: usize, virtual_stages: usize) -> Result<Self, String> {
        if virtual_stages == 0 || layers < virtual_stages {
            return Err(format!(
                "cannot split {layers} layers over {virtual_stages} virtual stages (stages × chunks): \
                 every virtual stage needs at least one layer, so use at most {layers} stages × chunks"
            ));
        }
        let (base, extra) = (layers / virtual_stages, layers % virtual_stages);
        // Rank virtual stages by distance from the middle; the `extra` closest get one more layer.
        let mut order: Vec<usize> = (0..virtual_stages).collect();
        let mid = (virtual_stages as f64 - 1.0) / 2.0;
        order.sort_by(|a, b| ((*a as f64 - mid).abs()).total_cmp(&(*b as f64 - mid).abs()));
        let mut counts = vec![base; virtual_stages];
        for &k in order.iter().take(extra) {
            counts[k] += 1;
        }
        Self::from_counts(layers, &counts)
    }

    /// Explicit per-virtual-stage layer counts; they must sum to `layers`.
    pub fn from_counts(layers: usize, counts: &[usize]) -> Result<Self, String> {
        let total: usize = counts.iter().sum();
        if total != layers {
            return Err(format!(
                "layer counts {counts:?} cover {total} layers but the model has {layers}: the counts must sum to {layers}"
            ));
        }
        if let Some(k) = counts.iter().position(|&c| c == 0) {
            return Err(format!("layer counts {counts:?}: virtual stage {k} has no layer; every virtual stage needs at least one"));
        }
        let mut start = 0;
        let ranges = counts
            .iter()
            .map(|&c| {
                start += c;
                start - c..start
            })
            .collect();
        Ok(Partition { ranges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_covers_every_layer_once_with_extras_in_the_middle() {
        let p = Partition::even(10, 4).unwrap();
        assert_eq!(p.ranges, vec![0..2, 2..5, 5..8, 8..10]);
        assert_eq!(Partition::even(8, 8).unwrap().ranges.len(), 8);
    }

    #[test]
    fn bad_partitions_name_the_problem() {
        assert!(Partition::even(3, 4)
            .unwrap_err()
            .contains("at most 3 stages × chunks"));
        assert!(Partition::from_counts(8, &[4, 3])
            .unwrap_err()
            .contains("cover 7 layers but the model has 8"));
        assert!(Partition::from_counts(8, &[8, 0])
            .unwrap_err()
            .contains("virtual stage 1 has no layer"));
    }
}

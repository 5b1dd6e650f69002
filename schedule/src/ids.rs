//! Newtype ids of the schedule IR and the placement of virtual stages on physical stages.
//!
//! Placement follows Megatron's interleaved convention: with `p` physical stages, stage `r`
//! running model chunk `c` holds virtual stage `c·p + r`. Data therefore flows
//! `0 → 1 → … → p−1 → 0 (next chunk) → …`, and the virtual stage before/after any virtual stage is
//! on the previous/next physical stage (modulo `p`).
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{next_virtual_stage, placement, virtual_stage};
//! use seqpipe_schedule::{Chunk, Stage, VirtualStage};
//! // p = 4: stage 1 running chunk 2 holds virtual stage 2·4 + 1 = 9, and back again.
//! assert_eq!(virtual_stage(Stage(1), Chunk(2), 4), VirtualStage(9));
//! assert_eq!(placement(VirtualStage(9), 4), (Stage(1), Chunk(2)));
//! assert_eq!(next_virtual_stage(VirtualStage(6), 8), Some(VirtualStage(7)));
//! assert_eq!(next_virtual_stage(VirtualStage(7), 8), None); // the last of p·v = 8
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u32);

        impl $name {
            /// The id as an index into a `Vec`.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl From<u32> for $name {
            fn from(v: u32) -> Self {
                $name(v)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// A physical pipeline stage (a rank of the pipeline group), `0..p`.
    Stage
);
id!(
    /// A micro-batch (one sequence, or one packed group of sequences), `0..m`.
    MicroBatch
);
id!(
    /// A slice of a micro-batch's sequence, `0..n`, in token order.
    Slice
);
id!(
    /// A model chunk held by a stage, `0..v` (interleaved schedules hold several).
    Chunk
);
id!(
    /// A virtual stage `c·p + r`, `0..p·v`: the position of a model chunk in the forward pass.
    VirtualStage
);

/// The virtual stage of `chunk` on `stage` with `p` physical stages: `chunk·p + stage`.
pub fn virtual_stage(stage: Stage, chunk: Chunk, p: u32) -> VirtualStage {
    VirtualStage(chunk.0 * p + stage.0)
}

/// Where a virtual stage lives: `(stage, chunk) = (k mod p, k div p)`.
///
/// `p` must be at least 1 (every [`crate::ScheduleConfig`] checks it).
pub fn placement(vstage: VirtualStage, p: u32) -> (Stage, Chunk) {
    let p = p.max(1);
    (Stage(vstage.0 % p), Chunk(vstage.0 / p))
}

/// The virtual stage that feeds this one in the forward pass, if any.
pub fn previous_virtual_stage(vstage: VirtualStage) -> Option<VirtualStage> {
    vstage.0.checked_sub(1).map(VirtualStage)
}

/// The virtual stage this one feeds in the forward pass, if any (`virtual_stages` = `p·v`).
pub fn next_virtual_stage(vstage: VirtualStage, virtual_stages: u32) -> Option<VirtualStage> {
    (vstage.0 + 1 < virtual_stages).then_some(VirtualStage(vstage.0 + 1))
}

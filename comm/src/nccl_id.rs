//! The NCCL unique id as plain bytes, and how it travels from rank 0 during rendezvous.
//!
//! Kept outside the `nccl` feature so its checks are tested on every build: rank 0 creates the id,
//! broadcasts it over the TCP control plane, and every other rank rebuilds it from the message.

use crate::collective::Group;
use crate::error::{CommError, Result};
use crate::message::Message;
use crate::transport::Transport;

/// Size of `ncclUniqueId` (NCCL_UNIQUE_ID_BYTES).
pub const UNIQUE_ID_BYTES: usize = 128;

/// An NCCL unique id's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UniqueIdBytes(pub [u8; UNIQUE_ID_BYTES]);

impl UniqueIdBytes {
    /// As a `u8[128]` message.
    pub fn to_message(&self) -> Message {
        Message::vector(crate::message::Data::U8(self.0.to_vec()))
    }

    /// Back from a message sent by `peer`; anything but exactly 128 bytes is a protocol error.
    pub fn from_message(peer: usize, msg: Message) -> Result<UniqueIdBytes> {
        let described = msg.describe();
        let bytes = msg.into_u8().ok().filter(|b| b.len() == UNIQUE_ID_BYTES);
        let bytes = bytes.ok_or_else(|| CommError::Protocol {
            peer,
            detail: format!(
                "expected the NCCL unique id as u8[{UNIQUE_ID_BYTES}], got {described}"
            ),
        })?;
        let mut id = [0u8; UNIQUE_ID_BYTES];
        id.copy_from_slice(&bytes);
        Ok(UniqueIdBytes(id))
    }

    /// Rank 0 passes `Some(id)` and every other rank `None`; all get rank 0's id back.
    /// Runs as a broadcast over the world, so a missing rank fails with its name after the timeout.
    pub fn share<T: Transport + ?Sized>(
        control: &mut T,
        id: Option<UniqueIdBytes>,
    ) -> Result<UniqueIdBytes> {
        let mut world = Group::world(control.world_size())?;
        UniqueIdBytes::share_in(control, &mut world, 0, id)
    }

    /// Like [`UniqueIdBytes::share`] within `group`, from `root` (which passes `Some(id)`): how the
    /// members of a smaller communicator (two ranks of one NCCL lane) get its id.
    pub fn share_in<T: Transport + ?Sized>(
        control: &mut T,
        group: &mut Group,
        root: usize,
        id: Option<UniqueIdBytes>,
    ) -> Result<UniqueIdBytes> {
        let msg = control.broadcast(group, root, id.map(|id| id.to_message()))?;
        UniqueIdBytes::from_message(root, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommOptions, LocalTransport};

    #[test]
    fn ids_round_trip_and_wrong_sizes_are_rejected() {
        let mut raw = [0u8; UNIQUE_ID_BYTES];
        raw.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i * 7) as u8);
        let id = UniqueIdBytes(raw);
        assert_eq!(UniqueIdBytes::from_message(0, id.to_message()).unwrap(), id);
        let short = Message::from_u8(vec![3], vec![1, 2, 3]).unwrap();
        let err = UniqueIdBytes::from_message(0, short).unwrap_err();
        assert!(err.to_string().contains("got u8[3]"), "{err}");
    }

    #[test]
    fn rank_zero_id_reaches_every_rank() {
        let ranks = LocalTransport::mesh(3, CommOptions::default()).unwrap();
        let id = UniqueIdBytes([42; UNIQUE_ID_BYTES]);
        let got: Vec<UniqueIdBytes> = std::thread::scope(|s| {
            let hs: Vec<_> = ranks
                .into_iter()
                .map(|mut t| {
                    s.spawn(move || {
                        let mine = (t.rank() == 0).then_some(id);
                        UniqueIdBytes::share(&mut t, mine).unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got, vec![id; 3]);
    }

    #[test]
    fn a_pair_shares_its_root_id_and_others_stay_out() {
        let ranks = LocalTransport::mesh(3, CommOptions::default()).unwrap();
        let id = UniqueIdBytes([7; UNIQUE_ID_BYTES]);
        let got: Vec<Option<UniqueIdBytes>> = std::thread::scope(|s| {
            let hs: Vec<_> = ranks
                .into_iter()
                .map(|mut t| {
                    s.spawn(move || {
                        let mut pair = Group::new(vec![2, 0]).unwrap();
                        let mine = (t.rank() == 2).then_some(id);
                        (t.rank() != 1)
                            .then(|| UniqueIdBytes::share_in(&mut t, &mut pair, 2, mine).unwrap())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got, vec![Some(id), None, Some(id)]);
    }
}

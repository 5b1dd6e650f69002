//! Wire format of one message on a TCP link.
//!
//! `[magic "SQPC"][tag u64][dtype u8][ndim u8][0u8; 2][dims: ndim × u64][payload bytes u64]`
//! then the payload. Header integers are little-endian; the payload is the buffer's native bytes
//! (every platform seqpipe targets is little-endian), written from and read into the typed buffer
//! directly, so a message costs no copy beyond the socket's own.

use std::io::{self, Read, Write};

use crate::message::{numel, DType, Message};
use crate::tag::Tag;

const MAGIC: [u8; 4] = *b"SQPC";
/// More dimensions than any tensor seqpipe moves; a larger count means a corrupt stream.
const MAX_DIMS: usize = 16;
/// Largest payload accepted (1 TiB): a guard against allocating for a corrupt length.
const MAX_PAYLOAD: u64 = 1 << 40;

/// Writes one frame.
pub(crate) fn write_frame(w: &mut impl Write, tag: Tag, msg: &Message) -> io::Result<()> {
    let shape = msg.shape();
    let ndim = u8::try_from(shape.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_DIMS)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} dimensions; at most {MAX_DIMS} travel", shape.len()),
            )
        })?;
    let mut head = Vec::with_capacity(24 + 8 * shape.len());
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&tag.raw().to_le_bytes());
    head.extend_from_slice(&[msg.dtype().code(), ndim, 0, 0]);
    for &d in shape {
        head.extend_from_slice(&(d as u64).to_le_bytes());
    }
    head.extend_from_slice(&(msg.size_in_bytes() as u64).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(msg.bytes())?;
    w.flush()
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
/// Errors are described in words for the receiving rank's error message.
pub(crate) fn read_frame(r: &mut impl Read) -> Result<Option<(Tag, Message)>, String> {
    let mut fixed = [0u8; 16];
    match read_full(r, &mut fixed) {
        Ok(0) => return Ok(None),
        Ok(16) => {}
        Ok(n) => {
            return Err(format!(
                "connection closed after {n} bytes of a frame header"
            ))
        }
        Err(e) => return Err(format!("read failed: {e}")),
    }
    if fixed[..4] != MAGIC {
        return Err(format!("bad frame magic {:?}", &fixed[..4]));
    }
    let tag = Tag::from_raw(u64_at(&fixed, 4));
    let dtype = DType::from_code(fixed[12]).ok_or(format!("unknown dtype code {}", fixed[12]))?;
    let ndim = usize::from(fixed[13]);
    if ndim > MAX_DIMS {
        return Err(format!(
            "{ndim} dimensions in a frame; at most {MAX_DIMS} are valid"
        ));
    }
    let mut rest = vec![0u8; 8 * ndim + 8];
    r.read_exact(&mut rest)
        .map_err(|e| format!("connection broke inside a frame header for {tag}: {e}"))?;
    let shape: Vec<usize> = (0..ndim)
        .map(|i| usize::try_from(u64_at(&rest, 8 * i)).unwrap_or(usize::MAX))
        .collect();
    let nbytes = u64_at(&rest, 8 * ndim);
    let expected = numel(&shape).and_then(|n| n.checked_mul(dtype.size_in_bytes()));
    if expected.map(|e| e as u64) != Some(nbytes) || nbytes > MAX_PAYLOAD {
        return Err(format!(
            "frame for {tag} says {nbytes} payload bytes for {dtype}{shape:?}"
        ));
    }
    let mut msg = Message::zeros(dtype, shape).map_err(|e| e.to_string())?;
    r.read_exact(msg.bytes_mut()).map_err(|e| {
        format!("connection broke inside the payload of {tag} ({nbytes} bytes): {e}")
    })?;
    Ok(Some((tag, msg)))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::TagKind;

    #[test]
    fn frames_round_trip_back_to_back() {
        let a = Message::from_f32(vec![2, 3], (0..6).map(|i| i as f32 * 0.5).collect()).unwrap();
        let b = Message::from_u8(vec![0], vec![]).unwrap();
        let c = Message::from_i64(vec![], vec![-7]).unwrap();
        let tags: Vec<Tag> = (0..3)
            .map(|i| Tag::new(TagKind::Act, i, 1, 2).unwrap())
            .collect();
        let mut wire = Vec::new();
        for (t, m) in tags.iter().zip([&a, &b, &c]) {
            write_frame(&mut wire, *t, m).unwrap();
        }
        let mut r = wire.as_slice();
        for (t, m) in tags.iter().zip([a, b, c]) {
            assert_eq!(read_frame(&mut r).unwrap(), Some((*t, m)));
        }
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn truncated_or_corrupt_frames_are_errors() {
        let m = Message::from_f64(vec![4], vec![1.0; 4]).unwrap();
        let mut wire = Vec::new();
        write_frame(&mut wire, Tag::user(1).unwrap(), &m).unwrap();
        let cut = &wire[..wire.len() - 3];
        let err = read_frame(&mut &cut[..]).unwrap_err();
        assert!(err.contains("inside the payload of user(1)"), "{err}");
        let err = read_frame(&mut &wire[..10]).unwrap_err();
        assert!(err.contains("after 10 bytes"), "{err}");
        let mut bad = wire.clone();
        bad[0] = b'X';
        assert!(read_frame(&mut bad.as_slice())
            .unwrap_err()
            .contains("magic"));
        let mut lying = wire.clone();
        let len_at = 16 + 8; // one dimension, then the byte count
        lying[len_at] = 31;
        assert!(read_frame(&mut lying.as_slice())
            .unwrap_err()
            .contains("payload bytes"));
    }
}

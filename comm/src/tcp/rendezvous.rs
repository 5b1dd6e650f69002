//! Rendezvous: every rank finds every other and a full mesh of TCP connections is made.
//!
//! Rank 0 listens on `MASTER_ADDR:MASTER_PORT`. Every rank binds a data listener on an ephemeral
//! port first (so later connects queue in its backlog even before it accepts), then ranks `1..`
//! tell rank 0 their port; rank 0 answers everyone with the table of addresses. Rank `i` then
//! connects to every lower rank and accepts every higher one. Every wait has the same deadline.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::TcpConfig;
use crate::error::{CommError, Result};

const JOIN_MAGIC: [u8; 4] = *b"SQPJ";
const TABLE_MAGIC: [u8; 4] = *b"SQPT";
const MESH_MAGIC: [u8; 4] = *b"SQPM";

/// Connects this rank to all others; `streams[j]` is the connection to rank `j` (`None` for self).
pub(crate) fn establish(cfg: &TcpConfig) -> Result<Vec<Option<TcpStream>>> {
    let deadline = Instant::now() + cfg.options.timeout;
    let fail = |detail: String| CommError::Rendezvous {
        rank: cfg.rank,
        detail,
    };
    let master = (cfg.master_addr.as_str(), cfg.master_port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            fail(format!(
                "cannot resolve MASTER_ADDR {:?} port {}",
                cfg.master_addr, cfg.master_port
            ))
        })?;
    let table = if cfg.rank == 0 {
        let listener = TcpListener::bind(master)
            .map_err(|e| fail(format!("cannot listen on {master} as the master: {e}")))?;
        let data = bind_data(master.ip()).map_err(&fail)?;
        let table = serve_table(cfg, &listener, port_of(&data)?, deadline).map_err(&fail)?;
        (table, data)
    } else {
        join(cfg, master, deadline).map_err(&fail)?
    };
    mesh(cfg, &table.0, &table.1, deadline).map_err(fail)
}

fn bind_data(ip: IpAddr) -> std::result::Result<TcpListener, String> {
    TcpListener::bind((ip, 0)).map_err(|e| format!("cannot open a data listener on {ip}: {e}"))
}

fn port_of(l: &TcpListener) -> Result<u16> {
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| CommError::Rendezvous {
            rank: 0,
            detail: format!("data listener has no address: {e}"),
        })
}

/// Rank 0: collects every rank's data address, then sends the table to all.
fn serve_table(
    cfg: &TcpConfig,
    listener: &TcpListener,
    my_port: u16,
    deadline: Instant,
) -> std::result::Result<Vec<SocketAddr>, String> {
    let master_ip = listener.local_addr().map_err(|e| e.to_string())?.ip();
    let mut table: Vec<Option<SocketAddr>> = vec![None; cfg.world_size];
    table[0] = Some(SocketAddr::new(master_ip, my_port));
    let mut joined = Vec::new();
    while joined.len() + 1 < cfg.world_size {
        let missing = || -> Vec<usize> {
            (0..cfg.world_size)
                .filter(|&r| table[r].is_none())
                .collect()
        };
        let mut s = accept_until(listener, deadline)
            .map_err(|e| format!("waiting for ranks {:?} to join: {e}", missing()))?;
        set_handshake_timeout(&s, deadline)?;
        let mut head = [0u8; 14];
        s.read_exact(&mut head)
            .map_err(|e| format!("reading a join request: {e}"))?;
        let (rank, world, port) = parse_join(&head)?;
        if world != cfg.world_size {
            return Err(format!(
                "rank {rank} says WORLD_SIZE={world}, rank 0 has {}",
                cfg.world_size
            ));
        }
        if rank == 0 || rank >= world || table[rank].is_some() {
            return Err(format!(
                "a join request claims rank {rank}: valid ranks still missing are {:?}",
                missing()
            ));
        }
        let ip = s.peer_addr().map_err(|e| e.to_string())?.ip();
        table[rank] = Some(SocketAddr::new(ip, port));
        joined.push(s);
    }
    let table: Vec<SocketAddr> = table.into_iter().flatten().collect();
    let encoded = encode_table(&table);
    for s in &mut joined {
        s.write_all(&encoded)
            .map_err(|e| format!("sending the address table: {e}"))?;
    }
    Ok(table)
}

/// Ranks `1..`: registers with rank 0 and waits for the table.
fn join(
    cfg: &TcpConfig,
    master: SocketAddr,
    deadline: Instant,
) -> std::result::Result<(Vec<SocketAddr>, TcpListener), String> {
    let mut s = connect_until(master, deadline)
        .map_err(|e| format!("cannot reach the master at {master}: {e}"))?;
    // The address peers reach this rank at is the one it reaches the master from.
    let my_ip = s.local_addr().map_err(|e| e.to_string())?.ip();
    let data = bind_data(my_ip)?;
    let port = data.local_addr().map_err(|e| e.to_string())?.port();
    let mut head = Vec::with_capacity(14);
    head.extend_from_slice(&JOIN_MAGIC);
    head.extend_from_slice(&(cfg.rank as u32).to_le_bytes());
    head.extend_from_slice(&(cfg.world_size as u32).to_le_bytes());
    head.extend_from_slice(&port.to_le_bytes());
    s.write_all(&head)
        .map_err(|e| format!("sending the join request: {e}"))?;
    set_handshake_timeout(&s, deadline)?;
    let table = read_table(&mut s, cfg.world_size)
        .map_err(|e| format!("waiting for the address table from the master at {master}: {e}"))?;
    Ok((table, data))
}

/// Connects to lower ranks, accepts higher ones.
fn mesh(
    cfg: &TcpConfig,
    table: &[SocketAddr],
    data: &TcpListener,
    deadline: Instant,
) -> std::result::Result<Vec<Option<TcpStream>>, String> {
    let mut streams: Vec<Option<TcpStream>> = (0..cfg.world_size).map(|_| None).collect();
    for (peer, &addr) in table.iter().enumerate().take(cfg.rank) {
        let mut s = connect_until(addr, deadline)
            .map_err(|e| format!("cannot reach rank {peer} at {addr}: {e}"))?;
        let mut hello = MESH_MAGIC.to_vec();
        hello.extend_from_slice(&(cfg.rank as u32).to_le_bytes());
        s.write_all(&hello)
            .map_err(|e| format!("greeting rank {peer}: {e}"))?;
        streams[peer] = Some(s);
    }
    for _ in cfg.rank + 1..cfg.world_size {
        let missing: Vec<usize> = (cfg.rank + 1..cfg.world_size)
            .filter(|&r| streams[r].is_none())
            .collect();
        let mut s = accept_until(data, deadline)
            .map_err(|e| format!("waiting for ranks {missing:?} to connect: {e}"))?;
        set_handshake_timeout(&s, deadline)?;
        let mut hello = [0u8; 8];
        s.read_exact(&mut hello)
            .map_err(|e| format!("reading a peer greeting: {e}"))?;
        let peer = u32_at(&hello, 4) as usize;
        if hello[..4] != MESH_MAGIC || !missing.contains(&peer) {
            return Err(format!(
                "unexpected greeting from rank {peer}; expected one of {missing:?}"
            ));
        }
        streams[peer] = Some(s);
    }
    Ok(streams)
}

fn parse_join(head: &[u8; 14]) -> std::result::Result<(usize, usize, u16), String> {
    if head[..4] != JOIN_MAGIC {
        return Err("a connection to the master port is not a seqpipe join request".into());
    }
    let port = u16::from_le_bytes([head[12], head[13]]);
    Ok((u32_at(head, 4) as usize, u32_at(head, 8) as usize, port))
}

fn encode_table(table: &[SocketAddr]) -> Vec<u8> {
    let mut out = TABLE_MAGIC.to_vec();
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    for a in table {
        let ip = a.ip().to_string();
        out.push(ip.len() as u8); // An IP address string is at most 45 bytes.
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(&a.port().to_le_bytes());
    }
    out
}

fn read_table(r: &mut impl Read, world: usize) -> std::result::Result<Vec<SocketAddr>, String> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).map_err(|e| e.to_string())?;
    if head[..4] != TABLE_MAGIC || u32_at(&head, 4) as usize != world {
        return Err(format!("malformed table (expected {world} entries)"));
    }
    (0..world)
        .map(|_| {
            let mut len = [0u8; 1];
            r.read_exact(&mut len).map_err(|e| e.to_string())?;
            let mut ip = vec![0u8; usize::from(len[0]) + 2];
            r.read_exact(&mut ip).map_err(|e| e.to_string())?;
            let (ip, port) = ip.split_at(usize::from(len[0]));
            let ip: IpAddr = std::str::from_utf8(ip)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("malformed address in table")?;
            Ok(SocketAddr::new(ip, u16::from_le_bytes([port[0], port[1]])))
        })
        .collect()
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn remaining(deadline: Instant) -> std::result::Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "timed out".to_string())
}

fn set_handshake_timeout(s: &TcpStream, deadline: Instant) -> std::result::Result<(), String> {
    s.set_read_timeout(Some(remaining(deadline)?))
        .map_err(|e| e.to_string())
}

/// Accepts one connection before the deadline (std has no accept timeout, so poll).
fn accept_until(l: &TcpListener, deadline: Instant) -> std::result::Result<TcpStream, String> {
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                remaining(deadline)?;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Connects before the deadline, retrying while the other side is not listening yet.
fn connect_until(addr: SocketAddr, deadline: Instant) -> std::result::Result<TcpStream, String> {
    loop {
        let left = remaining(deadline)?;
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))) {
            Ok(s) => return Ok(s),
            Err(e) if remaining(deadline).is_err() => return Err(format!("timed out ({e})")),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_tables_round_trip() {
        let table: Vec<SocketAddr> = vec![
            "127.0.0.1:4000".parse().unwrap(),
            "[::1]:5000".parse().unwrap(),
            "10.1.2.3:65535".parse().unwrap(),
        ];
        let wire = encode_table(&table);
        assert_eq!(read_table(&mut wire.as_slice(), 3).unwrap(), table);
        assert!(read_table(&mut wire.as_slice(), 2).is_err());
    }

    #[test]
    fn join_requests_parse_and_reject_strangers() {
        let mut head = [0u8; 14];
        head[..4].copy_from_slice(&JOIN_MAGIC);
        head[4] = 3;
        head[8] = 4;
        head[12..].copy_from_slice(&9000u16.to_le_bytes());
        assert_eq!(parse_join(&head).unwrap(), (3, 4, 9000));
        head[0] = b'G';
        assert!(parse_join(&head).is_err());
    }
}

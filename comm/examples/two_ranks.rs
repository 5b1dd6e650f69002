//! Two ranks exchange an activation and all-reduce a gradient, first as threads over the local
//! transport, then as threads over real TCP sockets on loopback: the same code for both.
//!
//! `cargo run -p seqpipe-comm --example two_ranks`

use std::thread;

use seqpipe_comm::{
    CommOptions, Group, LocalTransport, Message, Tag, TagKind, TcpConfig, TcpTransport, Transport,
};

/// One rank's part: rank 0 sends an activation to rank 1; both sum a gradient.
fn rank_main(t: &mut dyn Transport) -> seqpipe_comm::Result<Vec<f32>> {
    let tag = Tag::new(TagKind::Act, 0, 0, 0)?;
    if t.rank() == 0 {
        t.send(1, tag, Message::from_f32(vec![2], vec![1.5, -2.0])?)?;
    } else {
        let m = t.recv(0, tag)?;
        println!("rank 1 received {:?} {:?}", m.shape(), m.as_f32()?);
    }
    let mut world = Group::world(t.world_size())?;
    let grad = Message::from_f32(vec![2], vec![t.rank() as f32, 1.0])?;
    t.all_reduce_sum(&mut world, grad)?.into_f32()
}

fn run_all(ranks: Vec<Box<dyn Transport + Send>>) -> Vec<Vec<f32>> {
    let handles: Vec<_> = ranks
        .into_iter()
        .map(|mut t| thread::spawn(move || rank_main(t.as_mut()).expect("rank failed")))
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank panicked"))
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = LocalTransport::mesh(2, CommOptions::default())?
        .into_iter()
        .map(|t| Box::new(t) as Box<dyn Transport + Send>)
        .collect();
    println!("local: sums {:?}", run_all(local));

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let tcp: Vec<_> = (0..2)
        .map(|rank| {
            thread::spawn(move || {
                let cfg = TcpConfig::new(rank, 2, "127.0.0.1", port, CommOptions::default())?;
                TcpTransport::connect(&cfg)
            })
        })
        .collect();
    let tcp = tcp
        .into_iter()
        .map(|h| Ok(Box::new(h.join().expect("connect panicked")?) as Box<dyn Transport + Send>))
        .collect::<seqpipe_comm::Result<Vec<_>>>()?;
    println!("tcp: sums {:?}", run_all(tcp));
    Ok(())
}

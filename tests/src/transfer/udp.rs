//! UDP datagrams of given sizes to a mirror (`portmap-testserver
//! --udp-mirror`), content checked both ways.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Result, bail};

use crate::netns::Netns;

/// The largest UDP payload a packet of `mtu` bytes carries.
pub fn largest_payload(mtu: u32, v6: bool) -> usize {
    let headers = if v6 { 40 + 8 } else { 20 + 8 };
    mtu as usize - headers
}

/// Sends `payload` from a fresh socket in `ns` to `to` and waits for the
/// mirror's answer; fails unless it is `payload` complemented, every byte.
/// Returns the address the answer came from. A few tries: the first
/// datagram may wait on neighbour resolution.
pub fn mirror(ns: &Netns, to: SocketAddr, payload: &[u8]) -> Result<SocketAddr> {
    let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    let socket = ns.run(move || UdpSocket::bind(any))?;
    socket.set_read_timeout(Some(Duration::from_millis(700)))?;
    let expected: Vec<u8> = payload.iter().map(|b| !b).collect();
    let mut buf = vec![0u8; 65536];
    let mut wrong = None;
    for _ in 0..4 {
        let sent = socket.send_to(payload, to)?;
        if sent != payload.len() {
            bail!("sent {sent} of {} bytes to {to}", payload.len());
        }
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if buf[..n] == expected[..] => return Ok(from),
            Ok((n, from)) => {
                let differ = buf[..n]
                    .iter()
                    .zip(&expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(n.min(expected.len()));
                wrong = Some(format!(
                    "{n} bytes from {from}, first difference at byte {differ}"
                ));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => bail!("{} bytes to {to}: {e}", payload.len()),
        }
    }
    match wrong {
        Some(w) => bail!(
            "{} bytes to {to}: wrong answer ({w}; expected {} bytes complemented)",
            payload.len(),
            payload.len()
        ),
        None => bail!("{} bytes to {to}: no answer in 4 tries", payload.len()),
    }
}

//! A client for socket-level load balancing tests: a process of its own, so
//! a test can start it inside a cgroup (and a network namespace) where
//! portmap's socket programs apply, which a thread of the test cannot be.
//!
//! ```text
//! portmap-testclient tcp ADDR:PORT                    # one HTTP GET
//! portmap-testclient udp ADDR:PORT [PAYLOAD]          # sendto, then recvfrom
//! portmap-testclient udp-connected ADDR:PORT [PAYLOAD] # connect, send, recvfrom
//! ```
//!
//! Prints `answer: TEXT` (the HTTP body or the datagram), `peer: ADDR:PORT`
//! (what `getpeername` says, for `tcp` and `udp-connected`) and
//! `from: ADDR:PORT` (the source `recvfrom` says, for UDP), one per line, and
//! exits 0. On failure it prints `error: MESSAGE` and, if the system gave
//! one, `errno: N`, and exits 1; bad usage exits 2.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn usage() -> ExitCode {
    eprintln!("usage: portmap-testclient tcp|udp|udp-connected ADDR:PORT [PAYLOAD]");
    ExitCode::from(2)
}

fn tcp(to: SocketAddr) -> std::io::Result<Vec<(&'static str, String)>> {
    let mut stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let peer = stream.peer_addr()?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => body.trim_end().to_string(),
        _ => {
            return Err(std::io::Error::other(format!(
                "not an HTTP 200 response: {response:?}"
            )));
        }
    };
    Ok(vec![("answer", body), ("peer", peer.to_string())])
}

fn udp(
    to: SocketAddr,
    payload: &str,
    connected: bool,
) -> std::io::Result<Vec<(&'static str, String)>> {
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let socket = UdpSocket::bind(any)?;
    socket.set_read_timeout(Some(Duration::from_millis(700)))?;
    let mut lines = Vec::new();
    if connected {
        socket.connect(to)?;
        lines.push(("peer", socket.peer_addr()?.to_string()));
    }
    let mut buf = [0u8; 65536];
    // A few tries: the first datagram may wait on neighbour resolution.
    for _ in 0..4 {
        if connected {
            socket.send(payload.as_bytes())?;
        } else {
            socket.send_to(payload.as_bytes(), to)?;
        }
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                lines.push(("answer", String::from_utf8_lossy(&buf[..n]).into_owned()));
                lines.push(("from", from.to_string()));
                return Ok(lines);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no UDP answer from {to}"),
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(to)) = (args.first(), args.get(1)) else {
        return usage();
    };
    let Ok(to) = to.parse::<SocketAddr>() else {
        eprintln!("not an ADDR:PORT: {to}");
        return usage();
    };
    let payload = args.get(2).map_or("hello", String::as_str);
    let result = match mode.as_str() {
        "tcp" => tcp(to),
        "udp" => udp(to, payload, false),
        "udp-connected" => udp(to, payload, true),
        _ => return usage(),
    };
    match result {
        Ok(lines) => {
            for (key, value) in lines {
                println!("{key}: {value}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e}");
            if let Some(errno) = e.raw_os_error() {
                println!("errno: {errno}");
            }
            ExitCode::FAILURE
        }
    }
}

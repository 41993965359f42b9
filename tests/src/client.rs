//! Clients: sockets opened inside a namespace, as a process there would.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

pub const TIMEOUT: Duration = Duration::from_secs(3);

/// A TCP connection opened from `ns` (the socket stays in `ns`).
pub fn connect(ns: &Netns, to: SocketAddr) -> Result<TcpStream> {
    let stream = ns
        .run(move || TcpStream::connect_timeout(&to, TIMEOUT))
        .with_context(|| format!("connecting to {to} from {}", ns.name()))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// One HTTP GET from `ns`; returns the response body.
pub fn http_get(ns: &Netns, to: SocketAddr) -> Result<String> {
    let mut stream = connect(ns, to)?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading from {to}"))?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("malformed HTTP response from {to}: {response:?}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("HTTP error from {to}: {head}");
    }
    Ok(body.to_string())
}

/// A long-lived line-oriented connection to a test server.
pub struct LineConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineConn {
    pub fn open(ns: &Netns, to: SocketAddr) -> Result<Self> {
        let stream = connect(ns, to)?;
        Ok(LineConn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one line and returns the server's answer line.
    pub fn ask(&mut self, line: &str) -> Result<String> {
        writeln!(self.writer, "{line}")?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            bail!("connection closed");
        }
        Ok(answer.trim_end().to_string())
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.writer.local_addr()?)
    }
}

/// A UDP socket bound in `ns` on an ephemeral port of `to`'s family.
pub fn udp_socket(ns: &Netns, to: SocketAddr) -> Result<UdpSocket> {
    let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    let socket = ns.run(move || UdpSocket::bind(any))?;
    socket.set_read_timeout(Some(Duration::from_millis(700)))?;
    Ok(socket)
}

/// Sends `payload` to `to` and returns the answer and the address it came
/// from. Retries a few times: the first datagram may wait on neighbour
/// resolution.
pub fn udp_ask(socket: &UdpSocket, to: SocketAddr, payload: &str) -> Result<(String, SocketAddr)> {
    let mut buf = [0u8; 65536];
    for _ in 0..4 {
        socket.send_to(payload.as_bytes(), to)?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => return Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no UDP answer from {to}")
}

/// One UDP exchange from a fresh socket in `ns`.
pub fn udp_exchange(ns: &Netns, to: SocketAddr, payload: &str) -> Result<(String, SocketAddr)> {
    udp_ask(&udp_socket(ns, to)?, to, payload)
}

/// The server name in a test server's answer (its first word).
pub fn served_by(answer: &str) -> &str {
    answer.split_whitespace().next().unwrap_or("")
}

/// The `peer=` field of a test server's answer: who the backend saw.
pub fn peer_seen(answer: &str) -> Option<SocketAddr> {
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("peer="))
        .and_then(|p| p.parse().ok())
}

/// The `local=` field of a test server's answer: where the backend was reached.
pub fn local_seen(answer: &str) -> Option<SocketAddr> {
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("local="))
        .and_then(|p| p.parse().ok())
}

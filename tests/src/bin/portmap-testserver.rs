//! A backend for tests and the demo: answers on TCP and UDP with its name, its
//! own address and the peer's address, so a client can tell which backend
//! served it and from which address the backend saw it.
//!
//! ```text
//! portmap-testserver --name NAME [--tcp ADDR:PORT]... [--udp ADDR:PORT]...
//!                    [--udp-mirror ADDR:PORT]...
//! ```
//!
//! TCP: an HTTP request gets one `200 OK` whose body is
//! `NAME local=ADDR:PORT peer=ADDR:PORT\n`, then the connection closes. Any
//! other input is taken as lines; each line `L` is answered with
//! `NAME local=... peer=... L\n` on the same connection until the client
//! closes (long-lived connections).
//!
//! UDP: each datagram `D` is answered with `NAME local=... peer=... D`.
//!
//! UDP mirror: each datagram is answered with its bytes complemented (`!b`),
//! the same length: a datagram of the largest size the path takes gets an
//! answer as large, and a right answer shows the server got every byte.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    thread,
};

fn usage() -> ExitCode {
    eprintln!(
        "usage: portmap-testserver --name NAME [--tcp ADDR:PORT]... [--udp ADDR:PORT]... [--udp-mirror ADDR:PORT]..."
    );
    ExitCode::from(2)
}

fn serve_tcp(name: String, listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        let name = name.clone();
        thread::spawn(move || {
            let _ = answer_tcp(&name, stream);
        });
    }
}

fn answer_tcp(name: &str, stream: TcpStream) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;
    let id = format!("{name} local={local} peer={peer}");
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let is_http = ["GET ", "HEAD ", "POST ", "PUT "]
        .iter()
        .any(|m| line.starts_with(m));
    if is_http {
        // Read the rest of the request head.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
                break;
            }
        }
        let body = format!("{id}\n");
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return writer.flush();
    }
    loop {
        writeln!(writer, "{id} {}", line.trim_end())?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
    }
}

fn serve_udp(name: String, socket: UdpSocket) {
    let local = socket.local_addr().ok();
    let mut buf = [0u8; 65536];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            // Transient (e.g. an ICMP error queued on the socket); do not spin.
            thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        let mut reply = match local {
            Some(l) => format!("{name} local={l} peer={peer} ").into_bytes(),
            None => format!("{name} peer={peer} ").into_bytes(),
        };
        reply.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&reply, peer);
    }
}

fn serve_udp_mirror(socket: UdpSocket) {
    let mut buf = [0u8; 65536];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        for b in &mut buf[..n] {
            *b = !*b;
        }
        let _ = socket.send_to(&buf[..n], peer);
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut name = None;
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut mirror = Vec::new();
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage();
        };
        match flag.as_str() {
            "--name" => name = Some(value),
            "--tcp" | "--udp" | "--udp-mirror" => {
                let Ok(addr) = value.parse::<SocketAddr>() else {
                    eprintln!("not an ADDR:PORT: {value}");
                    return usage();
                };
                match flag.as_str() {
                    "--tcp" => tcp.push(addr),
                    "--udp" => udp.push(addr),
                    _ => mirror.push(addr),
                }
            }
            _ => return usage(),
        }
    }
    let Some(name) = name else {
        return usage();
    };
    if tcp.is_empty() && udp.is_empty() && mirror.is_empty() {
        return usage();
    }
    let mut threads = Vec::new();
    for addr in tcp {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("tcp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let name = name.clone();
        threads.push(thread::spawn(move || serve_tcp(name, listener)));
    }
    for addr in udp {
        let socket = match UdpSocket::bind(addr) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("udp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let name = name.clone();
        threads.push(thread::spawn(move || serve_udp(name, socket)));
    }
    for addr in mirror {
        let socket = match UdpSocket::bind(addr) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("udp mirror {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        threads.push(thread::spawn(move || serve_udp_mirror(socket)));
    }
    // Ready: the sockets are bound. Tests wait for this line.
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}

//! A tiny HTTP server that serves from the sockets herd hands it (systemd socket activation:
//! `LISTEN_FDS`, `LISTEN_PID`), says `READY=1` on `NOTIFY_SOCKET`, and answers with its pid.
//! No herd library, std only: this is what any program in any language sees.
//!
//! Paths: `/` → `pid=<pid> instance=<n>`; `/env/NAME` → that variable; `/sleep/MS` → answers
//! after MS milliseconds. HTTP/1.1 keep-alive is honoured.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::Duration;

fn main() {
    let fds: usize = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let listen_pid: Option<u32> = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|v| v.parse().ok());
    if fds == 0 || listen_pid != Some(std::process::id()) {
        eprintln!(
            "hello: no sockets for me (LISTEN_FDS={fds}, LISTEN_PID={listen_pid:?}, my pid {}); run me under herd",
            std::process::id()
        );
        std::process::exit(2);
    }
    let instance = std::env::var("HERD_INSTANCE").unwrap_or_default();
    for fd in 3..3 + fds as i32 {
        // SAFETY: socket activation hands us fds 3..3+LISTEN_FDS as listening sockets we own.
        let tcp = unsafe { TcpListener::from_raw_fd(fd) };
        if let Ok(addr) = tcp.local_addr() {
            println!(
                "hello: instance {instance} pid {} serving {addr}",
                std::process::id()
            );
            let inst = instance.clone();
            std::thread::spawn(move || {
                accept_loop(|| tcp.accept().map(|(s, _)| Conn::Tcp(s)), inst)
            });
        } else {
            std::mem::forget(tcp);
            // SAFETY: as above; this fd is a Unix socket.
            let unix = unsafe { UnixListener::from_raw_fd(fd) };
            println!(
                "hello: instance {instance} pid {} serving a unix socket",
                std::process::id()
            );
            let inst = instance.clone();
            std::thread::spawn(move || {
                accept_loop(|| unix.accept().map(|(s, _)| Conn::Unix(s)), inst)
            });
        }
    }
    if let Ok(path) = std::env::var("NOTIFY_SOCKET") {
        // READY_DELAY_MS: serve at once, but say ready only later (a slow start, for tests).
        if let Some(ms) = std::env::var("READY_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if let Ok(sock) = UnixDatagram::unbound() {
            let _ = sock.send_to(b"READY=1", path);
        }
    }
    loop {
        std::thread::park();
    }
}

enum Conn {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

fn accept_loop(accept: impl Fn() -> std::io::Result<Conn>, instance: String) {
    loop {
        match accept() {
            Ok(c) => {
                let inst = instance.clone();
                std::thread::spawn(move || {
                    let _ = match c {
                        Conn::Tcp(s) => serve(s.try_clone().expect("clone"), s, &inst),
                        Conn::Unix(s) => serve(s.try_clone().expect("clone"), s, &inst),
                    };
                });
            }
            Err(e) => {
                eprintln!("hello: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn serve(r: impl std::io::Read, mut w: impl Write, instance: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(r);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let lower = h.to_ascii_lowercase();
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let body = if let Some(name) = path.strip_prefix("/env/") {
            std::env::var(name).unwrap_or_default()
        } else if let Some(ms) = path.strip_prefix("/sleep/") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            format!("pid={} instance={instance} slept={ms}", std::process::id())
        } else {
            format!("pid={} instance={instance}", std::process::id())
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
            body
        );
        w.write_all(resp.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

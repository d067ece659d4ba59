//! Listening addresses beyond one IPv4 port: IPv6, Unix sockets, several addresses, the shared
//! balance, and sticky sessions.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::common::*;

#[test]
fn ipv6_unix_and_two_addresses_per_instance() {
    let h = Herd::new();
    let p4 = free_port();
    let p6 = {
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let l4 = format!("web=127.0.0.1:{p4}");
    let l6 = format!("[::1]:{p6}");
    let lu = format!("unix:{}", sock.display());
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "api",
        "-i",
        "2",
        "--listen",
        &l4,
        "--listen",
        &l6,
        "--listen",
        &lu,
    ]);
    let v6: SocketAddr = format!("[::1]:{p6}").parse().unwrap();
    let mut seen4 = HashSet::new();
    let mut seen6 = HashSet::new();
    for _ in 0..60 {
        seen4.insert(pid_of(
            &get(loopback(p4), "/", Duration::from_secs(2)).unwrap(),
        ));
        seen6.insert(pid_of(&get(v6, "/", Duration::from_secs(2)).unwrap()));
    }
    assert_eq!(seen4.len(), 2, "IPv4 spread: {seen4:?}");
    assert_eq!(seen6.len(), 2, "IPv6 spread: {seen6:?}");
    let names = get(loopback(p4), "/env/LISTEN_FDNAMES", Duration::from_secs(2)).unwrap();
    assert_eq!(names, "web:listen1:listen2");
    assert_eq!(
        get(loopback(p4), "/env/LISTEN_FDS", Duration::from_secs(2)).unwrap(),
        "3"
    );
    let mut u = UnixStream::connect(&sock).unwrap();
    u.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let body = read_body(u).unwrap();
    assert!(h.pids("api").contains(&pid_of(&body)));
    h.ok(&["delete", "api"]);
    assert!(!sock.exists(), "unix socket file left after delete");
    h.finish();
}

#[test]
fn shared_balance_serves_from_one_socket() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "api",
        "-i",
        "2",
        "--listen",
        &listen,
        "--balance",
        "shared",
    ]);
    let pids: HashSet<u32> = h.pids("api").into_iter().collect();
    for _ in 0..20 {
        let body = get(loopback(port), "/", Duration::from_secs(2)).unwrap();
        assert!(pids.contains(&pid_of(&body)));
    }
    assert_eq!(h.app("api")["balance"], "shared");
    h.finish();
}

#[test]
fn sticky_balance_keeps_a_client_on_one_instance() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "api",
        "-i",
        "3",
        "--listen",
        &listen,
        "--balance",
        "sticky",
    ]);
    let seen: HashSet<u32> = (0..30)
        .map(|_| pid_of(&get(loopback(port), "/", Duration::from_secs(2)).unwrap()))
        .collect();
    assert_eq!(
        seen.len(),
        1,
        "one client address reached several instances: {seen:?}"
    );
    // Kill that instance: the client moves to a live one at once, never hangs.
    let victim = *seen.iter().next().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // kill() returns before the process is gone, and a dying threaded process can still
    // accept for a moment (and then reset). Wait until the daemon has reaped it.
    wait_until(Duration::from_secs(2), || {
        if std::path::Path::new(&format!("/proc/{victim}")).exists() {
            Err(())
        } else {
            Ok(())
        }
    })
    .unwrap();
    for _ in 0..20 {
        get(loopback(port), "/", Duration::from_secs(1)).unwrap();
    }
    h.finish();
}

//! `herd apply FILE` and `herd rollback` (issue #16, docs/apply.md): a changed app file
//! applied under a load of fresh connections — env, script and instance count — fails no
//! request and the plan printed matches what happened; a spec whose processes never get ready
//! keeps the old ones serving and is reported; rollback goes back; `--dry-run` changes nothing.

use std::time::Duration;

use crate::common::*;

fn write_file(path: &std::path::Path, port: u16, mode: &str, instances: u32, script: &str) {
    std::fs::write(
        path,
        format!(
            "[[apps]]\nname = \"web\"\nscript = \"{script}\"\ninstances = {instances}\nport = {port}\nwait_ready = true\nenv = {{ MODE = \"{mode}\" }}\n"
        ),
    )
    .unwrap();
}

/// The modes the app answers with, over `n` fresh connections.
fn modes(port: u16, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| {
            let body = get(loopback(port), "/", Duration::from_secs(2)).unwrap();
            body.rsplit("mode=").next().unwrap_or("").trim().to_string()
        })
        .collect()
}

#[test]
fn apply_reloads_a_changed_file_without_a_failed_request_and_rolls_back() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herd.toml");
    let hello = repo_root().join("examples/hello.py");
    let hello = hello.to_str().unwrap();
    let port = free_port();
    write_file(&file, port, "one", 2, hello);
    let f = file.to_str().unwrap();
    let out = h.ok(&["apply", f]);
    assert!(out.contains("web: start (new)"), "{out}");
    let first = h.pids("web");
    assert_eq!(first.len(), 2);
    assert_eq!(modes(port, 20), ["one".to_string()].into());

    // Nothing changed: nothing done (`herd start FILE` and `herd reload FILE` apply too).
    for cmd in ["apply", "start", "reload"] {
        let out = h.ok(&[cmd, f]);
        assert!(out.contains("web: unchanged"), "{cmd}: {out}");
    }
    assert_eq!(h.pids("web"), first);

    // A new env value and a third instance: the plan says so, --dry-run does nothing.
    write_file(&file, port, "two", 3, hello);
    let out = h.ok(&["apply", f, "--dry-run"]);
    assert!(out.contains("web: reload: env.MODE; scale 2 → 3"), "{out}");
    assert_eq!(h.pids("web"), first);
    let loads = under_load(loopback(port), "/sleep/20", 4, || {
        let out = h.ok(&["apply", f]);
        assert!(
            out.contains("web: reload: env.MODE; scale 2 → 3") && out.contains("web: done"),
            "{out}"
        );
    });
    assert_no_failures(&loads, "apply of a changed env and instance count");
    let second = h.pids("web");
    assert_eq!(second.len(), 3);
    assert!(
        second.iter().all(|p| !first.contains(p)),
        "{first:?} → {second:?}"
    );
    assert_eq!(modes(port, 30), ["two".to_string()].into());
    assert_eq!(h.app("web")["generation"], 2);
    let d = h.ok(&["describe", "web"]);
    assert!(d.contains("generation: 2 (1 earlier kept"), "{d}");

    // A script whose processes exit before they are ready: the old ones keep serving, the
    // failure is reported, and the spec stays the one that works.
    let bad = script(dir.path(), "bad.sh", "#!/bin/sh\nexit 3\n");
    write_file(&file, port, "two", 3, bad.to_str().unwrap());
    let loads = under_load(loopback(port), "/sleep/20", 4, || {
        let out = h.run(&["apply", f]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains("web: failed") && text.contains("previous spec is back"),
            "{text}"
        );
    });
    assert_no_failures(&loads, "apply of a spec that never gets ready");
    assert_eq!(h.pids("web"), second);
    assert_eq!(modes(port, 20), ["two".to_string()].into());
    let d = h.app("web");
    assert_eq!(d["generation"], 2, "{d}");

    // Rollback: the spec before the last apply (MODE=one, two instances), rolling.
    let loads = under_load(loopback(port), "/sleep/20", 4, || {
        h.ok(&["rollback", "web"]);
    });
    assert_no_failures(&loads, "rollback");
    assert_eq!(h.pids("web").len(), 2);
    assert_eq!(modes(port, 20), ["one".to_string()].into());
    h.finish();
}

fn write_node_file(path: &std::path::Path, script: &std::path::Path, port: u16) {
    std::fs::write(
        path,
        format!(
            "[[apps]]\nname = \"web\"\nscript = \"{}\"\ninstances = 2\nlisten = [\"127.0.0.1:{port}\"]\n",
            script.display()
        ),
    )
    .unwrap();
}

/// Load while an app moves from the address `from` to `to`: fresh and kept-alive connections
/// to `from` until `to` answers (clients move once the new address answers, as behind a
/// balancer that checks it), and fresh connections to `to` from the start, where a refusal before its first
/// answer is "not yet" and any failure after it counts. Returns (loads on `from`, load on
/// `to`, whether `to` answered before `during` returned).
fn moving_load(from: u16, to: u16, during: impl FnOnce()) -> (Vec<Load>, Load, bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop_old = Arc::new(AtomicBool::new(false));
    let stop_new = Arc::new(AtomicBool::new(false));
    let up = Arc::new(AtomicBool::new(false));
    let mut old = Vec::new();
    for t in 0..4 {
        let stop = stop_old.clone();
        old.push(std::thread::spawn(move || {
            if t % 2 == 0 {
                load_path_until(loopback(from), "/slow/20", &stop, Duration::from_secs(60))
            } else {
                keep_alive_until(loopback(from), "/", &stop, Duration::from_secs(60), |n| {
                    Duration::from_millis((n * 7 % 20) as u64)
                })
                .load
            }
        }));
    }
    let new = {
        let (stop, stop_old, up) = (stop_new.clone(), stop_old.clone(), up.clone());
        std::thread::spawn(move || {
            let mut l = Load::default();
            let end = std::time::Instant::now() + Duration::from_secs(60);
            let mut first: Option<std::time::Instant> = None;
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
                match get(loopback(to), "/", Duration::from_secs(5)) {
                    Ok(_) => {
                        l.ok += 1;
                        first.get_or_insert_with(std::time::Instant::now);
                        up.store(true, Ordering::Relaxed);
                        // Clients of the old address move over once the new one answers.
                        stop_old.store(true, Ordering::Relaxed);
                    }
                    Err(e) if first.is_none() => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => l.failed.push(e.to_string()),
                }
            }
            l
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    during();
    let answered = up.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1300));
    stop_old.store(true, Ordering::Relaxed);
    stop_new.store(true, Ordering::Relaxed);
    let old = old.into_iter().map(|h| h.join().unwrap()).collect();
    (old, new.join().unwrap(), answered)
}

/// A listen change applied under load (issue #16): the app moves from one port to another by
/// a rolling reload; the new port answers before the apply is done, the old one serves every
/// request (fresh and kept-alive) until clients move, then closes with its last process. A
/// move to a port whose spec never gets ready goes back: the old port keeps serving and the
/// new one is closed again. Rollback moves back under load too.
#[test]
fn apply_moves_an_app_to_another_port_without_a_failed_request() {
    let Some(base) = node_fixture() else {
        return;
    };
    let app = base.join("apps/http.js");
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herd.toml");
    let f = file.to_str().unwrap();
    let (a, b) = (free_port(), free_port());
    write_node_file(&file, &app, a);
    h.ok(&["apply", f]);
    let first = h.pids("web");
    assert_eq!(first.len(), 2);

    write_node_file(&file, &app, b);
    let out = h.ok(&["apply", f, "--dry-run"]);
    assert!(out.contains("web: reload: listen"), "{out}");
    let (old, new, answered) = moving_load(a, b, || {
        let out = h.ok(&["apply", f]);
        assert!(
            out.contains("web: reload: listen") && out.contains("web: done"),
            "{out}"
        );
    });
    assert_no_failures(&old, &format!("the move from port {a} (on the old port)"));
    assert_no_failures(&[new], &format!("the move to port {b} (on the new port)"));
    assert!(
        answered,
        "port {b} did not answer before the apply was done"
    );
    let second = h.pids("web");
    assert!(
        second.iter().all(|p| !first.contains(p)),
        "{first:?} → {second:?}"
    );
    for p in &first {
        assert!(!alive(*p), "old process {p} still runs");
    }
    let refused = std::net::TcpStream::connect_timeout(&loopback(a), Duration::from_secs(2));
    assert!(refused.is_err(), "port {a} still open after the move");
    let app = h.app("web");
    assert_eq!(app["listen"][0], format!("127.0.0.1:{b}"), "{app}");

    // A move whose processes never get ready: back on port b, the other port closed again.
    let c = free_port();
    let bad = script(dir.path(), "bad.sh", "#!/bin/sh\nexit 3\n");
    write_node_file(&file, &bad, c);
    let loads = under_load(loopback(b), "/slow/20", 4, || {
        let out = h.run(&["apply", f]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && text.contains("previous spec is back"),
            "{text}"
        );
    });
    assert_no_failures(&loads, "a move that failed");
    assert_eq!(h.pids("web"), second);
    let refused = std::net::TcpStream::connect_timeout(&loopback(c), Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "port {c} still open after the failed move"
    );
    assert_eq!(h.app("web")["listen"][0], format!("127.0.0.1:{b}"));

    // Rollback: back to port a.
    let (old, new, answered) = moving_load(b, a, || {
        h.ok(&["rollback", "web"]);
    });
    assert_no_failures(&old, "the rollback (on the old port)");
    assert_no_failures(&[new], "the rollback (on the new port)");
    assert!(answered);
    assert_eq!(h.app("web")["listen"][0], format!("127.0.0.1:{a}"));
    h.finish();
}

/// The generations live in the saved state: after `save`, `kill` and `resurrect` an app has
/// its generation and `rollback` still goes back.
#[test]
fn generations_survive_save_and_resurrect() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herd.toml");
    let f = file.to_str().unwrap();
    let hello = repo_root().join("examples/hello.py");
    let hello = hello.to_str().unwrap();
    let port = free_port();
    write_file(&file, port, "one", 1, hello);
    h.ok(&["apply", f]);
    write_file(&file, port, "two", 1, hello);
    h.ok(&["apply", f]);
    assert_eq!(h.app("web")["generation"], 2);
    h.ok(&["save"]);
    h.ok(&["kill"]);
    h.ok(&["resurrect"]);
    assert_eq!(h.app("web")["generation"], 2);
    assert_eq!(modes(port, 5), ["two".to_string()].into());
    h.ok(&["rollback", "web"]);
    assert_eq!(modes(port, 5), ["one".to_string()].into());
    assert_eq!(h.app("web")["generation"], 3);
    h.finish();
}

/// `apply` of a changed script, env and instance count under kept-alive connections (HTTP
/// clients' pools): no request lost, every process new, the new script and env answering.
#[test]
fn apply_under_keep_alive_load_loses_no_request() {
    let Some(base) = node_fixture() else {
        return;
    };
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herd.toml");
    let f = file.to_str().unwrap();
    let one = base.join("apps/http.js");
    // The new version: another script (the same server, answering its file name too).
    let two = dir.path().join("http-v2.js");
    std::fs::write(
        &two,
        std::fs::read_to_string(&one).unwrap().replace(
            "res.end(`pid=${process.pid}",
            "res.end(`v2 mode=${process.env.MODE} pid=${process.pid}",
        ),
    )
    .unwrap();
    let port = free_port();
    let write = |script: &std::path::Path, mode: &str, n: u32| {
        std::fs::write(
            &file,
            format!(
                "[[apps]]\nname = \"ka\"\nscript = \"{}\"\ninstances = {n}\nport = {port}\nenv = {{ MODE = \"{mode}\" }}\n",
                script.display()
            ),
        )
        .unwrap();
    };
    write(&one, "a", 2);
    h.ok(&["apply", f]);
    let first = h.pids("ka");
    write(&two, "b", 3);
    let loads = under_keep_alive_load(loopback(port), "/", 6, pool_pause, || {
        let out = h.ok(&["apply", f]);
        assert!(
            out.contains("ka: reload: env.MODE, script; scale 2 → 3") && out.contains("ka: done"),
            "{out}"
        );
    });
    let plain: Vec<Load> = loads.iter().map(|l| l.load.clone()).collect();
    assert_no_failures(&plain, "apply under keep-alive load");
    let second = h.pids("ka");
    assert_eq!(second.len(), 3);
    assert!(
        second.iter().all(|p| !first.contains(p)),
        "{first:?} → {second:?}"
    );
    let body = get(loopback(port), "/", Duration::from_secs(2)).unwrap();
    assert!(body.contains("v2 mode=b"), "{body}");
    h.finish();
}

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

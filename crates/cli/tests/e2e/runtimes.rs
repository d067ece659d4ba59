//! Bun and Deno apps (issue #16): written for their runtime alone (`Bun.serve`, `Deno.serve`,
//! `node:http`), run with real binaries from npm, they serve on herd's port from every
//! instance, are replaced when killed, and reload under load without a failed request
//! (docs/runtimes.md).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

fn app(name: &str) -> String {
    repo_root()
        .join("tests/runtimes")
        .join(name)
        .display()
        .to_string()
}

/// A herd whose daemon and apps find `runtime`'s folder first on PATH.
fn herd_with(runtime: &Path) -> Herd {
    let dir = runtime.parent().unwrap().display().to_string();
    let path = format!("{dir}:{}", std::env::var("PATH").unwrap_or_default());
    Herd::with_env(&[("PATH", &path)])
}

/// Waits until the app has two instances online (with pids), and returns their pids.
fn two_online(h: &Herd, name: &str) -> HashSet<u32> {
    wait_until(Duration::from_secs(20), || {
        let statuses = h.statuses(name);
        let pids = h.pids(name);
        (statuses.iter().all(|s| s == "online") && pids.len() == 2)
            .then(|| pids.into_iter().collect::<HashSet<u32>>())
            .ok_or(format!("{statuses:?}"))
    })
    .unwrap()
}

/// What a reload may lose.
#[derive(Clone, Copy, PartialEq)]
enum Reload {
    /// Nothing.
    Lossless,
    /// Deno.serve: its `shutdown()` closes a connection it accepted but has not read a request
    /// from yet (hyper takes it for idle), so a client now and then gets no answer; at most one
    /// in a thousand, and no other failure.
    EmptyAnswersAtMostPerMille,
}

/// What every runtime test checks, on app `name` started with `start` (to which the port and
/// `-i 2` are added): both instances serve on herd's port, their output is in the logs, a
/// SIGKILLed instance is replaced, a reload under load fails nothing (see [`Reload`]), a stop
/// frees the port.
fn serves_restarts_and_reloads(h: &Herd, name: &str, start: &[&str], logged: &str, reload: Reload) {
    let port = free_port();
    let port_s = port.to_string();
    let mut args = start.to_vec();
    args.extend(["--name", name, "-i", "2", "--port", &port_s]);
    h.ok(&args);
    let pids = two_online(h, name);
    assert_eq!(
        serving(port, 2),
        pids,
        "every instance serves on herd's port"
    );

    let logs = wait_until(Duration::from_secs(10), || {
        let l = h.ok(&["logs", name, "--lines", "100"]);
        pids.iter()
            .all(|p| {
                l.contains(&format!("{logged} pid={p}"))
                    || l.contains(&format!("{logged} on {port} pid={p}"))
            })
            .then_some(l.clone())
            .ok_or(l)
    });
    assert!(
        logs.is_ok(),
        "output of both instances in the logs: {logs:?}"
    );

    let victim = *pids.iter().next().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(victim).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let after = wait_until(Duration::from_secs(20), || {
        let now = two_online(h, name);
        (!now.contains(&victim)).then_some(now.clone()).ok_or(now)
    })
    .unwrap();
    assert_eq!(serving(port, 2), after, "the replacement serves");

    let loads = under_load(loopback(port), "/", 4, || {
        h.ok(&["reload", name]);
    });
    let made: usize = loads.iter().map(|l| l.ok + l.failed.len()).sum();
    eprintln!("{name}: {made} requests during the reload");
    if reload == Reload::Lossless {
        assert_no_failures(&loads, &format!("reload of {name}"));
    } else {
        let ok: usize = loads.iter().map(|l| l.ok).sum();
        let failed: Vec<&String> = loads.iter().flat_map(|l| &l.failed).collect();
        // A connection closed without an answer: seen as an empty answer, or as a broken
        // pipe or a reset when the close came before the request was written.
        let unanswered = |f: &str| {
            f == "bad response: \"\"" || f.contains("Broken pipe") || f.contains("reset by peer")
        };
        let other: Vec<&&String> = failed.iter().filter(|f| !unanswered(f)).collect();
        assert!(other.is_empty(), "reload of {name}: {other:?}");
        assert!(
            failed.len() * 1000 <= ok,
            "{} of {} requests got no answer during the reload of {name}",
            failed.len(),
            ok + failed.len()
        );
        assert!(
            ok > 1000,
            "only {ok} requests made during the reload of {name}"
        );
    }
    let reloaded = two_online(h, name);
    assert!(reloaded.is_disjoint(&after), "{reloaded:?} vs {after:?}");
    assert_eq!(serving(port, 2), reloaded);

    h.ok(&["stop", name]);
    drop(std::net::TcpListener::bind(loopback(port)).expect("port still held after stop"));
}

#[test]
fn bun_serve_by_extension_serves_from_both_instances_and_reloads_without_a_failure() {
    let Some(bun) = bun_fixture() else { return };
    let h = herd_with(&bun);
    // `.ts` runs under bun, found on PATH, as PM2 does.
    let script = app("bun-serve.ts");
    serves_restarts_and_reloads(
        &h,
        "bun",
        &["start", &script],
        "bun-serve listening",
        Reload::Lossless,
    );
    let described = h.ok(&["describe", "bun"]);
    assert!(described.contains("bun"), "{described}");
    h.finish();
}

#[test]
fn bun_runs_a_node_http_app_on_herds_port() {
    let Some(bun) = bun_fixture() else { return };
    let h = herd_with(&bun);
    let script = app("node-http.mjs");
    serves_restarts_and_reloads(
        &h,
        "bun-http",
        &["start", &script, "--interpreter", "bun"],
        "node-http listening",
        Reload::Lossless,
    );
    h.finish();
}

#[test]
fn deno_serve_runs_with_default_permissions_serves_and_reloads() {
    let Some(deno) = deno_fixture() else { return };
    let h = herd_with(&deno);
    let script = app("deno-serve.ts");
    serves_restarts_and_reloads(
        &h,
        "deno",
        &["start", &script, "--interpreter", "deno"],
        "deno-serve listening",
        Reload::EmptyAnswersAtMostPerMille,
    );
    h.finish();
}

#[test]
fn deno_runs_a_node_http_app_on_herds_port() {
    let Some(deno) = deno_fixture() else { return };
    let h = herd_with(&deno);
    let script = app("node-http.mjs");
    // A full path as interpreter works as well as a name on PATH.
    let deno_path = deno.display().to_string();
    serves_restarts_and_reloads(
        &h,
        "deno-http",
        &["start", &script, "--interpreter", &deno_path],
        "node-http listening",
        Reload::Lossless,
    );
    h.finish();
}

#[test]
fn a_missing_runtime_is_named_with_how_to_install_it() {
    let h = Herd::with_env(&[("PATH", "/usr/bin:/bin")]);
    let err = h.fails(&[
        "start",
        &app("bun-serve.ts"),
        "--port",
        &free_port().to_string(),
    ]);
    assert!(err.contains("bun was not found on PATH"), "{err}");
    assert!(err.contains("npm install -g bun"), "{err}");
    let err = h.fails(&["start", &app("deno-serve.ts"), "--interpreter", "deno"]);
    assert!(err.contains("npm install -g deno"), "{err}");
    h.finish();
}

#[test]
fn only_the_first_bind_to_herds_port_gets_its_socket() {
    let Some(bun) = bun_fixture() else { return };
    let h = herd_with(&bun);
    let dir = tempfile::tempdir().unwrap();
    let twice: PathBuf = dir.path().join("twice.ts");
    std::fs::write(
        &twice,
        "const port = Number(process.env.PORT);\n\
         Bun.serve({ port, fetch: () => new Response(`pid=${process.pid}`) });\n\
         try { Bun.serve({ port, reusePort: true, fetch: () => new Response('second') }); }\n\
         catch (e) { console.error(`second bind: ${e.code}`); }\n",
    )
    .unwrap();
    let port = free_port();
    h.ok(&[
        "start",
        twice.to_str().unwrap(),
        "--name",
        "twice",
        "--port",
        &port.to_string(),
    ]);
    let body = wait_until(Duration::from_secs(15), || {
        get(loopback(port), "/", Duration::from_secs(2))
    })
    .unwrap();
    assert!(body.starts_with("pid="), "{body}");
    let err = wait_until(Duration::from_secs(20), || {
        let l = h.ok(&["logs", "twice", "--lines", "20"]);
        l.contains("second bind: EADDRINUSE").then_some(()).ok_or(l)
    });
    assert!(err.is_ok(), "{err:?}");
    h.finish();
}

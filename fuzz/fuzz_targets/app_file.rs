//! The app-file loaders: `herd.toml`, `herd.json`, `herd.yaml` and PM2's
//! `ecosystem.config.json`, through `appfile::load_text` — the same code as `herd start FILE`
//! (crates/cli/src/{appfile,args}.rs, included as they are). PM2's `.js` files are evaluated
//! by node and are out of scope.
//!
//! Input: byte 0 picks the file's name (and so its format and PM2's rules) and whether an
//! `env_production` block is selected; the rest is the file's text (invalid UTF-8 replaced).
//! The loaders run in an empty folder with an empty PATH, so a script name finds nothing.
//!
//! Invariants beyond "no panic": the loader returns an error or at least one app; names are
//! unique; every spec passes the checks the daemon makes before starting it
//! (`validate`, the kill signal, the listen addresses) and travels to the daemon in a `start`
//! request unchanged.
#![no_main]

#[allow(dead_code, clippy::all)]
#[path = "../../crates/cli/src/args.rs"]
mod args;

#[allow(dead_code, clippy::all)]
#[path = "../../crates/cli/src/appfile.rs"]
mod appfile;

use std::path::PathBuf;
use std::sync::OnceLock;

use herd_proto::{encode_line, Command, Request};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 4] = [
    "herd.toml",
    "herd.json",
    "herd.yaml",
    "ecosystem.config.json",
];

/// An empty folder to run in, made once.
fn home() -> &'static PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("herd-fuzz-app-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        std::env::set_current_dir(&dir).expect("into the temporary folder");
        std::env::set_var("PATH", "");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let [pick, text @ ..] = data else {
        return;
    };
    let path = home().join(NAMES[usize::from(pick & 3)]);
    let env_name = (pick & 4 != 0).then_some("production");
    let overrides: Vec<String> = if pick & 8 != 0 {
        vec!["PORT=8080".into()]
    } else {
        Vec::new()
    };
    let text = String::from_utf8_lossy(text);
    let Ok(specs) = appfile::load_text(&path, &text, env_name, &overrides) else {
        return;
    };
    assert!(!specs.is_empty(), "a file with no apps loaded");
    for (i, spec) in specs.iter().enumerate() {
        assert!(
            specs[..i].iter().all(|s| s.name != spec.name),
            "two apps named {:?}",
            spec.name
        );
        assert_eq!(spec.validate(), Ok(()));
        assert!(herd_core::supervisor::parse_signal(&spec.kill_signal).is_some());
        for l in &spec.listen {
            assert!(
                l.addr.parse::<herd_core::sockets::ListenAddr>().is_ok(),
                "listen address {:?} accepted by the loader, refused by the daemon",
                l.addr
            );
        }
        let req = Request::new(Command::Start {
            spec: Box::new(spec.clone()),
        });
        let again: Request = serde_json::from_slice(&encode_line(&req).expect("a value encodes"))
            .expect("a start request parses");
        assert_eq!(again, req, "a spec changed on its way to the daemon");
    }
});

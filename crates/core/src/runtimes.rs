//! JavaScript runtimes other than Node that herd knows by name: Bun and Deno.
//!
//! Neither can listen on a socket it inherits (Bun.serve, Deno.serve and their `node:http`
//! layers all bind their own), and Bun's `node:cluster` workers bind the port themselves rather
//! than ask the primary. So herd runs them as plain programs with `LISTEN_FDS` and loads its
//! port-adoption library into them (`LD_PRELOAD`, `crates/core/shim/adopt.c`): the app's own
//! `bind` to its herd port gets herd's socket. This module names the runtimes, their default
//! arguments and that library's variable; it does not spawn (the supervisor does) nor decide
//! a script's interpreter (the CLI does).

use std::path::Path;

/// A runtime herd treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Bun (`bun`).
    Bun,
    /// Deno (`deno`).
    Deno,
}

impl Runtime {
    /// The runtime an interpreter names, by its file name (`bun`, `/opt/deno/bin/deno`).
    pub fn of(interpreter: Option<&str>) -> Option<Self> {
        let name = Path::new(interpreter?).file_name()?.to_str()?;
        match name {
            "bun" => Some(Self::Bun),
            "deno" => Some(Self::Deno),
            _ => None,
        }
    }

    /// Its program name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bun => "bun",
            Self::Deno => "deno",
        }
    }

    /// Interpreter arguments when none are given. Deno runs nothing without permissions: a
    /// server needs the network, its environment (`PORT`) and usually its files.
    pub fn default_args(self) -> &'static [&'static str] {
        match self {
            Self::Bun => &[],
            Self::Deno => &["run", "--allow-net", "--allow-env", "--allow-read"],
        }
    }

    /// How to install it, for the error when it is not on `PATH`.
    pub fn install_hint(self) -> &'static str {
        match self {
            Self::Bun => "npm install -g bun, or see https://bun.sh",
            Self::Deno => "npm install -g deno, or see https://deno.com",
        }
    }
}

/// The switch, read from an app's environment: `HERD_ADOPT=off` (or `0`) leaves the app's
/// binds alone (it then gets `LISTEN_FDS` but binds its port itself, and fails while herd holds
/// it).
pub const ENV_SWITCH: &str = "HERD_ADOPT";

/// Whether an app with environment `env` gets the port-adoption library (see [`ENV_SWITCH`]).
pub fn enabled(env: &std::collections::BTreeMap<String, String>) -> bool {
    !env.get(ENV_SWITCH)
        .is_some_and(|v| matches!(v.trim(), "off" | "0" | "false" | "no"))
}

/// The error for an interpreter not found on `PATH`, with an install hint for Bun and Deno.
pub fn not_found(name: &str) -> Option<String> {
    let rt = Runtime::of(Some(name))?;
    Some(format!(
        "{} was not found on PATH; install it ({}) or give its full path with --interpreter",
        rt.name(),
        rt.install_hint()
    ))
}

/// `LD_PRELOAD` that loads `lib` first, then the app's own; `None` when the path cannot be
/// written there (the loader splits the variable at spaces and colons).
pub fn ld_preload(lib: &Path, theirs: Option<&str>) -> Option<String> {
    let lib = lib.to_str()?;
    if lib.contains([' ', ':']) {
        return None;
    }
    Some(match theirs.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => format!("{lib} {t}"),
        None => lib.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_are_known_by_file_name() {
        assert_eq!(Runtime::of(Some("bun")), Some(Runtime::Bun));
        assert_eq!(
            Runtime::of(Some("/x/node_modules/.bin/deno")),
            Some(Runtime::Deno)
        );
        assert_eq!(Runtime::of(Some("node")), None);
        assert_eq!(Runtime::of(Some("bunx")), None);
        assert_eq!(Runtime::of(None), None);
    }

    #[test]
    fn the_library_comes_first_and_theirs_stays() {
        let lib = Path::new("/home/me/.herd/node/herd-adopt.so");
        assert_eq!(
            ld_preload(lib, None).as_deref(),
            Some("/home/me/.herd/node/herd-adopt.so")
        );
        assert_eq!(
            ld_preload(lib, Some(" libjemalloc.so ")).as_deref(),
            Some("/home/me/.herd/node/herd-adopt.so libjemalloc.so")
        );
        assert_eq!(ld_preload(Path::new("/a b/herd-adopt.so"), None), None);
    }

    #[test]
    fn a_missing_runtime_names_how_to_install_it() {
        let e = not_found("bun").unwrap_or_default();
        assert!(e.contains("npm install -g bun"), "{e}");
        assert_eq!(not_found("python3"), None);
    }
}

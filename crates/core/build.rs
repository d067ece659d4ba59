//! Builds herd's port-adoption library (`shim/adopt.c`) for the runtimes that cannot listen on
//! an inherited socket (Bun, Deno); `runtimes.rs` embeds it. It needs a C compiler: `$CC`, or
//! `cc`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=shim/adopt.c");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("herd-adopt.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg("shim/adopt.c")
        .arg("-ldl")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("building shim/adopt.c with {cc} failed ({s})");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("herd-core needs a C compiler for shim/adopt.c: {cc}: {e}; install one (Debian: apt-get install gcc) or set CC");
            std::process::exit(1);
        }
    }
}

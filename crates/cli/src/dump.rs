//! `herd save` and `herd resurrect`: the app list in `HERD_HOME/dump.json`.
//!
//! The file is written atomically (temporary file, fsync, rename) and the previous one is kept
//! as `dump.json.bak`; a corrupted dump falls back to the backup with a clear word. Saving an
//! empty list never replaces a non-empty one without `--force`. The dump holds each app's
//! captured environment, so it is readable by its owner only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use herd_daemon::Home;
use herd_proto::{AppSpec, AppStatus, Command, Reply};
use serde::{Deserialize, Serialize};

use crate::client::Client;

#[derive(Serialize, Deserialize)]
struct Dump {
    version: u32,
    apps: Vec<Saved>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    status: AppStatus,
    /// As saved by this herd or an older one ([`AppSpec::from_saved`]).
    #[serde(deserialize_with = "AppSpec::deserialize_saved")]
    spec: AppSpec,
    /// Its spec's generation (`herd apply`, `rollback`); absent in older dumps.
    #[serde(default = "first_generation")]
    generation: u32,
    /// Its earlier specs, oldest first, for `herd rollback` after a resurrect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    previous: Vec<AppSpec>,
}

fn first_generation() -> u32 {
    1
}

pub fn save(home: &Home, force: bool) -> Result<ExitCode> {
    let apps = match Client::connect(home)?.call(Command::Describe {
        target: "all".into(),
    })? {
        Reply::Apps { apps, .. } => apps,
        Reply::Error { error, .. } => bail!("{}", error.message),
        other => bail!("unexpected reply: {other:?}"),
    };
    let path = home.dir.join("dump.json");
    if apps.is_empty() && !force {
        if let Ok(old) = read(&path) {
            if !old.apps.is_empty() {
                bail!(
                    "no app runs, and {} holds {} saved app(s); not overwriting it with an empty list (use --force to do so)",
                    path.display(),
                    old.apps.len()
                );
            }
        }
    }
    let dump = Dump {
        version: 1,
        apps: apps
            .into_iter()
            .filter_map(|a| {
                a.spec.map(|spec| Saved {
                    status: a.status,
                    spec: *spec,
                    generation: a.generation,
                    previous: a.previous,
                })
            })
            .collect(),
    };
    let tmp = home.dir.join("dump.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(&dump)?)?;
    f.sync_all()?;
    drop(f);
    if path.exists() {
        // Copied through a new file (never through a link), 0600 like the dump.
        let bak = home.dir.join("dump.json.bak");
        let bak_tmp = home.dir.join("dump.json.bak.tmp");
        std::fs::read(&path)
            .and_then(|old| {
                let mut b = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&bak_tmp)?;
                b.write_all(&old)?;
                b.sync_all()?;
                std::fs::rename(&bak_tmp, &bak)
            })
            .context("keeping the previous dump as dump.json.bak")?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(dir) = std::fs::File::open(&home.dir) {
        let _ = dir.sync_all();
    }
    println!("saved {} app(s) to {}", dump.apps.len(), path.display());
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> Result<Dump> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let dump: Dump =
        serde_json::from_str(&text).with_context(|| format!("{} is corrupted", path.display()))?;
    if dump.version != 1 {
        bail!(
            "{} has format version {}, which this herd does not read",
            path.display(),
            dump.version
        );
    }
    Ok(dump)
}

/// The saved list, falling back to the backup when the dump is corrupted.
fn load(home: &Home) -> Result<Dump> {
    let path = home.dir.join("dump.json");
    let bak = home.dir.join("dump.json.bak");
    match read(&path) {
        Ok(d) => Ok(d),
        Err(e) if path.exists() || bak.exists() => {
            eprintln!("warning: {e:#}; using the previous save, {}", bak.display());
            read(&bak).with_context(|| format!("{e:#}, and the backup cannot be used either"))
        }
        Err(_) => bail!(
            "nothing saved yet in {}; run `herd save` first",
            path.display()
        ),
    }
}

/// The saved apps that were running, for `herd run --resurrect`.
pub fn saved_specs(home: &Home) -> Result<Vec<AppSpec>> {
    Ok(load(home)?
        .apps
        .into_iter()
        .filter(|s| s.status == AppStatus::Running)
        .map(|s| s.spec)
        .collect())
}

/// `herd startup systemd`: a unit that runs the saved apps in the foreground under systemd,
/// as `Type=notify` (herd run says READY=1 and STOPPING=1). The main process is the keeper
/// and the daemon its child (docs/keeper.md), which says READY=1: `NotifyAccess=all`.
pub fn startup(home: &Home, system: &str, install: bool) -> Result<ExitCode> {
    if system != "systemd" {
        bail!("herd startup knows systemd only; run `herd run --resurrect` from your init system");
    }
    let exe = std::env::current_exe()?;
    let root = nix::unistd::getuid().is_root();
    let unit = format!(
        "[Unit]\nDescription=herd: the apps saved with `herd save` in {home}\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nType=notify\nNotifyAccess=all\nEnvironment=HERD_HOME={home}\nExecStart={exe} run --resurrect --control\n\
         Restart=always\nRestartSec=1\nKillMode=mixed\nTimeoutStopSec=30\n\n[Install]\nWantedBy={target}\n",
        home = home.dir.display(),
        exe = exe.display(),
        target = if root { "multi-user.target" } else { "default.target" },
    );
    if !install {
        print!("{unit}");
        return Ok(ExitCode::SUCCESS);
    }
    let dir = if root {
        std::path::PathBuf::from("/etc/systemd/system")
    } else {
        let home_dir = std::env::var_os("HOME").context("HOME is not set")?;
        std::path::Path::new(&home_dir).join(".config/systemd/user")
    };
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("herd.service");
    std::fs::write(&path, unit).with_context(|| format!("cannot write {}", path.display()))?;
    let ctl = if root {
        "systemctl"
    } else {
        "systemctl --user"
    };
    println!(
        "wrote {}; now run: {ctl} daemon-reload && {ctl} enable --now herd",
        path.display()
    );
    println!(
        "(save the apps first with `herd save`; the unit runs them with `herd run --resurrect`)"
    );
    Ok(ExitCode::SUCCESS)
}

pub fn resurrect(home: &Home, json: bool) -> Result<ExitCode> {
    let dump = load(home)?;
    let mut client = Client::connect(home)?;
    let mut started = Vec::new();
    for saved in dump.apps {
        let name = saved.spec.name.clone();
        match client.call(Command::Start {
            spec: Box::new(saved.spec),
        })? {
            Reply::Apps { apps, .. } => {
                if saved.generation > 1 || !saved.previous.is_empty() {
                    if let Reply::Error { error, .. } = client.call(Command::Restore {
                        target: name.clone(),
                        generation: saved.generation,
                        previous: saved.previous,
                    })? {
                        eprintln!(
                            "warning: {name}: its earlier specs are not restored (`herd rollback` has nothing to go back to): {}",
                            error.message
                        );
                    }
                }
                if saved.status == AppStatus::Stopped {
                    client.call(Command::Stop {
                        target: name.clone(),
                    })?;
                }
                started.extend(apps.into_iter().map(|a| a.name));
            }
            Reply::Error { error, .. } => {
                eprintln!("warning: {name} not resurrected: {}", error.message)
            }
            other => bail!("unexpected reply: {other:?}"),
        }
    }
    let apps = match client.call(Command::List)? {
        Reply::Apps { apps, .. } => apps,
        other => bail!("unexpected reply: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&apps)?);
    } else {
        print!("{}", crate::output::table(&apps));
    }
    Ok(ExitCode::SUCCESS)
}

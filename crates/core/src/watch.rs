//! File watching for `--watch`: the kernel tells (inotify, through the `notify` crate), herd
//! filters out ignored paths and the supervisor debounces, then reloads the app.

use std::path::Path;

use ::notify::{EventKind, RecursiveMode, Watcher};

/// Watches `paths` recursively and calls `on_change` for every change outside `ignore`d path
/// components. Dropping the watcher stops it.
///
/// # Errors
/// A path that does not exist or cannot be watched.
pub fn start(
    paths: &[String],
    ignore: Vec<String>,
    on_change: impl Fn() + Send + 'static,
) -> Result<::notify::RecommendedWatcher, String> {
    let mut watcher =
        ::notify::recommended_watcher(move |res: ::notify::Result<::notify::Event>| {
            let Ok(event) = res else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let counts = event.paths.iter().any(|p| {
                !p.components()
                    .any(|c| ignore.iter().any(|i| c.as_os_str() == i.as_str()))
            });
            if counts {
                on_change();
            }
        })
        .map_err(|e| format!("cannot watch files: {e}"))?;
    for p in paths {
        watcher
            .watch(Path::new(p), RecursiveMode::Recursive)
            .map_err(|e| format!("cannot watch {p}: {e}; check the path given to --watch"))?;
    }
    Ok(watcher)
}

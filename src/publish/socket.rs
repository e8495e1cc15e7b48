//! The publisher socket file: where it may live, binding it, and knowing it is ours.
//!
//! crier remembers the device and inode of the socket file it created ([`SocketFile`]).
//! That identity decides two things: at exit crier unlinks the file at `--publish-socket`
//! only if it is still that socket (never another instance's, never a file someone put
//! there); and while running, [`SocketFile::check`] notices when the file was deleted
//! (crier binds a new socket at the path) or replaced by another file (crier leaves it
//! alone and reports it: log, `crier_publish_socket_up`, `/healthz`). This module never
//! removes a file it did not create, except a stale socket found at start-up that nobody
//! answers on (what a crashed crier leaves behind).

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::Config;
use crate::ops::metrics::Metrics;

/// Why the publisher socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another crier is already listening on {0}; stop it or choose another --publish-socket")]
    InUse(String),
    #[error("cannot create publisher socket {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    UnsafeDir(#[from] UnsafeDir),
}

/// The default socket's directory is not private to this user.
#[derive(Debug, thiserror::Error)]
#[error(
    "the default publisher socket directory {dir} {why}, so another local user could take the socket or read what publishers send; remove {dir} (crier creates it with mode 0700), or choose a socket with --publish-socket (or CRIER_PUBLISH_SOCKET)"
)]
pub struct UnsafeDir {
    pub dir: String,
    pub why: String,
}

/// Makes sure `dir`, the directory of the default socket, is private: a real directory
/// (not a symlink), owned by this user, that no group or other user may enter. `create`
/// makes it (mode 0700) when missing; without it a missing directory is left to the
/// caller's connect to report.
pub fn private_dir(dir: &Path, create: bool) -> Result<(), BindError> {
    let shown = dir.display().to_string();
    let unsafe_dir = |why: String| BindError::UnsafeDir(UnsafeDir { dir: shown.clone(), why });
    if create {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            // Someone may have made it first: the checks below decide.
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(BindError::Io { path: shown.clone(), source: e });
            }
            _ => {}
        }
    }
    // lstat: a symlink is judged by itself, since whoever made it chose where it points.
    let meta = match dir.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(()),
        Err(e) => return Err(BindError::Io { path: shown.clone(), source: e }),
    };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("is not a directory".into()));
    }
    if meta.uid() != me {
        return Err(unsafe_dir(format!("is owned by uid {}, not by this user (uid {me})", meta.uid())));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(unsafe_dir(format!("has mode {mode:04o}: its group or other users may enter it (must be 0700)")));
    }
    Ok(())
}

/// Device and inode of a file, without following a symlink.
type FileId = (u64, u64);

fn file_id(path: &Path) -> io::Result<FileId> {
    path.symlink_metadata().map(|m| (m.dev(), m.ino()))
}

/// A bound publisher socket and the identity of its file.
pub struct Bound {
    pub listener: std::os::unix::net::UnixListener,
    pub file: Arc<SocketFile>,
}

/// Binds the publisher socket: replaces a stale file from a crashed run, refuses to steal
/// a live one, and applies `--publish-socket-mode`. The default socket's directory is
/// created private, and refused unless it is (see [`private_dir`]).
pub fn bind(cfg: &Config) -> Result<Bound, BindError> {
    let path = cfg.publish_socket.as_path();
    let shown = path.display().to_string();
    // Before anything touches the path: in a directory someone else controls, even the
    // stale-socket probe below would connect to whoever listens there.
    if cfg.publish_socket_is_default
        && let Some(dir) = path.parent()
    {
        private_dir(dir, true)?;
    }
    if path.symlink_metadata().is_ok() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(shown)),
            Err(_) => {
                tracing::info!("removing stale publisher socket {shown}");
                std::fs::remove_file(path).map_err(|source| BindError::Io { path: shown.clone(), source })?;
            }
        }
    }
    let (listener, id) = create(cfg)?;
    let file = SocketFile { path: path.to_path_buf(), state: Mutex::new(FileState { id: Some(id), closed: false }) };
    Ok(Bound { listener, file: Arc::new(file) })
}

/// Creates the socket at a path where nothing is (the directory first, if missing); never
/// removes anything. Returns the listener, non-blocking, and its file's identity.
fn create(cfg: &Config) -> Result<(std::os::unix::net::UnixListener, FileId), BindError> {
    let (path, mode) = (cfg.publish_socket.as_path(), cfg.publish_socket_mode);
    let shown = path.display().to_string();
    let io_err = |source| BindError::Io { path: shown.clone(), source };
    if cfg.publish_socket_is_default
        && let Some(dir) = path.parent()
    {
        private_dir(dir, true)?;
    } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    listener.set_nonblocking(true).map_err(io_err)?;
    let id = file_id(path).map_err(io_err)?;
    Ok((listener, id))
}

/// The socket file crier created at `--publish-socket`, known by device and inode.
///
/// Shared by the control thread (which checks and recreates it) and the main thread (which
/// removes it at exit); the mutex makes "is it still ours?" and the unlink or re-bind that
/// follows one step with respect to each other.
pub struct SocketFile {
    path: PathBuf,
    state: Mutex<FileState>,
}

struct FileState {
    /// The identity of the socket crier created last.
    id: Option<FileId>,
    /// Exit has begun: nothing is recreated any more.
    closed: bool,
}

/// What [`SocketFile::check`] found.
pub enum Checked {
    /// The file at the path is crier's socket.
    Ours,
    /// It had been deleted; this new listener now serves the path.
    Recreated(std::os::unix::net::UnixListener),
    /// Publishers cannot reach crier through the path; the text says why.
    Trouble(String),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileState> {
        // The state stays consistent even if a holder panicked: it is two plain fields.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks at the file at the path: still ours, deleted (then binds a new socket there,
    /// counted in `crier_publish_socket_recreated_total`), or replaced by another file
    /// (left alone). Sets `metrics.publish_socket_trouble` (which `/healthz` and
    /// `crier_publish_socket_up` report) and logs each change once.
    pub fn check(&self, cfg: &Config, metrics: &Metrics) -> Checked {
        let mut st = self.lock();
        if st.closed {
            return Checked::Ours;
        }
        let shown = self.path.display();
        let checked = match file_id(&self.path) {
            Ok(id) if Some(id) == st.id => Checked::Ours,
            Ok(_) => Checked::Trouble(format!(
                "publisher socket {shown} was replaced by another file; crier leaves alone what it did not create, so publishers reach whatever that file is until it is removed (crier then recreates its socket)"
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match create(cfg) {
                Ok((listener, id)) => {
                    st.id = Some(id);
                    metrics.publish_socket_recreated.fetch_add(1, Relaxed);
                    tracing::warn!(
                        "publisher socket {shown} was deleted; recreated it (publishers already connected keep their connections)"
                    );
                    Checked::Recreated(listener)
                }
                Err(e) => {
                    Checked::Trouble(format!("publisher socket {shown} was deleted and cannot be recreated: {e}"))
                }
            },
            Err(e) => Checked::Trouble(format!("cannot check publisher socket {shown}: {e}")),
        };
        // Logged once per change, not at every check.
        let mut trouble = metrics.publish_socket_trouble.lock().unwrap_or_else(PoisonError::into_inner);
        match &checked {
            Checked::Trouble(why) if trouble.as_deref() != Some(why.as_str()) => {
                tracing::error!("{why}");
                *trouble = Some(why.clone());
            }
            Checked::Trouble(_) => {}
            Checked::Ours | Checked::Recreated(_) => {
                if trouble.take().is_some() {
                    tracing::info!("publisher socket {shown} is crier's own again");
                }
            }
        }
        checked
    }

    /// At exit: unlinks the file at the path if it is the socket this crier created, and
    /// stops [`SocketFile::check`] from recreating it. Returns whether it was removed.
    pub fn remove_if_ours(&self) -> bool {
        let mut st = self.lock();
        st.closed = true;
        let shown = self.path.display();
        match file_id(&self.path) {
            Ok(id) if Some(id) == st.id => match std::fs::remove_file(&self.path) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("cannot remove publisher socket {shown}: {e}");
                    false
                }
            },
            Ok(_) => {
                tracing::info!("leaving {shown} in place: it is not the socket this crier created");
                false
            }
            Err(_) => false,
        }
    }
}

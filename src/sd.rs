//! systemd's service protocol, for arpanetd and the image sync service: readiness and
//! status (sd_notify), the watchdog, and sockets systemd passes in (LISTEN_FDS).
//! Outside systemd each of these does nothing.

use std::os::fd::FromRawFd;
use std::time::Duration;

pub use sd_notify::NotifyState;
use tracing::warn;

/// Tells systemd `state` (Ready, Status, Stopping, Watchdog ...).
pub fn notify(state: &[NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    if let Err(e) = sd_notify::notify(false, state) {
        warn!("cannot notify systemd: {e}");
    }
}

/// How often to feed the watchdog: half the interval systemd asked for, so one late
/// tick never kills us. None without `WatchdogSec`.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// Feeds the watchdog from a task of its own for as long as the process runs: one pass
/// of work can legitimately take longer than WatchdogSec (a Docker restart, stopping
/// containers with a grace period). Does nothing without `WatchdogSec`.
pub fn spawn_watchdog() {
    if let Some(interval) = watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                notify(&[NotifyState::Watchdog]);
            }
        });
    }
}

/// The first unix listening socket systemd passed in (socket activation), if any.
pub fn listen_unix() -> std::io::Result<Option<tokio::net::UnixListener>> {
    let Some(fd) = sd_notify::listen_fds()?.next() else {
        return Ok(None);
    };
    // SAFETY: systemd passed this fd to us alone; nothing else in the process owns it.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std_listener.set_nonblocking(true)?;
    Ok(Some(tokio::net::UnixListener::from_std(std_listener)?))
}

//! Graceful drain: stop accepting, let work in flight finish within a deadline, then close.
//! Listeners hold a [`Watch`]; each connection holds a [`Guard`]; [`Trigger::drain`] signals
//! and then waits until every guard is gone or the deadline passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Starts a drain.
pub struct Trigger {
    signal: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
    _own: mpsc::Sender<()>,
    open: Arc<AtomicUsize>,
}

/// Tells listeners and connections that a drain began.
#[derive(Clone)]
pub struct Watch {
    signal: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
    /// Connections the traffic listeners hold open (shared by every watch of the channel).
    open: Arc<AtomicUsize>,
}

/// Held by work in flight; the drain waits for all guards to drop.
#[derive(Clone)]
pub struct Guard {
    _done: mpsc::Sender<()>,
}

/// A new drain pair.
pub fn channel() -> (Trigger, Watch) {
    let (signal_tx, signal_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    let open = Arc::new(AtomicUsize::new(0));
    let watch = Watch {
        signal: signal_rx,
        done: done_tx.clone(),
        open: open.clone(),
    };
    (
        Trigger {
            signal: signal_tx,
            done: done_rx,
            _own: done_tx,
            open,
        },
        watch,
    )
}

impl Trigger {
    /// True once a drain began.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// A watch to hand to more listeners.
    pub fn watch(&self) -> Watch {
        Watch {
            signal: self.signal.subscribe(),
            done: self._own.clone(),
            open: self.open.clone(),
        }
    }

    /// Signals the drain and waits until all work finished or `deadline` passed; returns true
    /// when everything finished in time.
    pub async fn drain(self, deadline: Duration) -> bool {
        let Trigger {
            signal,
            mut done,
            _own,
            open: _,
        } = self;
        let _ = signal.send(true);
        drop(_own);
        // recv() returns None once every sender (watch and guard) is gone.
        tokio::time::timeout(deadline, async { while done.recv().await.is_some() {} })
            .await
            .is_ok()
    }
}

impl Watch {
    /// Resolves when a drain begins.
    pub async fn signaled(&mut self) {
        while !*self.signal.borrow_and_update() {
            if self.signal.changed().await.is_err() {
                return;
            }
        }
    }

    /// True once a drain began.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Connections open on the traffic listeners (outbound, inbound, gateway).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A guard for one piece of work.
    pub fn guard(&self) -> Guard {
        Guard {
            _done: self.done.clone(),
        }
    }
}

/// Accepts connections on `listener` until a drain begins, running `handle` for each in its own
/// task with a drain watch of its own (which holds the drain open until the connection ends).
/// Past `max` open at once on this listener, a new connection is closed as accepted and
/// counted in `overflow`.
pub async fn accept_loop<H, F>(
    listener: tokio::net::TcpListener,
    mut drain: Watch,
    side: &'static str,
    (max, overflow): (usize, &std::sync::atomic::AtomicU64),
    handle: H,
) where
    H: Fn(tokio::net::TcpStream, std::net::SocketAddr, Watch) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let here = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, peer)) => {
                    if here.load(Ordering::Relaxed) >= max {
                        overflow.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("{side}: {max} connections open; closing the one from {peer}");
                        drop(conn);
                        continue;
                    }
                    let open = (Open::new(&drain.open), Open::new(&here));
                    let work = handle(conn, peer, drain.clone());
                    tokio::spawn(async move {
                        work.await;
                        drop(open);
                    });
                }
                Err(e) => {
                    // Out of file descriptors, most likely: accepting again at once would spin
                    // (and log) as fast as the core goes, so wait a little for some to close.
                    tracing::warn!("{side} accept: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            () = drain.signaled() => return,
        }
    }
}

/// How long a listener waits after a failed accept before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// One open connection, counted until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_guards_until_the_deadline() {
        let (trigger, watch) = channel();
        let guard = watch.guard();
        drop(watch);
        let held = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(guard);
        });
        assert!(
            trigger.drain(Duration::from_secs(5)).await,
            "work finished within the deadline"
        );
        held.await.unwrap();

        let (trigger, watch) = channel();
        let _stuck = watch.guard();
        drop(watch);
        assert!(
            !trigger.drain(Duration::from_secs(1)).await,
            "the deadline cuts stuck work"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn listeners_see_the_signal() {
        let (trigger, watch) = channel();
        let mut w = watch.clone();
        let seen = tokio::spawn(async move {
            w.signaled().await;
            w.is_draining()
        });
        drop(watch);
        assert!(trigger.drain(Duration::from_secs(1)).await);
        assert!(seen.await.unwrap());
    }
}

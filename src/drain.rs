//! Graceful drain: tells every open connection to finish what is in flight
//! and close, then waits until all have.
//!
//! A connection checks its [`DrainSignal`] on every wake of its task, so the
//! check is one atomic load. The task's waker is registered once, when the
//! connection first waits (again only if the task's waker changes), and
//! [`Drain::run`] wakes every registered connection. A `watch` channel
//! re-registered its waker under a lock on every poll: about 400
//! instructions per proxied request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;

/// Tells the connections holding its [`DrainSignal`]s to finish what is in
/// flight and close, then waits until they have. Dropping it begins the
/// drain too.
#[derive(Default)]
pub struct Drain {
    shared: Arc<Shared>,
}

/// A connection's end of a [`Drain`]; dropping it tells the drain that the
/// connection has closed.
pub struct DrainSignal {
    shared: Arc<Shared>,
    slot: usize,
    /// The waker registered in `slot`, to see whether it must change.
    registered: Option<Waker>,
}

#[derive(Default)]
struct Shared {
    draining: AtomicBool,
    connections: Mutex<Connections>,
    /// Notified when the last signal is dropped.
    all_closed: Notify,
}

/// The open connections: one slot per signal, holding the waker of the
/// task that waits on it (`None` until it first waits).
#[derive(Default)]
struct Connections {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
    open: usize,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, Connections> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

impl Drain {
    /// The signal for one more connection.
    pub fn signal(&self) -> DrainSignal {
        let mut connections = self.shared.connections();
        connections.open += 1;
        let slot = match connections.free.pop() {
            Some(slot) => slot,
            None => {
                connections.wakers.push(None);
                connections.wakers.len() - 1
            }
        };
        DrainSignal {
            shared: self.shared.clone(),
            slot,
            registered: None,
        }
    }

    /// Signals every connection.
    fn begin(&self) {
        // Set before the wakers are taken: a connection registering after
        // that sees the flag when it checks again (see `poll_fired`).
        self.shared.draining.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self
            .shared
            .connections()
            .wakers
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The connections whose signals are still held.
    fn open(&self) -> usize {
        self.shared.connections().open
    }

    /// Signals every connection and waits until all have closed, at most
    /// `grace`.
    pub async fn run(self, grace: Duration) {
        self.begin();
        let all_closed = async {
            while self.open() > 0 {
                // `notify_one` keeps a permit when no one waits, so a last
                // close between the check and this wait is not lost.
                self.shared.all_closed.notified().await;
            }
        };
        tokio::select! {
            () = all_closed => tracing::info!("all connections drained"),
            () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if !self.shared.is_draining() {
            self.begin();
        }
    }
}

impl DrainSignal {
    /// Ready once the drain has begun (or its [`Drain`] is gone); else
    /// pending, and the task is woken when it begins.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.is_draining() {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        self.shared.connections().wakers[self.slot] = Some(waker.clone());
        self.registered = Some(waker);
        // The drain may have begun, and taken the wakers, between the check
        // above and the registration.
        if self.shared.is_draining() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for DrainSignal {
    fn drop(&mut self) {
        let mut connections = self.shared.connections();
        connections.wakers[self.slot] = None;
        connections.free.push(self.slot);
        connections.open -= 1;
        let last = connections.open == 0;
        drop(connections);
        if last {
            self.shared.all_closed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_signal_is_woken_once_and_then_fired() {
        let drain = Drain::default();
        let mut signal = drain.signal();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(signal.poll_fired(&mut cx).is_pending());
        // Polled again with the same waker: nothing is registered anew.
        assert!(signal.poll_fired(&mut cx).is_pending());
        drain.begin();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(signal.poll_fired(&mut cx).is_ready());
    }

    #[test]
    fn a_new_waker_replaces_the_old_one() {
        let drain = Drain::default();
        let mut signal = drain.signal();
        let (first, second) = (
            Arc::new(CountingWaker(AtomicUsize::new(0))),
            Arc::new(CountingWaker(AtomicUsize::new(0))),
        );
        let (w1, w2) = (Waker::from(first.clone()), Waker::from(second.clone()));
        assert!(signal
            .poll_fired(&mut Context::from_waker(&w1))
            .is_pending());
        assert!(signal
            .poll_fired(&mut Context::from_waker(&w2))
            .is_pending());
        drain.begin();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn dropping_the_drain_fires_its_signals() {
        let drain = Drain::default();
        let mut signal = drain.signal();
        drop(drain);
        let waker = Waker::from(Arc::new(CountingWaker(AtomicUsize::new(0))));
        assert!(signal
            .poll_fired(&mut Context::from_waker(&waker))
            .is_ready());
    }

    #[test]
    fn slots_are_reused_after_a_signal_is_dropped() {
        let drain = Drain::default();
        let signals: Vec<_> = (0..3).map(|_| drain.signal()).collect();
        drop(signals);
        let _again: Vec<_> = (0..3).map(|_| drain.signal()).collect();
        assert_eq!(drain.shared.connections().wakers.len(), 3);
        assert_eq!(drain.open(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn run_waits_for_the_last_connection_and_no_longer() {
        let drain = Drain::default();
        let mut signal = drain.signal();
        let connection = tokio::spawn(async move {
            poll_fn(|cx| signal.poll_fired(cx)).await;
            // Finishing what is in flight.
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(signal);
        });
        let started = tokio::time::Instant::now();
        drain.run(Duration::from_secs(30)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        connection.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_gives_up_after_the_grace_period() {
        let drain = Drain::default();
        let _stuck = drain.signal();
        let started = tokio::time::Instant::now();
        drain.run(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}

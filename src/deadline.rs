//! A deadline that moves on every request and almost never passes: the
//! upstream response timeout of a pooled connection, and the client's
//! request-head timeout of a keep-alive connection.
//!
//! A fresh `tokio::time::timeout` per request puts an entry into the
//! runtime's timer wheel and takes it out again, every time. Here the timer
//! stays armed across requests. Moving the deadline later, which is what a
//! new request does, only stores the new instant; the timer is re-armed when
//! it fires before the deadline (once per timeout period at most, for a
//! connection in steady use). This is how nginx's event timers and Netty's
//! idle handlers keep timeouts cheap.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::time::{Instant, Sleep};

pub(crate) struct LazyDeadline {
    /// The deadline.
    at: Instant,
    /// Armed for `at` or earlier; once it fires early, re-armed for `at`.
    timer: Pin<Box<Sleep>>,
}

impl LazyDeadline {
    pub(crate) fn new(at: Instant) -> LazyDeadline {
        LazyDeadline {
            at,
            timer: Box::pin(tokio::time::sleep_until(at)),
        }
    }

    /// Moves the deadline. Later is a store; earlier re-arms the timer.
    pub(crate) fn set(&mut self, at: Instant) {
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
        self.at = at;
    }

    /// Ready once the deadline has passed; else pending, with the task woken
    /// when the timer fires.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if self.timer.deadline() >= self.at {
                return Poll::Ready(());
            }
            // Fired for an earlier deadline: arm it for the current one
            // (and poll it, to register this task's waker).
            self.timer.as_mut().reset(self.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    async fn passed_at(deadline: &mut LazyDeadline) -> Instant {
        poll_fn(|cx| deadline.poll_passed(cx)).await;
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn passes_at_the_deadline() {
        let start = Instant::now();
        let mut deadline = LazyDeadline::new(start + Duration::from_secs(5));
        assert_eq!(
            passed_at(&mut deadline).await - start,
            Duration::from_secs(5)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_is_kept_though_the_timer_fires_early() {
        let start = Instant::now();
        let mut deadline = LazyDeadline::new(start + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(3)).await;
        // A new request: 5 s from now.
        deadline.set(Instant::now() + Duration::from_secs(5));
        assert_eq!(
            passed_at(&mut deadline).await - start,
            Duration::from_secs(8)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_re_arms_the_timer() {
        let start = Instant::now();
        let mut deadline = LazyDeadline::new(start + Duration::from_secs(60));
        deadline.set(start + Duration::from_secs(2));
        assert_eq!(
            passed_at(&mut deadline).await - start,
            Duration::from_secs(2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_set_after_the_timer_fired_still_holds() {
        let start = Instant::now();
        let mut deadline = LazyDeadline::new(start + Duration::from_secs(1));
        // The connection sat idle in its pool past the old deadline.
        tokio::time::advance(Duration::from_secs(10)).await;
        deadline.set(Instant::now() + Duration::from_secs(4));
        let waker = std::task::Waker::noop();
        assert!(deadline
            .poll_passed(&mut Context::from_waker(waker))
            .is_pending());
        assert_eq!(
            passed_at(&mut deadline).await - start,
            Duration::from_secs(14)
        );
    }
}

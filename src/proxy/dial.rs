//! Dialing an upstream name that resolves to several addresses: Happy
//! Eyeballs (RFC 8305), the way hyper-util's connector and Go's dialer do it.
//!
//! The addresses of the first address's family are tried in turn, each
//! within its share of the connect timeout. If that family has not connected
//! after [`FALLBACK_DELAY`], the other family's addresses are tried
//! alongside, and the first connection made wins. An IPv6 address that
//! drops packets therefore costs 300 ms, not the whole connect timeout; a
//! refused one costs nothing.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

/// How long the first family goes alone (hyper-util's default; RFC 8305
/// recommends 250 ms).
pub(crate) const FALLBACK_DELAY: Duration = Duration::from_millis(300);

/// Connects to one of `addrs` with `connect`, within `timeout` in all.
pub(crate) async fn dial<T, F, Fut>(
    addrs: Vec<SocketAddr>,
    timeout: Duration,
    fallback_delay: Duration,
    connect: F,
) -> io::Result<T>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let Some(first) = addrs.first() else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the upstream name resolved to no address",
        ));
    };
    let first_is_v6 = first.is_ipv6();
    let (preferred, fallback): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_is_v6);
    let attempt = async {
        let mut preferred_attempt = pin!(in_turn(&preferred, timeout, &connect));
        if fallback.is_empty() {
            return preferred_attempt.await;
        }
        match tokio::time::timeout(fallback_delay, preferred_attempt.as_mut()).await {
            Ok(Ok(stream)) => return Ok(stream),
            // Failed fast (refused, say): the other family alone.
            Ok(Err(_)) => return in_turn(&fallback, timeout, &connect).await,
            Err(_) => {}
        }
        let mut fallback_attempt = pin!(in_turn(&fallback, timeout, &connect));
        tokio::select! {
            result = preferred_attempt.as_mut() => match result {
                Ok(stream) => Ok(stream),
                Err(_) => fallback_attempt.await,
            },
            result = fallback_attempt.as_mut() => match result {
                Ok(stream) => Ok(stream),
                Err(_) => preferred_attempt.await,
            },
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
}

/// Tries `addrs` one after the other, each within an equal share of
/// `timeout` (hyper-util's rule), and returns the first connection or the
/// last error.
async fn in_turn<T, F, Fut>(addrs: &[SocketAddr], timeout: Duration, connect: &F) -> io::Result<T>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let share = timeout / u32::try_from(addrs.len()).unwrap_or(u32::MAX).max(1);
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    for &addr in addrs {
        match tokio::time::timeout(share, connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, format!("{addr}: timed out")),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    // Documentation addresses, never dialed: `network` answers for them.
    const V6_A: &str = "[2001:db8::1]:80";
    const V6_B: &str = "[2001:db8::2]:80";
    const V4_A: &str = "192.0.2.1:80";
    const V4_B: &str = "192.0.2.2:80";

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// A stand-in for the network: how each address behaves. Returns the
    /// address it "connected" to, and records every attempt with its start.
    #[derive(Clone, Copy)]
    enum Net {
        Up,
        Refused,
        Blackhole,
    }

    type Attempt = std::pin::Pin<Box<dyn Future<Output = io::Result<SocketAddr>>>>;
    type Attempts = Arc<Mutex<Vec<(SocketAddr, Duration)>>>;

    fn network(
        behaviour: &'static [(&'static str, Net)],
    ) -> (impl Fn(SocketAddr) -> Attempt, Attempts) {
        let started = Instant::now();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let seen = attempts.clone();
        let connect = move |addr: SocketAddr| {
            seen.lock().unwrap().push((addr, started.elapsed()));
            let net = behaviour
                .iter()
                .find(|(a, _)| a.parse::<SocketAddr>().unwrap() == addr)
                .map_or(Net::Refused, |(_, n)| *n);
            Box::pin(async move {
                match net {
                    Net::Up => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok(addr)
                    }
                    Net::Refused => Err(io::Error::from(io::ErrorKind::ConnectionRefused)),
                    Net::Blackhole => std::future::pending().await,
                }
            }) as Attempt
        };
        (connect, attempts)
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_blackholed_ipv6_address_costs_the_fallback_delay_only() {
        let (connect, attempts) = network(&[(V6_A, Net::Blackhole), (V4_A, Net::Up)]);
        let started = Instant::now();
        let got = dial(addrs(&[V6_A, V4_A]), TIMEOUT, FALLBACK_DELAY, connect).await;
        assert_eq!(got.unwrap(), V4_A.parse().unwrap());
        assert_eq!(
            started.elapsed(),
            FALLBACK_DELAY + Duration::from_millis(10)
        );
        let attempts = attempts.lock().unwrap();
        assert_eq!(attempts[1], (V4_A.parse().unwrap(), FALLBACK_DELAY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_first_family_moves_on_at_once() {
        let (connect, attempts) = network(&[(V6_A, Net::Refused), (V4_A, Net::Up)]);
        let started = Instant::now();
        let got = dial(addrs(&[V6_A, V4_A]), TIMEOUT, FALLBACK_DELAY, connect).await;
        assert_eq!(got.unwrap(), V4_A.parse().unwrap());
        assert_eq!(started.elapsed(), Duration::from_millis(10));
        assert_eq!(attempts.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_family_wins_when_it_connects_in_time() {
        let (connect, attempts) = network(&[(V6_A, Net::Up), (V4_A, Net::Up)]);
        let got = dial(addrs(&[V6_A, V4_A]), TIMEOUT, FALLBACK_DELAY, connect).await;
        assert_eq!(got.unwrap(), V6_A.parse().unwrap());
        assert_eq!(attempts.lock().unwrap().len(), 1, "no fallback attempt");
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_of_one_family_are_tried_in_turn_each_within_its_share() {
        let (connect, attempts) = network(&[(V4_A, Net::Blackhole), (V4_B, Net::Up)]);
        let got = dial(addrs(&[V4_A, V4_B]), TIMEOUT, FALLBACK_DELAY, connect).await;
        assert_eq!(got.unwrap(), V4_B.parse().unwrap());
        let attempts = attempts.lock().unwrap();
        assert_eq!(attempts[1], (V4_B.parse().unwrap(), TIMEOUT / 2));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_reachable_is_an_error_within_the_timeout() {
        let (connect, _) = network(&[
            (V6_A, Net::Blackhole),
            (V6_B, Net::Blackhole),
            (V4_A, Net::Blackhole),
        ]);
        let started = Instant::now();
        let got = dial(addrs(&[V6_A, V6_B, V4_A]), TIMEOUT, FALLBACK_DELAY, connect).await;
        assert!(got.is_err());
        assert!(started.elapsed() <= TIMEOUT, "{:?}", started.elapsed());
        let (connect, _) = network(&[]);
        let got = dial(addrs(&[V6_A, V4_A]), TIMEOUT, FALLBACK_DELAY, connect).await;
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        let (connect, _) = network(&[]);
        assert!(dial(Vec::new(), TIMEOUT, FALLBACK_DELAY, connect)
            .await
            .is_err());
    }

    /// The same with real sockets: `[::1]` accepts nothing more (its
    /// listener's queue is full, so the kernel drops further SYNs, as a
    /// blackholed route would), `127.0.0.1` is up.
    #[tokio::test]
    async fn real_sockets_fall_back_from_a_silent_ipv6_listener() {
        let Ok(silent) = tokio::net::TcpSocket::new_v6() else {
            return; // no IPv6 on this machine
        };
        if silent.bind("[::1]:0".parse().unwrap()).is_err() {
            return;
        }
        let silent = silent.listen(0).unwrap();
        let silent_addr = silent.local_addr().unwrap();
        // Fill its accept queue; later connects hang.
        let mut filler = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(silent_addr),
            )
            .await
            {
                filler.push(s);
            }
        }
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let started = std::time::Instant::now();
        let stream = dial(
            vec![silent_addr, up_addr],
            Duration::from_secs(10),
            FALLBACK_DELAY,
            tokio::net::TcpStream::connect,
        )
        .await
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), up_addr);
        let took = started.elapsed();
        assert!(
            took >= FALLBACK_DELAY && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
}

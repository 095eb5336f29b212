//! Thread per core for the data plane: `n` threads, each running its own
//! single-threaded tokio runtime. The accept loops (on the main runtime)
//! hand each new client connection to the next worker, round robin, and the
//! connection lives on that thread to its end: its requests, their upstream
//! connections and response bodies are all polled there, with no work
//! stealing and no cross-thread wake-ups per request. The main runtime keeps
//! the control plane: accept loops, admin, reload, key refresh.
//!
//! With zero workers (`Workers::inline()`) connections run as ordinary
//! tasks on the caller's runtime.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// 1-based index of the worker this thread is; 0 on any other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The worker the calling thread is (1..=n), or 0 when it is not one.
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// How many workers to run: `TOKIO_WORKER_THREADS` when set to a positive
/// number, else one per available core.
pub fn default_count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The worker threads; cheap to clone. They stop when the last clone is
/// dropped (connections still on them are dropped with their runtime).
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropping these ends the workers' `block_on`.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// No worker threads: connections run on the caller's runtime.
    pub fn inline() -> Workers {
        Workers {
            inner: Arc::new(Inner {
                handles: Vec::new(),
                next: AtomicUsize::new(0),
                _stop: Vec::new(),
            }),
        }
    }

    /// Starts `n` worker threads (0 means [`Workers::inline`]).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for index in 1..=n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("scopegate-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(index));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Workers {
            inner: Arc::new(Inner {
                handles,
                next: AtomicUsize::new(0),
                _stop: stops,
            }),
        })
    }

    /// The number of worker threads (0 when inline).
    pub fn count(&self) -> usize {
        self.inner.handles.len()
    }

    /// Runs `serve(stream)` on the next worker; the stream is moved to that
    /// worker's I/O driver first.
    pub fn spawn_connection<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handles = &self.inner.handles;
        if handles.is_empty() {
            tokio::spawn(serve(stream));
            return;
        }
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a connection to a worker");
                return;
            }
        };
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % handles.len();
        handles[i].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::debug!(error = %e, "worker cannot take a connection"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_round_robin_to_worker_threads() {
        let workers = Workers::start(2).expect("workers start");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let _client = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            workers.spawn_connection(stream, move |_stream| async move {
                let _ = tx.send((current(), std::thread::current().name().map(String::from)));
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(rx.recv().await.expect("each connection is served"));
        }
        seen.sort();
        let names: Vec<_> = seen
            .iter()
            .map(|(_, n)| n.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1, 1, 2, 2],
            "{names:?}"
        );
        assert!(
            names.iter().all(|n| n.starts_with("scopegate-worker-")),
            "{names:?}"
        );
        assert_eq!(current(), 0, "the test thread is not a worker");
    }

    #[tokio::test]
    async fn inline_runs_on_the_callers_runtime() {
        let workers = Workers::inline();
        assert_eq!(workers.count(), 0);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (tx, rx) = oneshot::channel();
        workers.spawn_connection(stream, move |_| async move {
            let _ = tx.send(current());
        });
        assert_eq!(rx.await.unwrap(), 0);
    }
}

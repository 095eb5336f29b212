//! The loopback accept loop shared by the IdP and the upstream: binds
//! 127.0.0.1 (port 0 or a given port, with SO_REUSEADDR so a server can come
//! back on its old port), and runs every connection as a task in one
//! `JoinSet` so that taking a server down drops the listener and every open
//! connection at once.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Binds `127.0.0.1:port` (0 = any free port).
pub(crate) fn bind_loopback(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    socket.listen(1024)
}

/// Connection tasks of one server.
pub(crate) type Connections = Arc<Mutex<JoinSet<()>>>;

/// Spawns the accept loop: every accepted stream is handed to `on_conn` in a
/// task of `conns`. Aborting the returned handle drops the listener.
pub(crate) fn spawn_accept_loop<F, Fut>(
    listener: TcpListener,
    conns: Connections,
    on_conn: F,
) -> JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _peer)) = listener.accept().await else {
                // e.g. out of file descriptors: let other tasks run, retry.
                tokio::task::yield_now().await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let mut set = conns.lock().expect("connections lock");
            while set.try_join_next().is_some() {}
            set.spawn(on_conn(stream));
        }
    })
}

/// Aborts the accept loop (the listener is closed when this returns) and
/// every connection task.
pub(crate) async fn shut_down(accept: Option<JoinHandle<()>>, conns: &Connections) {
    if let Some(accept) = accept {
        accept.abort();
        let _ = accept.await;
    }
    abort_connections(conns).await;
}

/// Aborts every open connection task and waits until they are gone.
pub(crate) async fn abort_connections(conns: &Connections) {
    let mut set = std::mem::take(&mut *conns.lock().expect("connections lock"));
    set.abort_all();
    while set.join_next().await.is_some() {}
}

/// The error a service returns to make hyper drop the connection unanswered.
pub(crate) fn drop_connection() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "test server drops the connection",
    )
}
